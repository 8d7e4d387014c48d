"""Gaussian diffusion as DiT (and U-DiT, whose diffusion/ is byte-identical) trains and samples it.

Model: eps prediction with learned-range sigma (Nichol & Dhariwal 2021, "IDDPM", eq. 15): the
network returns 2C channels, eps and v in [-1, 1], and
    log Sigma_t = (v+1)/2 * log beta_t + (1 - (v+1)/2) * log beta~_t   (beta~ = posterior variance).
Loss: L_hybrid = L_simple + L_vlb (IDDPM eq. 16) with the mean detached inside L_vlb, so the VLB
trains only the variance (IDDPM sec. 3.1), uniform t. DiT's create_diffusion defaults to
rescale_learned_sigmas=False -> LossType.MSE, so L_vlb is NOT multiplied by T/1000 (that is only
RESCALED_MSE, ADM's default); `rescale_vb=True` reproduces that variant.

Tables are float64 numpy computed once (as in DiT); a gathered coefficient is cast to float32
(DiT's `_extract_into_tensor` does `.float()`), or stays float64 for float64 inputs so tests can
hold the formulas to float64 references.

Why the step is written here and not taken from diffusers' DDPMScheduler: the scheduler computes
betas with float32 torch.linspace and a float32 cumprod (alphas_cumprod off DiT's float64 values
by up to 3.6e-7 relative, measured), steps a single scalar timestep per batch, and cannot train
(no VLB term). With custom timesteps = our respaced ones and variance_type="learned_range" it is
the same update; tests/test_diffusion.py cross-checks one step against it.
"""

import numpy as np
import torch

from udit.diffusion.noise import Generators, randn
from udit.diffusion.vlb import discretized_gaussian_log_likelihood, mean_flat, normal_kl

VAR_TYPES = ("learned_range", "fixed_large", "fixed_small")
LN2 = float(np.log(2.0))


class GaussianDiffusion:
    """A (possibly respaced) diffusion chain of `len(betas)` steps.

    timestep_map[i] is the original step that respaced step i stands for; the model is always
    called with the original t (DiT's _WrappedModel), so one network serves every respacing.
    """

    def __init__(
        self,
        *,
        betas: np.ndarray,
        timestep_map: np.ndarray | None = None,
        var_type: str = "learned_range",
        rescale_vb: bool = False,
    ):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array of >= 2 values in (0, 1]")
        if var_type not in VAR_TYPES:
            raise ValueError(f"unknown var_type {var_type!r}; choose one of {VAR_TYPES}")
        self.num_timesteps = len(betas)
        self.var_type = var_type
        self.learn_sigma = var_type == "learned_range"
        self.rescale_vb = rescale_vb
        if timestep_map is None:
            timestep_map = np.arange(self.num_timesteps)
        self.timestep_map = np.asarray(timestep_map, dtype=np.int64)
        if self.timestep_map.shape != betas.shape or (np.diff(self.timestep_map) <= 0).any():
            raise ValueError("timestep_map must be increasing, one original step per beta")

        alphas = 1.0 - betas
        acp = np.cumprod(alphas)  # alpha_bar_t
        acp_prev = np.append(1.0, acp[:-1])  # alpha_bar_{t-1}, alpha_bar_{-1} = 1
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)  # beta~_t (DDPM eq. 7)
        self.tables: dict[str, np.ndarray] = {
            "betas": betas,
            "alphas_cumprod": acp,
            "alphas_cumprod_prev": acp_prev,
            "sqrt_alphas_cumprod": np.sqrt(acp),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1.0),
            "posterior_variance": post_var,
            # beta~_0 = 0 (x_0 is known given x_0); its log is clipped to beta~_1 (IDDPM, DiT).
            "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
            # mu~_t = coef1 * x_0 + coef2 * x_t (DDPM eq. 7)
            "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
            "posterior_mean_coef2": (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
            "log_betas": np.log(betas),
            # fixed_large: beta_t, with beta~_1 at t=0 for a better decoder likelihood (DDPM/DiT).
            "fixed_large_variance": np.append(post_var[1], betas[1:]),
            "timestep_map": self.timestep_map,
        }
        self._device_tables: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ tables
    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        """tables[name] as a tensor on `device` (copied once per device, kept float64)."""
        key = str(device)
        if key not in self._device_tables:
            self._device_tables[key] = {
                k: torch.from_numpy(v).to(device) for k, v in self.tables.items()
            }
        return self._device_tables[key][name]

    def _gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """tables[name][t] as (N, 1, ..., 1), float32 (float64 for float64 `like`)."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        return self._table(name, t.device)[t].to(dtype).view(-1, *([1] * (like.ndim - 1)))

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Respaced indices (N,) -> the original steps (N,) the model is trained on."""
        return self._table("timestep_map", t.device)[t].to(t.dtype)

    # ------------------------------------------------------------------ forward process
    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        if noise.shape != x_start.shape:
            raise ValueError(
                f"noise {tuple(noise.shape)} must match x_start {tuple(x_start.shape)}"
            )
        return (
            self._gather("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x_0): (mean, variance, clipped log variance), each like x_t."""
        mean = (
            self._gather("posterior_mean_coef1", t, x_t) * x_start
            + self._gather("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self._gather("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._gather("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (
            self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(
        self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor
    ) -> torch.Tensor:
        return (self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x_start) / self._gather(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    # ------------------------------------------------------------------ reverse process
    def model_log_variance(
        self, var_values: torch.Tensor | None, t: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """log Sigma_t like x: learned-range interpolation of v in [-1, 1] (IDDPM eq. 15)."""
        if self.var_type == "learned_range":
            frac = (var_values + 1) / 2  # v=-1 -> beta~_t, v=1 -> beta_t
            max_log = self._gather("log_betas", t, x)
            min_log = self._gather("posterior_log_variance_clipped", t, x)
            return frac * max_log + (1 - frac) * min_log
        if self.var_type == "fixed_large":
            return torch.log(self._gather("fixed_large_variance", t, x)).expand_as(x)
        return self._gather("posterior_log_variance_clipped", t, x).expand_as(x)

    def _call_model(
        self, model, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None
    ) -> torch.Tensor:
        out = model(x, self.original_timesteps(t), **(model_kwargs or {}))
        channels = x.shape[1] * (2 if self.learn_sigma else 1)
        if out.shape != (x.shape[0], channels, *x.shape[2:]):
            raise ValueError(
                f"model output {tuple(out.shape)} must be {(x.shape[0], channels, *x.shape[2:])} "
                f"({'eps + learned-sigma' if self.learn_sigma else 'eps'} channels)"
            )
        return out

    def p_from_output(
        self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, *, clip_denoised: bool = False
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from a model output (N, C or 2C, ...): mean, variance, x0_hat, eps."""
        if self.learn_sigma:
            eps, var_values = output.chunk(2, dim=1)  # (N, C, ...) each
        else:
            eps, var_values = output, None
        log_variance = self.model_log_variance(var_values, t, x)
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior(pred_xstart, x, t)  # mu_theta = mu~(x_t, x0_hat)
        return {
            "mean": mean,
            "log_variance": log_variance,
            "variance": torch.exp(log_variance),
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    def p_mean_variance(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = False,
        model_kwargs: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.p_from_output(
            self._call_model(model, x, t, model_kwargs), x, t, clip_denoised=clip_denoised
        )

    # ------------------------------------------------------------------ training
    def vb_terms_bpd(
        self, output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample L_{t-1} in bits/dim: KL(q || p_theta) for t > 0, decoder NLL at t = 0 (N,)."""
        true_mean, _, true_log_var = self.q_posterior(x_start, x_t, t)
        p = self.p_from_output(output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / LN2
        nll = -discretized_gaussian_log_likelihood(
            x_start, means=p["mean"], log_scales=0.5 * p["log_variance"]
        )
        return torch.where(t == 0, mean_flat(nll) / LN2, kl)

    def training_losses(
        self,
        model,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: dict | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample (N,) "loss" = "mse" + "vb" at steps t (N,) (respaced indices if respaced).

        "vb" is zero without learned sigma (DiT then trains on the MSE alone).
        """
        if t.shape != x_start.shape[:1] or t.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"t must be an integer tensor of shape ({x_start.shape[0]},), "
                f"got {t.dtype} {tuple(t.shape)}"
            )
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise=noise)
        output = self._call_model(model, x_t, t, model_kwargs)  # (N, 2C, H, W)
        if self.learn_sigma:
            eps, var_values = output.chunk(2, dim=1)
            # The VLB sees a detached eps: it trains Sigma only; L_simple trains the mean
            # (IDDPM sec. 3.1).
            frozen = torch.cat([eps.detach(), var_values], dim=1)
            vb = self.vb_terms_bpd(frozen, x_start, x_t, t)
            if self.rescale_vb:
                vb = vb * (self.num_timesteps / 1000.0)
        else:
            eps, vb = output, torch.zeros(x_start.shape[0], device=x_start.device)
        mse = mean_flat((noise - eps) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    # ------------------------------------------------------------------ sampling
    def p_sample(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = False,
        model_kwargs: dict | None = None,
        noise: torch.Tensor | None = None,
        generator: Generators = None,
    ) -> dict[str, torch.Tensor]:
        """Ancestral step x_t -> x_{t-1} = mu_theta + Sigma_theta^1/2 z; no noise where t == 0."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
        )
        if not bool((t != 0).any()):
            return {"sample": out["mean"], "pred_xstart": out["pred_xstart"]}
        if noise is None:
            noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = False,
        model_kwargs: dict | None = None,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        generator: Generators = None,
    ) -> dict[str, torch.Tensor]:
        """DDIM step (Song et al. 2021, eq. 12); eta=0 is deterministic, eta=1 is DDPM-like."""
        out = self.p_mean_variance(
            model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
        )
        # Re-derive eps from x0_hat so that clipping (if any) is reflected in the direction term.
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = self._gather("alphas_cumprod", t, x)
        abar_prev = self._gather("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        sample = (
            out["pred_xstart"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        )
        if eta > 0 and bool((t != 0).any()):
            if noise is None:
                noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
            sample = sample + nonzero * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(
        self,
        model,
        shape,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        model_kwargs: dict | None = None,
        device=None,
        progress: bool = False,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Run the whole reverse chain from x_T = noise (or drawn from `generator`) to x_0."""
        return self._loop(
            self.p_sample,
            model,
            shape,
            noise=noise,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
            generator=generator,
            clip_denoised=clip_denoised,
        )

    def ddim_sample_loop(
        self,
        model,
        shape,
        noise: torch.Tensor | None = None,
        clip_denoised: bool = False,
        model_kwargs: dict | None = None,
        device=None,
        progress: bool = False,
        generator: Generators = None,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """Same as p_sample_loop with DDIM steps."""
        return self._loop(
            self.ddim_sample,
            model,
            shape,
            noise=noise,
            model_kwargs=model_kwargs,
            device=device,
            progress=progress,
            generator=generator,
            clip_denoised=clip_denoised,
            eta=eta,
        )

    def _loop(
        self, step, model, shape, *, noise, model_kwargs, device, progress, generator, **step_kwargs
    ):
        shape = tuple(int(s) for s in shape)
        if device is None:
            device = noise.device if noise is not None else _model_device(model)
        if noise is None:
            x = randn(shape, generator=generator, device=device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise {tuple(noise.shape)} must have the sample shape {shape}")
        else:
            x = noise.to(device)
        indices = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices)
        for i in indices:
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            with torch.no_grad():
                x = step(
                    model, x, t, model_kwargs=model_kwargs, generator=generator, **step_kwargs
                )["sample"]
        return x


def _model_device(model) -> torch.device:
    """Device of the model's first parameter; CPU for parameter-free callables."""
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")
