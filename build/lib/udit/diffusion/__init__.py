"""DiT's Gaussian diffusion, rewritten: schedules, hybrid loss, DDPM/DDIM samplers, respacing, CFG.

diffusion = create_diffusion("")        # training: 1000 steps, linear betas, learned sigma
losses = diffusion.training_losses(model, x, t, model_kwargs=dict(y=y))  # "loss", "mse", "vb"
sampler = create_diffusion("250")       # DiT/U-DiT evaluation: 250 respaced DDPM steps
z0 = sampler.p_sample_loop(ClassifierFreeGuidance(model, cfg_scale=1.5), z.shape, z,
                           model_kwargs=dict(y=y))
"""

from udit.diffusion.cfg import GUIDED_CHANNELS, ClassifierFreeGuidance
from udit.diffusion.gaussian import GaussianDiffusion
from udit.diffusion.noise import randn
from udit.diffusion.schedule import NUM_TRAIN_TIMESTEPS, named_betas, respace_betas, space_timesteps
from udit.diffusion.vlb import discretized_gaussian_log_likelihood, normal_kl
from udit.paper import recipe

# DiT/U-DiT sample_ddp.py --num-sampling-steps default and what the paper's FIDs use.
DEFAULT_SAMPLING_STEPS = recipe().sampling_steps


def create_diffusion(
    timestep_respacing: str | int | None = "",
    *,
    noise_schedule: str = "linear",
    learn_sigma: bool = True,
    sigma_small: bool = False,
    rescale_learned_sigmas: bool = False,
    diffusion_steps: int = recipe().diffusion_steps,
) -> GaussianDiffusion:
    """The DiT diffusion: "" keeps all `diffusion_steps`; "250", "10,20,30" or "ddim50" respace.

    Defaults are DiT's create_diffusion defaults (diffusion/__init__.py), which train.py uses as is:
    learned-range sigma and loss MSE + VB with VB unscaled (rescale_learned_sigmas=False).
    Without learned sigma the variance is fixed: beta_t (sigma_small=False) or beta~_t.
    """
    betas = named_betas(name=noise_schedule, num_steps=diffusion_steps)
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = diffusion_steps
    kept = space_timesteps(num_timesteps=diffusion_steps, section_counts=timestep_respacing)
    # Like DiT (which always builds a SpacedDiffusion), recompute betas from alphas_cumprod even
    # when every step is kept: the tables then match DiT's to the last float64 bit.
    betas, timestep_map = respace_betas(betas=betas, use_timesteps=kept)
    var_type = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
    return GaussianDiffusion(
        betas=betas, timestep_map=timestep_map, var_type=var_type, rescale_vb=rescale_learned_sigmas
    )


__all__ = [
    "DEFAULT_SAMPLING_STEPS",
    "GUIDED_CHANNELS",
    "NUM_TRAIN_TIMESTEPS",
    "ClassifierFreeGuidance",
    "GaussianDiffusion",
    "create_diffusion",
    "discretized_gaussian_log_likelihood",
    "named_betas",
    "normal_kl",
    "randn",
    "respace_betas",
    "space_timesteps",
]
