"""udit.diffusion against float64 references of the DDPM/IDDPM formulas, diffusers' DDPMScheduler,
and the behaviour of DiT's respacing and classifier-free guidance."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from udit.diffusion import (
    ClassifierFreeGuidance,
    create_diffusion,
    discretized_gaussian_log_likelihood,
    normal_kl,
    space_timesteps,
)

T = 1000
C, H = 4, 8  # latent channels and side of the toy tensors
LN2 = math.log(2.0)


def reference_schedule(num_steps: int = T) -> dict[str, np.ndarray]:
    """DDPM linear schedule and the posterior q(x_{t-1}|x_t,x_0) by Bayes' rule, all float64."""
    betas = np.linspace(1e-4, 0.02, num_steps, dtype=np.float64)
    alphas = 1.0 - betas
    acp = np.cumprod(alphas)
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    # Product of N(x_t; sqrt(a_t) x_{t-1}, b_t) and N(x_{t-1}; sqrt(acp_prev) x_0, 1 - acp_prev).
    # At t=0 the prior on x_{t-1} is a point mass at x_0: infinite precision, variance 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = 1.0 / (1.0 - acp_prev) + alphas / betas
        post_var = 1.0 / precision
        coef1 = np.where(
            np.arange(num_steps) == 0, 1.0, post_var * np.sqrt(acp_prev) / (1.0 - acp_prev)
        )
    coef2 = post_var * np.sqrt(alphas) / betas
    return {
        "betas": betas,
        "acp": acp,
        "acp_prev": acp_prev,
        "post_var": post_var,
        "post_logvar": np.log(np.maximum(post_var, post_var[1])),  # t=0 clipped to beta~_1
        "coef1": coef1,
        "coef2": coef2,
    }


def np_gaussian_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, float64 numpy."""
    return 0.5 * (
        logvar2 - logvar1 + np.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 / np.exp(logvar2) - 1
    )


def np_tanh_cdf(u):
    """ADM's tanh approximation of the standard normal CDF."""
    return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))


class TinyDenoiser(nn.Module):
    """A small real network with DiT's call signature model(x, t, y) -> (N, 2C, H, W)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        with torch.random.fork_rng():  # same weights in every run, global RNG untouched
            torch.manual_seed(0)
            self.conv = nn.Conv2d(C, 2 * C, 3, padding=1)
            self.label = nn.Embedding(num_classes + 1, 2 * C)

    def forward(self, x, t, y):
        h = self.conv(x) + self.label(y)[:, :, None, None] + (t.float() / T)[:, None, None, None]
        return torch.tanh(h)


def fixed_output(output):
    """The exact model output to test step formulas with."""
    return lambda x, t, **kwargs: output


def test_schedule_tables_match_float64_reference_and_diffusers():
    ref, d = reference_schedule(), create_diffusion("")
    assert d.num_timesteps == T
    np.testing.assert_allclose(d.tables["betas"], ref["betas"], rtol=1e-12)
    np.testing.assert_allclose(d.tables["alphas_cumprod"], ref["acp"], rtol=1e-12)
    np.testing.assert_allclose(
        d.tables["posterior_variance"], ref["post_var"], rtol=1e-10, atol=1e-300
    )
    np.testing.assert_allclose(
        d.tables["posterior_log_variance_clipped"], ref["post_logvar"], rtol=1e-10
    )
    np.testing.assert_allclose(d.tables["posterior_mean_coef1"], ref["coef1"], rtol=1e-10)
    np.testing.assert_allclose(
        d.tables["posterior_mean_coef2"], ref["coef2"], rtol=1e-10, atol=1e-15
    )
    # diffusers builds the same schedule in float32.
    sched = DDPMScheduler(
        beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=T
    )
    np.testing.assert_allclose(sched.alphas_cumprod.double().numpy(), ref["acp"], rtol=1e-6)


def test_q_sample_and_posterior_match_float64_reference():
    ref, d = reference_schedule(), create_diffusion("")
    g = torch.Generator().manual_seed(0)
    x0, x_t, noise = (torch.randn(5, C, H, H, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 1, 10, 500, 999])
    tn = t.numpy()[:, None, None, None]
    expected_xt = np.sqrt(ref["acp"][tn]) * x0.numpy() + np.sqrt(1 - ref["acp"][tn]) * noise.numpy()
    np.testing.assert_allclose(
        d.q_sample(x0, t, noise=noise).numpy(), expected_xt, rtol=1e-12, atol=1e-12
    )
    mean, var, logvar = d.q_posterior(x0, x_t, t)
    expected_mean = ref["coef1"][tn] * x0.numpy() + ref["coef2"][tn] * x_t.numpy()
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        var.numpy(), np.broadcast_to(ref["post_var"][tn], var.shape), rtol=1e-10
    )
    np.testing.assert_allclose(
        logvar.numpy(), np.broadcast_to(ref["post_logvar"][tn], var.shape), rtol=1e-10
    )
    # x_0 at t=0 is given by x_0: the posterior mean is x_0 itself.
    np.testing.assert_allclose(mean[0].numpy(), x0[0].numpy(), atol=1e-12)


@pytest.mark.parametrize("v", [-1.0, 1.0, 0.0, 0.3])
def test_learned_range_interpolates_log_variance(v):
    ref, d = reference_schedule(), create_diffusion("")
    t = torch.tensor([0, 1, 400, 999])
    x = torch.zeros(4, C, H, H, dtype=torch.float64)
    output = torch.cat([torch.zeros_like(x), torch.full_like(x, v)], dim=1)
    logvar = d.p_from_output(output, x, t)["log_variance"][:, 0, 0, 0].numpy()
    frac = (v + 1) / 2
    expected = frac * np.log(ref["betas"][t]) + (1 - frac) * ref["post_logvar"][t]
    np.testing.assert_allclose(logvar, expected, rtol=1e-12)


def test_normal_kl_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    m1, lv1, m2, lv2 = (torch.randn(3, 7, generator=g, dtype=torch.float64) for _ in range(4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)),
        torch.distributions.Normal(m2, torch.exp(0.5 * lv2)),
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-12, atol=1e-12)
    # Scalars broadcast: KL(N(m1, s1) || N(0, 1)).
    prior = torch.distributions.Normal(torch.zeros_like(m1), torch.ones_like(m1))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), prior
    )
    torch.testing.assert_close(normal_kl(m1, lv1, 0.0, 0.0), expected, rtol=1e-12, atol=1e-12)


def test_decoder_nll_matches_float64_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (4, 64), generator=g).double() / 127.5 - 1.0  # uint8 grid in [-1, 1]
    x[0, :2] = torch.tensor([-1.0, 1.0])  # both edge bins
    means = x + 0.02 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    log_scales = torch.empty_like(x).uniform_(-5.0, -2.0, generator=g)
    got = discretized_gaussian_log_likelihood(x, means=means, log_scales=log_scales)

    def bins(cdf):  # the ADM formula, elementwise in numpy float64
        xn, mn, sn = x.numpy(), means.numpy(), np.exp(log_scales.numpy())
        up, lo = cdf((xn - mn + 1 / 255) / sn), cdf((xn - mn - 1 / 255) / sn)
        p = np.where(xn < -0.999, up, np.where(xn > 0.999, 1 - lo, up - lo))
        return np.log(np.maximum(p, 1e-12))

    # rtol 1e-8: tiny bins (log p ~ -19) lose digits to the cancellation in cdf_upper - cdf_lower.
    np.testing.assert_allclose(got.numpy(), bins(np_tanh_cdf), rtol=1e-8, atol=1e-10)
    # Against the exact normal CDF the bin probabilities agree to the approximation's error.
    exact = bins(lambda u: torch.special.ndtr(torch.from_numpy(u)).numpy())
    np.testing.assert_allclose(np.exp(got.numpy()), np.exp(exact), atol=4e-4)


def test_vb_term_is_kl_for_t_positive_and_decoder_nll_at_t0():
    ref, d = reference_schedule(), create_diffusion("")
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 256, (3, C, H, H), generator=g).double() / 127.5 - 1.0
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    output = torch.cat(
        [
            torch.randn(x0.shape, generator=g, dtype=torch.float64),
            torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1,
        ],
        dim=1,
    )
    t = torch.tensor([0, 3, 700])
    vb = d.training_losses(fixed_output(output), x0, t, noise=noise)["vb"]

    tn = t.numpy()[:, None, None, None]
    xt = np.sqrt(ref["acp"][tn]) * x0.numpy() + np.sqrt(1 - ref["acp"][tn]) * noise.numpy()
    eps, v = output[:, :C].numpy(), output[:, C:].numpy()
    x0_hat = (xt - np.sqrt(1 - ref["acp"][tn]) * eps) / np.sqrt(ref["acp"][tn])
    p_mean = ref["coef1"][tn] * x0_hat + ref["coef2"][tn] * xt
    p_logvar = (v + 1) / 2 * np.log(ref["betas"][tn]) + (1 - v) / 2 * ref["post_logvar"][tn]
    q_mean, q_logvar = ref["coef1"][tn] * x0.numpy() + ref["coef2"][tn] * xt, ref["post_logvar"][tn]
    kl = np_gaussian_kl(q_mean, q_logvar, p_mean, p_logvar)
    np.testing.assert_allclose(vb[1:].numpy(), kl[1:].mean(axis=(1, 2, 3)) / LN2, rtol=1e-9)
    nll = -discretized_gaussian_log_likelihood(
        x0[:1], means=torch.from_numpy(p_mean[:1]), log_scales=torch.from_numpy(0.5 * p_logvar[:1])
    )
    np.testing.assert_allclose(vb[0].item(), nll.mean().item() / LN2, rtol=1e-9)


def test_training_losses_shapes_and_vb_trains_only_the_variance():
    d = create_diffusion("")
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(6, C, H, H, generator=g), torch.randn(6, C, H, H, generator=g)
    output = torch.randn(6, 2 * C, H, H, generator=g).tanh().requires_grad_()
    t = torch.tensor([0, 1, 2, 100, 500, 999])
    losses = d.training_losses(fixed_output(output), x0, t, noise=noise)
    assert set(losses) == {"loss", "mse", "vb"} and all(v.shape == (6,) for v in losses.values())
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    torch.testing.assert_close(losses["mse"], ((noise - output[:, :C]) ** 2).mean(dim=(1, 2, 3)))
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), output, retain_graph=True)
    assert torch.count_nonzero(grad_vb[:, :C]) == 0  # mean detached inside the VLB
    assert torch.count_nonzero(grad_vb[:, C:]) == grad_vb[:, C:].numel()
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), output)
    assert torch.count_nonzero(grad_mse[:, C:]) == 0


def test_model_output_shape_is_checked():
    d = create_diffusion("")
    with pytest.raises(ValueError, match="learned-sigma"):
        d.training_losses(
            fixed_output(torch.zeros(2, C, H, H)), torch.zeros(2, C, H, H), torch.tensor([1, 2])
        )


def test_p_sample_step_matches_float64_reference():
    ref, d = reference_schedule(), create_diffusion("")
    g = torch.Generator().manual_seed(5)
    x, noise = (
        torch.randn(4, C, H, H, generator=g, dtype=torch.float64),
        torch.randn(4, C, H, H, generator=g, dtype=torch.float64),
    )
    output = torch.randn(4, 2 * C, H, H, generator=g, dtype=torch.float64).tanh()
    t = torch.tensor([0, 1, 321, 999])
    got = d.p_sample(fixed_output(output), x, t, noise=noise)["sample"].numpy()
    tn, xn = t.numpy()[:, None, None, None], x.numpy()
    eps, v = output[:, :C].numpy(), output[:, C:].numpy()
    x0_hat = np.sqrt(1 / ref["acp"][tn]) * xn - np.sqrt(1 / ref["acp"][tn] - 1) * eps
    mean = ref["coef1"][tn] * x0_hat + ref["coef2"][tn] * xn
    logvar = (v + 1) / 2 * np.log(ref["betas"][tn]) + (1 - v) / 2 * ref["post_logvar"][tn]
    expected = mean + (tn != 0) * np.exp(0.5 * logvar) * noise.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_respacing_250_recomputes_betas_and_maps_timesteps():
    kept = space_timesteps(num_timesteps=T, section_counts="250")
    stride = (T - 1) / (250 - 1)  # both ends kept, evenly spread
    assert kept == [round(i * stride) for i in range(250)] and kept[0] == 0 and kept[-1] == T - 1
    d = create_diffusion("250")
    assert d.num_timesteps == 250 and list(d.timestep_map) == kept
    acp = reference_schedule()["acp"]
    np.testing.assert_allclose(np.cumprod(1 - d.tables["betas"]), acp[kept], rtol=1e-12)
    np.testing.assert_allclose(d.tables["betas"][1], 1 - acp[kept[1]] / acp[kept[0]], rtol=1e-12)

    seen = []

    def recording_model(x, t, y):
        seen.append(t.tolist())
        return torch.zeros(x.shape[0], 2 * C, *x.shape[2:])

    d.p_sample_loop(
        recording_model, (2, C, H, H), model_kwargs={"y": torch.zeros(2, dtype=torch.long)}
    )
    assert seen == [[k, k] for k in reversed(kept)]  # the model sees original steps
    seen.clear()
    d.training_losses(
        recording_model,
        torch.zeros(2, C, H, H),
        torch.tensor([1, 249]),
        model_kwargs={"y": torch.zeros(2, dtype=torch.long)},
    )
    assert seen == [[kept[1], kept[249]]]


def test_respacing_variants_and_errors():
    assert space_timesteps(num_timesteps=T, section_counts="ddim50") == list(range(0, T, 20))
    sections = space_timesteps(num_timesteps=300, section_counts="10,15,20")
    assert len(sections) == 45 and sections[:2] == [0, 11] and sections[-1] == 299
    assert create_diffusion("").num_timesteps == T and create_diffusion(100).num_timesteps == 100
    for bad, message in [
        ("abc", "not an integer"),
        ("ddim999", "integer stride"),
        ("2000", "cannot keep"),
    ]:
        with pytest.raises(ValueError, match=message):
            create_diffusion(bad)
    with pytest.raises(ValueError, match="noise_schedule"):
        create_diffusion("", noise_schedule="cosine-ish")


def test_uneven_sections_give_the_first_ones_the_extra_step():
    """11 steps in 2 sections: the first holds 6 (0..5), the second 5 (6..10); each keeps both
    of its ends (worked by hand from guided-diffusion's space_timesteps)."""
    assert space_timesteps(num_timesteps=11, section_counts=[2, 2]) == [0, 5, 6, 10]
    assert space_timesteps(num_timesteps=10, section_counts="1,1,1") == [0, 4, 7]


@pytest.mark.parametrize("respacing", ["", "250"])
def test_one_step_matches_diffusers_ddpm_scheduler(respacing):
    d = create_diffusion(respacing)
    sched = DDPMScheduler(
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        num_train_timesteps=T,
        variance_type="learned_range",
        clip_sample=False,
    )
    sched.set_timesteps(timesteps=[int(k) for k in d.timestep_map[::-1]])
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, C, H, H, generator=g)
    output = torch.randn(2, 2 * C, H, H, generator=g).tanh()
    for i in [0, 1, d.num_timesteps // 2, d.num_timesteps - 1]:
        original = int(d.timestep_map[i])
        expected = sched.step(
            output, original, x, generator=torch.Generator().manual_seed(i)
        ).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        got = d.p_sample(fixed_output(output), x, torch.full((2,), i), noise=noise)["sample"]
        # diffusers' schedule is float32 (alphas_cumprod within 4e-7 relative of float64).
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


class LabelEcho(nn.Module):
    """Output channel k = x + (k + 1) * (y + 1): channels encode the label used."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x, t, y):
        self.batch_sizes.append(x.shape[0])
        scale = torch.arange(1, 2 * C + 1, dtype=x.dtype)[None, :, None, None]
        return x.repeat(1, 2, 1, 1) + scale * (y.to(x.dtype) + 1)[:, None, None, None]


@pytest.mark.parametrize("channels", [3, "3", "all"])
def test_cfg_guides_eps_channels_and_passes_sigma_from_conditional_half(channels):
    model, s = LabelEcho(), 4.0
    x, y = torch.randn(2, C, H, H), torch.tensor([2, 5])
    out = ClassifierFreeGuidance(model, cfg_scale=s, guidance_channels=channels)(
        x, torch.tensor([7, 7]), y=y
    )
    cond, uncond = model(x, None, y), model(x, None, torch.full_like(y, 10))
    k = C if channels == "all" else int(channels)
    torch.testing.assert_close(out[:, :k], uncond[:, :k] + s * (cond[:, :k] - uncond[:, :k]))
    torch.testing.assert_close(out[:, k:], cond[:, k:])
    assert out.shape == (2, 2 * C, H, H) and model.batch_sizes[0] == 4  # one doubled forward


def test_cfg_scale_one_runs_a_single_batch_and_sampler_accepts_the_wrapper():
    model = LabelEcho()
    x, y = torch.randn(3, C, H, H), torch.tensor([0, 1, 2])
    out = ClassifierFreeGuidance(model, cfg_scale=1.0)(x, torch.zeros(3, dtype=torch.long), y=y)
    torch.testing.assert_close(out, model(x, None, y))
    assert model.batch_sizes == [3, 3]
    net = TinyDenoiser()
    z = create_diffusion("5").p_sample_loop(
        ClassifierFreeGuidance(net, cfg_scale=1.5),
        (3, C, H, H),
        model_kwargs={"y": y},
        generator=torch.Generator().manual_seed(0),
    )
    assert z.shape == (3, C, H, H) and torch.isfinite(z).all()
    with pytest.raises(ValueError, match="null_class"):
        ClassifierFreeGuidance(nn.Identity(), cfg_scale=1.5)
    with pytest.raises(ValueError, match="guidance_channels"):
        ClassifierFreeGuidance(model, cfg_scale=1.5, guidance_channels="first3")


def test_ddim_eta0_is_deterministic_and_matches_formula():
    d, net = create_diffusion("ddim20"), TinyDenoiser()
    z, y = torch.randn(2, C, H, H), torch.tensor([1, 3])
    a = d.ddim_sample_loop(
        net, z.shape, z, model_kwargs={"y": y}, generator=torch.Generator().manual_seed(1)
    )
    b = d.ddim_sample_loop(
        net, z.shape, z, model_kwargs={"y": y}, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(a, b)
    # One step in float64: x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps.
    x = torch.randn(2, C, H, H, dtype=torch.float64)
    output = torch.randn(2, 2 * C, H, H, dtype=torch.float64)
    t = torch.tensor([5, 19])
    got = d.ddim_sample(fixed_output(output), x, t)["sample"].numpy()
    acp = d.tables["alphas_cumprod"]
    abar, abar_prev = acp[t][:, None, None, None], acp[t - 1][:, None, None, None]
    eps = output[:, :C].numpy()
    x0_hat = (x.numpy() - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
    np.testing.assert_allclose(
        got, np.sqrt(abar_prev) * x0_hat + np.sqrt(1 - abar_prev) * eps, rtol=1e-9
    )


def test_sample_depends_only_on_its_own_generator():
    d, net = create_diffusion("10"), TinyDenoiser()

    def sample(seeds, labels):
        return d.p_sample_loop(
            net,
            (len(seeds), C, H, H),
            model_kwargs={"y": torch.tensor(labels)},
            generator=[torch.Generator().manual_seed(s) for s in seeds],
        )

    pair, single = sample([11, 12], [4, 7]), sample([12], [7])
    # Equal up to float32 batch-size effects in the conv, amplified over the chain (|x| ~ 1e2).
    assert (pair[1:] - single).abs().max() <= 1e-5 * single.abs().max()
    assert not torch.allclose(pair[0], pair[1])
    with pytest.raises(ValueError, match="one generator per sample"):
        d.p_sample_loop(
            net,
            (2, C, H, H),
            model_kwargs={"y": torch.tensor([0, 1])},
            generator=[torch.Generator()],
        )


# ---------------------------------------------------------------- found by mutation testing
# Each test below is what a caller would see if a line of udit/diffusion were wrong; the mutants
# they kill are listed in tests/mutation-survivors.md.


def test_ddim_with_eta_one_is_the_ddpm_ancestral_step():
    """Song et al. 2021 (sec. 4.1): eta=1 makes DDIM's step the DDPM posterior step with the fixed
    small variance beta~_t, for the same noise. Two formulas, one answer: any wrong sign or
    factor in DDIM's sigma, its direction term or its noise term breaks the equality."""
    d = create_diffusion("ddim20", learn_sigma=False, sigma_small=True)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, C, H, H, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, C, H, H, generator=gen, dtype=torch.float64)
    z = torch.randn(3, C, H, H, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 7, 19])  # t == 0 takes no noise in either
    ddim = d.ddim_sample(fixed_output(eps), x, t, eta=1.0, noise=z)
    ddpm = d.p_sample(fixed_output(eps), x, t, noise=z)
    torch.testing.assert_close(ddim["sample"], ddpm["sample"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ddim["pred_xstart"], ddpm["pred_xstart"], rtol=0, atol=0)


def test_ddim_eta_half_matches_the_formula_written_out():
    """eq. 12 and 16 of Song et al. in float64 numpy, noise given and drawn from a generator."""
    d = create_diffusion("ddim20")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, C, H, H, generator=gen, dtype=torch.float64)
    output = torch.randn(2, 2 * C, H, H, generator=gen, dtype=torch.float64)
    z = torch.randn(2, C, H, H, generator=gen, dtype=torch.float64)
    t, eta = torch.tensor([5, 19]), 0.5
    acp = d.tables["alphas_cumprod"]
    abar, abar_prev = acp[t][:, None, None, None], acp[t - 1][:, None, None, None]
    eps = output[:, :C].numpy()
    x0_hat = (x.numpy() - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
    sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    want = np.sqrt(abar_prev) * x0_hat + np.sqrt(1 - abar_prev - sigma**2) * eps + sigma * z.numpy()
    got = d.ddim_sample(fixed_output(output), x, t, eta=eta, noise=z)["sample"]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)
    # Without `noise` the step draws it from the generators, one per sample, in x's dtype.
    rows = [torch.Generator().manual_seed(s) for s in (10, 11)]
    drawn = torch.cat([torch.randn(1, C, H, H, generator=g, dtype=x.dtype) for g in rows])
    again = [torch.Generator().manual_seed(s) for s in (10, 11)]
    got = d.ddim_sample(fixed_output(output), x, t, eta=eta, generator=again)["sample"]
    np.testing.assert_allclose(
        got.numpy(), want - sigma * z.numpy() + sigma * drawn.numpy(), rtol=1e-12
    )


def test_ddim_loop_with_eta_one_equals_the_ddpm_loop():
    """Whole chains: eta reaches every step, and noise is drawn from the same generators in the
    same order as the ancestral sampler."""
    d = create_diffusion("ddim10", learn_sigma=False, sigma_small=True)
    net = TinyDenoiser()

    class EpsOnly(nn.Module):  # learn_sigma=False: the model predicts eps only
        def forward(self, x, t, y):
            return net(x, t, y)[:, :C]

    y = torch.tensor([1, 2])

    def gens():
        return [torch.Generator().manual_seed(s) for s in (5, 6)]

    kw = {"model_kwargs": {"y": y}}
    ddim = d.ddim_sample_loop(EpsOnly(), (2, C, H, H), generator=gens(), eta=1.0, **kw)
    ddpm = d.p_sample_loop(EpsOnly(), (2, C, H, H), generator=gens(), **kw)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(
        ddim, d.ddim_sample_loop(EpsOnly(), (2, C, H, H), generator=gens(), **kw)
    )


def test_sample_loops_default_to_no_clipping_and_no_progress_bar(capsys):
    """Latents are not in [-1, 1]: clipping x0_hat by default would bend every sample. The loops'
    defaults must be the official sample.py's (clip_denoised=False) and print nothing."""
    d = create_diffusion("ddim10")
    x = 3.0 * torch.randn(2, C, H, H, generator=torch.Generator().manual_seed(7))
    big = torch.cat([torch.full((2, C, H, H), -2.0), torch.zeros(2, C, H, H)], dim=1)
    model = fixed_output(big)  # eps that puts x0_hat far outside [-1, 1]
    for loop in (d.ddim_sample_loop, d.p_sample_loop):
        default = loop(model, x.shape, x.clone(), generator=torch.Generator().manual_seed(0))
        unclipped = loop(
            model,
            x.shape,
            x.clone(),
            clip_denoised=False,
            generator=torch.Generator().manual_seed(0),
        )
        clipped = loop(
            model,
            x.shape,
            x.clone(),
            clip_denoised=True,
            generator=torch.Generator().manual_seed(0),
        )
        torch.testing.assert_close(default, unclipped, rtol=0, atol=0)
        assert (default - clipped).abs().max() > 0.1
    assert capsys.readouterr().err == ""


def test_loops_draw_their_start_on_the_models_device():
    """Without `noise` or `device` the chain starts where the model's parameters live (a GPU
    model gets GPU noise); parameter-free callables run on the CPU."""
    from udit.diffusion.gaussian import _model_device

    assert _model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert _model_device(lambda x, t: x) == torch.device("cpu")
    assert _model_device(nn.ReLU()) == torch.device("cpu")


def test_q_sample_draws_its_own_noise_and_names_both_shapes():
    d = create_diffusion("")
    x0, t = torch.randn(2, C, H, H), torch.tensor([10, 900])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        drawn = d.q_sample(x0, t)
        torch.manual_seed(0)
        noise = torch.randn_like(x0)
    torch.testing.assert_close(drawn, d.q_sample(x0, t, noise=noise), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"noise \(2, 4, 8, 7\) must match x_start \(2, 4, 8, 8\)"):
        d.q_sample(x0, t, noise=torch.randn(2, C, H, H - 1))


def test_training_losses_check_t_and_scale_the_vb_term_when_asked():
    x0, noise = torch.randn(2, C, H, H), torch.randn(2, C, H, H)
    net = TinyDenoiser()
    kw = {"model_kwargs": {"y": torch.tensor([1, 2])}, "noise": noise}
    d = create_diffusion("")
    for bad in (torch.tensor([1.0, 2.0]), torch.tensor([1, 2, 3])):  # float t; wrong length
        with pytest.raises(ValueError, match=r"integer tensor of shape \(2,\), got torch\."):
            d.training_losses(net, x0, bad, **kw)
    # rescale_learned_sigmas (IDDPM's "rescaled" VLB): vb * num_timesteps / 1000, here 250 / 1000.
    t = torch.tensor([3, 200])
    plain = create_diffusion("250").training_losses(net, x0, t, **kw)
    scaled = create_diffusion("250", rescale_learned_sigmas=True).training_losses(net, x0, t, **kw)
    assert plain["vb"].abs().min() > 0
    torch.testing.assert_close(scaled["vb"], plain["vb"] * 0.25)
    torch.testing.assert_close(scaled["mse"], plain["mse"], rtol=0, atol=0)
    # Fixed variance: no VB term, the loss is the MSE alone, one value per sample.

    def eps_only(x, t, y):
        return net(x, t, y)[:, :C]

    fixed = create_diffusion("", learn_sigma=False).training_losses(eps_only, x0, t, **kw)
    assert fixed["vb"].shape == (2,) and not fixed["vb"].any()
    torch.testing.assert_close(fixed["loss"], fixed["mse"], rtol=0, atol=0)


def test_normal_kl_refuses_all_scalar_arguments():
    with pytest.raises(TypeError, match="at least one tensor"):
        normal_kl(0.0, 0.0, 1.0, 0.0)


def test_normal_kl_keeps_float64_scalars_and_tensor_dtypes():
    """Python-number arguments become tensors of the first tensor's dtype (0.1 in float64, not
    rounded through float32); tensor arguments keep their own dtype."""
    mean = torch.tensor([0.3], dtype=torch.float64)
    got = normal_kl(mean, 0.1, 0.0, 0.0)
    want = np_gaussian_kl(0.3, 0.1, 0.0, 0.0)
    np.testing.assert_allclose(got.numpy(), [want], rtol=1e-14)
    mixed = normal_kl(mean.float(), torch.tensor([0.1], dtype=torch.float64), 0.0, 0.0)
    assert mixed.dtype == torch.float64


def test_discretized_likelihood_names_all_three_shapes():
    x, wrong = torch.zeros(2, 3), torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"x \(2, 3\), means \(2, 4\), log_scales \(2, 3\)"):
        discretized_gaussian_log_likelihood(x, means=wrong, log_scales=x)


def test_randn_draws_in_the_dtype_asked_for_every_generator_form():
    """float64 noise is drawn as float64 (not float32 promoted), from the global RNG, one
    generator or one per row; a wrong number of generators names the batch size."""
    from udit.diffusion.noise import randn

    with torch.random.fork_rng():
        torch.manual_seed(1)
        want = torch.randn(3, 2, dtype=torch.float64)
        torch.manual_seed(1)
        got = randn((3, 2), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    one = randn((3, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(
        one, torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    )
    rows = randn((3, 2), generator=[torch.Generator().manual_seed(s) for s in (3, 4, 5)],
                 dtype=torch.float64)  # fmt: skip
    assert rows.dtype == one.dtype == torch.float64
    row0 = torch.randn(1, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(rows[:1], row0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3"):
        randn((3, 2), generator=[torch.Generator(), torch.Generator()])


@pytest.mark.parametrize("sigma_small", [True, False])
def test_fixed_variances_are_iddpms_beta_tilde_and_beta(sigma_small):
    """Without learned sigma (a model_kw / diffusion option): Sigma_t is beta~_t (clipped at
    t=0) with sigma_small, else beta_t with beta~_1 at t=0 (IDDPM sec. 3.1, DiT's tables)."""
    ref = reference_schedule()
    d = create_diffusion("", learn_sigma=False, sigma_small=sigma_small)
    t = torch.tensor([0, 1, 500, 999])
    x = torch.zeros(4, C, H, H, dtype=torch.float64)
    eps = torch.randn(4, C, H, H, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    p = d.p_from_output(eps, x, t)
    large = np.log(np.append(ref["post_var"][1], ref["betas"][1:]))
    want = (ref["post_logvar"] if sigma_small else large)[t.numpy()]
    np.testing.assert_allclose(p["log_variance"][:, 0, 0, 0].numpy(), want, rtol=1e-10)
    torch.testing.assert_close(p["variance"], torch.exp(p["log_variance"]), rtol=0, atol=0)
    torch.testing.assert_close(p["eps"], eps, rtol=0, atol=0)


def test_clipping_bounds_x0_hat_to_minus_one_one_and_the_mean_follows():
    d = create_diffusion("10")
    x = torch.zeros(2, C, H, H, dtype=torch.float64)
    t = torch.tensor([3, 9])
    output = torch.cat([torch.linspace(-3, 3, 2 * C * H * H, dtype=torch.float64).view(2, C, H, H),
                        torch.zeros(2, C, H, H, dtype=torch.float64)], dim=1)  # fmt: skip
    free, clipped = d.p_from_output(output, x, t), d.p_from_output(output, x, t, clip_denoised=True)
    assert free["pred_xstart"].min() < -1 and free["pred_xstart"].max() > 1
    torch.testing.assert_close(clipped["pred_xstart"], free["pred_xstart"].clamp(-1, 1))
    mean, _, _ = d.q_posterior(free["pred_xstart"].clamp(-1, 1), x, t)
    torch.testing.assert_close(clipped["mean"], mean)


def test_cosine_schedule_matches_diffusers():
    """squaredcos_cap_v2 (a config's noise_schedule) against diffusers' own implementation."""
    d = create_diffusion("", noise_schedule="squaredcos_cap_v2")
    theirs = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").betas
    np.testing.assert_allclose(d.tables["betas"], theirs.double().numpy(), rtol=1e-5)
    assert d.tables["betas"].max() == pytest.approx(0.999)  # the cap
    assert create_diffusion().num_timesteps == T  # default: every step kept


def test_a_model_output_of_the_wrong_shape_names_the_shape_it_must_have():
    d = create_diffusion("10", learn_sigma=False)
    x, t = torch.zeros(2, C, H, H), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"must be \(2, 4, 8, 8\) \(eps channels\)"):
        d.p_sample(fixed_output(torch.zeros(2, 2 * C, H, H)), x, t)
    with pytest.raises(ValueError, match=r"must be \(2, 8, 8, 8\) \(eps \+ learned-sigma"):
        create_diffusion("10").p_sample(fixed_output(torch.zeros(2, C, H, H)), x, t)


def test_sampling_chains_start_from_the_given_noise_and_show_progress_on_request(capsys):
    """The loops start from `noise` when given (two starts, two results, same generators); the
    progress bar changes nothing but stderr; a start of the wrong shape is named."""
    d, net = create_diffusion("5"), TinyDenoiser()
    y = {"y": torch.tensor([1, 2])}
    z1, z2 = torch.randn(2, 2, C, H, H, generator=torch.Generator().manual_seed(9))

    def run(loop, z, **kw):
        return loop(
            net, z.shape, z, model_kwargs=y, generator=torch.Generator().manual_seed(0), **kw
        )

    for loop in (d.p_sample_loop, d.ddim_sample_loop):
        quiet = run(loop, z1)
        assert not torch.equal(quiet, run(loop, z2))
        capsys.readouterr()
        torch.testing.assert_close(run(loop, z1, progress=True), quiet, rtol=0, atol=0)
        assert "5/5" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"noise \(2, 4, 8, 8\) must have the sample shape \(3,"):
        d.p_sample_loop(net, (3, C, H, H), z1, model_kwargs=y)


def test_ddpm_step_draws_float64_noise_and_keeps_x0_hat_at_the_last_step():
    d = create_diffusion("10", learn_sigma=False, sigma_small=True)
    x = torch.randn(2, C, H, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = torch.randn(2, C, H, H, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([4, 9])
    rows = [torch.Generator().manual_seed(s) for s in (20, 21)]
    drawn = torch.cat([torch.randn(1, C, H, H, generator=g, dtype=x.dtype) for g in rows])
    again = [torch.Generator().manual_seed(s) for s in (20, 21)]
    got = d.p_sample(fixed_output(eps), x, t, generator=again)["sample"]
    want = d.p_sample(fixed_output(eps), x, t, noise=drawn)["sample"]
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    last = d.p_sample(fixed_output(eps), x, torch.tensor([0, 0]))
    torch.testing.assert_close(
        last["pred_xstart"], d.predict_xstart_from_eps(x, torch.tensor([0, 0]), eps)
    )
    torch.testing.assert_close(
        last["sample"], d.p_mean_variance(fixed_output(eps), x, torch.tensor([0, 0]))["mean"]
    )


def test_defaults_are_the_official_ones():
    """create_diffusion(learn_sigma=False) uses beta_t (fixed_large), p_mean_variance does not
    clip, and the shortest schedule has 2 steps."""
    ref = reference_schedule()
    d = create_diffusion("", learn_sigma=False)
    t, x = torch.tensor([500]), torch.zeros(1, C, H, H, dtype=torch.float64)
    got = d.model_log_variance(None, t, x)[0, 0, 0, 0].item()
    assert got == pytest.approx(np.log(ref["betas"][500]), rel=1e-12)
    big = 5.0 * torch.ones(1, 2 * C, H, H, dtype=torch.float64)
    plain = create_diffusion("10").p_mean_variance(fixed_output(big), x, torch.tensor([9]))
    assert plain["pred_xstart"].abs().max() > 1
    from udit.diffusion.schedule import named_betas

    assert named_betas(name="linear", num_steps=2).shape == (2,)
    with pytest.raises(ValueError, match="num_steps must be >= 2, got 1"):
        named_betas(name="linear", num_steps=1)


def test_guidance_accepts_its_whole_range_and_names_what_it_refuses():
    """cfg_scale 0 (the unconditional model) and 0.5 are valid, negatives and NaN are not;
    guiding 1 channel is valid; model kwargs reach the model with and without guidance; more
    guided channels than eps channels is refused naming both."""
    net = TinyDenoiser()
    for scale in (0.0, 0.5, 1.0, 4.0):
        ClassifierFreeGuidance(net, cfg_scale=scale)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match=r"cfg_scale must be a number >= 0, got"):
            ClassifierFreeGuidance(net, cfg_scale=bad)
    with pytest.raises(ValueError, match=r"pass null_class= \(the index of the unconditional"):
        ClassifierFreeGuidance(nn.Identity(), cfg_scale=1.5)
    x, t, y = torch.randn(2, C, H, H), torch.tensor([3, 4]), torch.tensor([0, 1])
    one = ClassifierFreeGuidance(net, cfg_scale=2.0, guidance_channels=1)
    with torch.no_grad():
        out, plain = one(x, t, y), net(x, t, y)
    torch.testing.assert_close(out[:, 1:], plain[:, 1:])
    assert not torch.allclose(out[:, :1], plain[:, :1])
    seen = []

    def spy(x, t, y, **kwargs):
        seen.append(kwargs)
        return net(x, t, y)

    for scale in (1.0, 2.0):
        ClassifierFreeGuidance(spy, cfg_scale=scale, null_class=10)(x, t, y, extra=1)
    assert seen == [{"extra": 1}, {"extra": 1}]
    wide = ClassifierFreeGuidance(net, cfg_scale=2.0, guidance_channels=C + 1)
    with pytest.raises(ValueError, match=rf"guidance_channels={C + 1} exceeds the {C} eps"):
        wide(x, t, y)


def test_seeded_generator_is_seedsequence_written_out():
    """Sample i of seed s must be the same stream in every version (resumed and re-run jobs
    mix shards): the seed is SeedSequence(words)'s first two uint32 words, high word first."""
    from udit.diffusion.noise import seeded_generator

    for words in [(0,), (0, 1), (7, 3, 2), (2**40, 5)]:
        hi, lo = np.random.SeedSequence(list(words)).generate_state(2, dtype=np.uint32)
        assert seeded_generator(*words).initial_seed() == (int(hi) << 32) | int(lo)
