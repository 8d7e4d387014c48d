"""The DiT / U-DiT training recipe as the loop runs it, and the constants the paper fixes.

- one `train_step` (AdamW, hybrid loss) and one EMA update against values worked out here;
- a real 2-step `udit train` run whose saved EMA follows ema <- 0.9999 ema + 1e-4 theta;
- the learned-sigma rows of the final layer are trained (the VB term is in the loss);
- training timesteps cover [0, T), t = 0 included;
- the VB term at t = 0, 1, 2: decoder NLL at t = 0 only, KL(q || p) from t = 1 on;
- literals: latent scale 0.18215, T = 1000, linear betas 1e-4..0.02, 250 sampling steps,
  learned sigma.
CPU, float64 where a formula is compared, a 2-block DiT of width 32: a few seconds in all.
"""

import copy
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from test_diffusion import np_gaussian_kl, np_tanh_cdf

from udit.data.toy import generate_toy_data
from udit.diffusion import DEFAULT_SAMPLING_STEPS, NUM_TRAIN_TIMESTEPS, create_diffusion
from udit.diffusion.schedule import named_betas
from udit.models import create_model
from udit.paper import recipe, training_settings
from udit.training import store
from udit.training.determinism import LabelDropControl, draw_samples
from udit.training.ema import make_ema, update_ema
from udit.training.loop import TrainOptions, make_adamw, train, train_step

TINY_KW = {"hidden_size": 32, "depth": 2, "num_heads": 2}  # DiT-S/2 shrunk to ~0.1 M parameters
C, SIDE, CLASSES = 4, 8, 4  # latent channels, latent side, classes of the unit-test model
LN2 = math.log(2.0)
EMA_DECAY = 0.9999  # DiT train.py update_ema(ema, model.module) default decay
SD_VAE_SCALE = 0.18215  # DiT train.py: vae.encode(x).latent_dist.sample().mul_(0.18215)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny_dit(seed: int = 0) -> torch.nn.Module:
    """float64 DiT with perturbed weights (adaLN-Zero starts as the identity) and no label
    dropout, so two forwards on the same input are the same function."""
    torch.manual_seed(seed)
    model = create_model(
        "DiT-S/2",
        input_size=SIDE,
        in_channels=C,
        num_classes=CLASSES,
        class_dropout_prob=0.0,
        **TINY_KW,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.double().train()


def _batch(n: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, C, SIDE, SIDE, generator=g, dtype=torch.float64)
    noise = torch.randn(n, C, SIDE, SIDE, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 250, 600, 999][:n])
    y = torch.arange(n) % CLASSES
    return x, y, t, noise


def _sigma_rows(model) -> torch.Tensor:
    """Rows of final_layer.linear that produce learned-sigma channels: DiT unpatchify reads the
    p*p*C_out outputs of a token as (p, q, channel), so the channel of row r is r % C_out."""
    rows = torch.arange(model.final_layer.linear.out_features)
    return rows % model.out_channels >= model.in_channels


# ----------------------------------------------------------------------------- train_step + EMA


def test_train_step_is_one_adamw_step_on_the_hybrid_loss_then_ema():
    """theta_1 = theta_0 - lr g / (|g| + eps) (AdamW's first step, weight decay 0) with g the
    gradient of mean(MSE + VB); then ema = d ema + (1 - d) theta_1 with the trainer's d."""
    model, diffusion = _tiny_dit(), create_diffusion(timestep_respacing="")
    x, y, t, noise = _batch()
    lr = TrainOptions.lr
    assert lr == 1e-4 and TrainOptions.weight_decay == 0  # DiT recipe: AdamW 1e-4, no decay
    theta0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    # The expected gradient, from an independent copy of the model.
    twin = copy.deepcopy(model)
    loss = diffusion.training_losses(twin, x, t, model_kwargs={"y": y}, noise=noise)["loss"]
    grads = dict(
        zip(
            [k for k, p in twin.named_parameters() if p.requires_grad],
            torch.autograd.grad(loss.mean(), [p for p in twin.parameters() if p.requires_grad]),
        )
    )

    ema = make_ema(model)
    # the trainer's own optimiser, built from the recipe's options
    opt = make_adamw(model.parameters(), lr=lr, weight_decay=TrainOptions.weight_decay,
                     device=torch.device("cpu"))  # fmt: skip
    terms, _ = train_step(
        net=model,
        opt=opt,
        diffusion=diffusion,
        x=x,
        y=y,
        t=t,
        noise=noise,
        autocast=nullcontext(),
    )
    torch.testing.assert_close(terms["loss"], loss.detach(), rtol=1e-12, atol=0)
    decay = TrainOptions.ema_decay
    assert decay == EMA_DECAY
    update_ema(ema, model, decay)

    ema_params = dict(ema.named_parameters())
    for name, p in model.named_parameters():
        if name in grads:
            g = grads[name]
            want = theta0[name] - lr * g / (g.abs() + 1e-8)  # AdamW step 1: m^ = g, v^ = g^2
        else:
            want = theta0[name]  # frozen (pos_embed): untouched
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-15, msg=name)
        # EMA started as theta_0 (make_ema) and moves by (1 - d) of the step: ~1e-8 here.
        ema_want = decay * theta0[name] + (1 - decay) * p.detach()
        torch.testing.assert_close(ema_params[name], ema_want, rtol=0, atol=1e-15, msg=name)
    moved = (ema_params["final_layer.linear.weight"] - theta0["final_layer.linear.weight"]).abs()
    assert moved.max() > 1e-9  # the check above is not a comparison of unchanged copies


def test_learned_sigma_rows_are_trained_by_the_vb_term():
    """MSE only sees eps: only the VB term gives the sigma rows of the final layer a gradient."""
    model, diffusion = _tiny_dit(), create_diffusion(timestep_respacing="")
    x, y, t, noise = _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the step is a no-op: we read the grads
    train_step(
        net=model,
        opt=opt,
        diffusion=diffusion,
        x=x,
        y=y,
        t=t,
        noise=noise,
        autocast=nullcontext(),
    )
    sigma = _sigma_rows(model)
    assert sigma.sum() == model.final_layer.linear.out_features // 2
    weight_grad = model.final_layer.linear.weight.grad
    bias_grad = model.final_layer.linear.bias.grad
    assert (weight_grad[sigma].abs().sum(dim=1) > 0).all()  # every sigma row is trained
    assert (bias_grad[sigma] != 0).all()
    # and exactly by d mean(VB) / d W on those rows (MSE contributes nothing there)
    twin = copy.deepcopy(model)
    vb = diffusion.training_losses(twin, x, t, model_kwargs={"y": y}, noise=noise)["vb"]
    (want,) = torch.autograd.grad(vb.mean(), twin.final_layer.linear.weight)
    torch.testing.assert_close(weight_grad[sigma], want[sigma], rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- the real loop


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    generate_toy_data(out=str(root), num_classes=4, per_class=4, size=16, seed=0)
    return root


def test_trainer_ema_uses_decay_0_9999(toy, tmp_path):
    """2 steps of `udit train` with the default --ema-decay, a checkpoint after each: the EMA of
    step 2 is d * EMA_1 + (1 - d) * theta_2 with d = 0.9999 (DiT's update_ema default)."""
    opts = TrainOptions(
        model="DiT-S/2",
        run_dir=str(tmp_path / "run"),
        images=str(toy),
        pixel=True,
        image_size=16,
        num_classes=4,
        global_batch=8,
        total_steps=2,
        ckpt_every=1,
        keep_last=2,
        log_every=1,
        num_workers=0,
        device="cpu",
        model_kw=dict(TINY_KW),
        lr=1e-2,  # large steps, so (1 - d) (theta - ema) stands far above float32 rounding
    )
    assert opts.ema_decay == EMA_DECAY  # the default the run below uses
    train(opts)
    ckpts = store.list_checkpoints(Path(opts.run_dir))
    assert [step for step, _ in ckpts] == [1, 2]
    first, second = (store.load_checkpoint_state(path) for _, path in ckpts)
    assert first["args"]["ema_decay"] == EMA_DECAY

    num, den = 0.0, 0.0
    for name in first["model"]:
        if name == "pos_embed":  # frozen sin-cos table: theta == ema forever
            continue
        ema1, ema2 = first["ema"][name].double(), second["ema"][name].double()
        theta2 = second["model"][name].double()
        # atol: float32 storage rounding (measured <= 3e-8); decay 1.0 would be off by ~2e-6.
        torch.testing.assert_close(
            ema2, EMA_DECAY * ema1 + (1 - EMA_DECAY) * theta2, rtol=0, atol=1e-7, msg=name
        )
        # Least-squares estimate of (1 - d) from ema1 - ema2 = (1 - d) (ema1 - theta2).
        num += ((ema1 - ema2) * (ema1 - theta2)).sum().item()
        den += ((ema1 - theta2) ** 2).sum().item()
    assert den > 1e-2  # the weights did move
    assert num / den == pytest.approx(1 - EMA_DECAY, rel=1e-3)  # measured: 1e-4 rel


# ----------------------------------------------------------------------------- timesteps


def test_training_timesteps_cover_zero_to_t_minus_one():
    """t ~ U{0, ..., T-1} (DiT: torch.randint(0, diffusion.num_timesteps, ...)): t = 0, the
    decoder term, is trained too. Drawn by the trainer's own per-sample function."""
    steps = 8
    draws = draw_samples(
        seed=0,
        step=3,
        offset=0,
        count=400,
        shape=(1, 1, 1),
        num_timesteps=steps,
        num_embedders=1,
        drop_prob=0.1,
        latent=False,
        flip_prob=0.5,
    )
    t = draws.t
    assert t.dtype == torch.int64 and t.shape == (400,)
    assert t.min().item() == 0 and t.max().item() == steps - 1
    counts = torch.bincount(t, minlength=steps)
    assert (counts > 20).all(), counts  # every step is drawn, about 50 times each
    # At the trainer's T = 1000 a few thousand draws also reach both ends.
    big = draw_samples(
        seed=0,
        step=0,
        offset=0,
        count=4000,
        shape=(1,),
        num_timesteps=NUM_TRAIN_TIMESTEPS,
        num_embedders=0,
        drop_prob=0.0,
        latent=False,
        flip_prob=0.5,
    ).t
    assert big.min().item() == 0 and big.max().item() == NUM_TRAIN_TIMESTEPS - 1


# ----------------------------------------------------------------------------- VB term


def _vb_reference(x0, xt, eps, v, t):
    """ADM/DiT `_vb_terms_bpd` in float64 numpy: decoder NLL at t = 0, KL(q || p) for t > 0,
    both averaged over dimensions and in bits. Posterior by DDPM eq. 6-7."""
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))  # beta~_0 = 0, clipped to beta~_1
    b, a, ab, abp = betas[t], alphas[t], abar[t], abar_prev[t]
    coef1, coef2 = b * np.sqrt(abp) / (1 - ab), (1 - abp) * np.sqrt(a) / (1 - ab)
    q_mean, q_logvar = coef1 * x0 + coef2 * xt, post_logvar[t]
    x0_hat = (xt - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    p_mean = coef1 * x0_hat + coef2 * xt
    frac = (v + 1) / 2  # learned range (IDDPM eq. 15)
    p_logvar = frac * np.log(b) + (1 - frac) * post_logvar[t]
    if t == 0:
        # -log of the probability of x0's bin (width 2/255, open-ended edge bins) under
        # N(p_mean, p_var), with ADM's tanh approximation of the normal CDF.
        std = np.exp(0.5 * p_logvar)
        upper = np_tanh_cdf((x0 - p_mean + 1 / 255) / std)
        lower = np_tanh_cdf((x0 - p_mean - 1 / 255) / std)
        prob = np.where(x0 < -0.999, upper, np.where(x0 > 0.999, 1 - lower, upper - lower))
        return -np.log(np.maximum(prob, 1e-12)).mean() / LN2
    kl = np_gaussian_kl(q_mean, q_logvar, p_mean, p_logvar)
    return kl.mean() / LN2


def test_vb_term_at_t_0_1_2_is_decoder_nll_then_kl():
    d = create_diffusion(timestep_respacing="")
    g = torch.Generator().manual_seed(5)
    shape = (3, C, SIDE, SIDE)
    x0 = torch.randint(0, 256, shape, generator=g).double() / 127.5 - 1.0  # uint8 grid, [-1, 1]
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = noise + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)  # a fair guess
    v = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 1, 2])
    xt = d.q_sample(x0, t, noise=noise)
    vb = d.vb_terms_bpd(torch.cat([eps, v], dim=1), x0, xt, t)
    want = [
        _vb_reference(x0[i].numpy(), xt[i].numpy(), eps[i].numpy(), v[i].numpy(), i)
        for i in range(3)
    ]
    np.testing.assert_allclose(vb.numpy(), want, rtol=1e-9)
    # the same terms reach the training loss
    losses = d.training_losses(lambda x, t, **kw: torch.cat([eps, v], dim=1), x0, t, noise=noise)
    np.testing.assert_allclose(losses["vb"].numpy(), want, rtol=1e-9)


# ----------------------------------------------------------------------------- constants


def test_sd_vae_latent_scale_is_0_18215():
    from udit.data.latents import sample_latent
    from udit.data.vae import LATENT_SCALE, tiny_vae_config

    assert LATENT_SCALE == SD_VAE_SCALE
    assert training_settings()["latent_scale"] == SD_VAE_SCALE
    assert tiny_vae_config()["scaling_factor"] == SD_VAE_SCALE
    # The latent the trainer draws: (mean + std * noise) * 0.18215.
    moments = torch.cat([torch.full((1, 4, 2, 2), 2.0), torch.full((1, 4, 2, 2), -1.0)], dim=1)
    noise = torch.full((1, 4, 2, 2), 0.5)
    want = (2.0 + math.exp(-0.5) * 0.5) * SD_VAE_SCALE
    torch.testing.assert_close(sample_latent(moments, noise), torch.full((1, 4, 2, 2), want))


def test_diffusion_constants_are_dits():
    assert NUM_TRAIN_TIMESTEPS == 1000
    assert training_settings()["diffusion_steps"] == 1000
    d = create_diffusion(timestep_respacing="")  # what udit/training/loop.py builds
    assert d.num_timesteps == 1000 and d.learn_sigma and d.var_type == "learned_range"
    assert not d.rescale_vb  # DiT: LossType.MSE, VB not scaled by T / 1000
    betas = named_betas(name="linear", num_steps=1000)
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    np.testing.assert_array_equal(betas, np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(d.tables["betas"], np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    # Other T: DiT scales both ends by 1000 / T.
    np.testing.assert_allclose(
        named_betas(name="linear", num_steps=500), np.linspace(2e-4, 0.04, 500), rtol=1e-15
    )
    # Models output eps and sigma: 2 x in_channels.
    tiny = {
        "DiT-S/2": TINY_KW,
        "U-DiT-S": {"hidden_size": 16, "num_heads": 2, "depths": (1, 1, 1, 1, 1)},
    }
    for name, kw in tiny.items():
        model = create_model(name, input_size=16, in_channels=4, num_classes=CLASSES, **kw)
        out = model.eval()(torch.zeros(1, 4, 16, 16), torch.tensor([5]), torch.tensor([1]))
        assert out.shape == (1, 8, 16, 16), name


def test_recipe_defaults_are_the_official_codes():
    """The numbers every config and CLI default to (udit.paper.recipe), against literals."""
    r = recipe()
    assert (r.lr, r.weight_decay, r.global_batch, r.ema_decay, r.global_seed) == (
        1e-4,
        0,
        256,
        0.9999,
        0,
    )
    assert (r.fid_samples, r.sampling_steps, r.sample_seed, r.ckpt_every) == (50000, 250, 0, 50000)
    assert r.log_every == 100 and TrainOptions.log_every == 100  # DiT train.py --log-every
    assert (r.cfg_scale, r.guidance_channels, r.num_classes, r.class_dropout) == (1.0, 3, 1000, 0.1)
    assert r.vae == "stabilityai/sd-vae-ft-ema" and r.image_size == 256
    from udit import experiments

    assert experiments.DEFAULTS == {
        "global_batch": 256,
        "ckpt_every": 50000,
        "log_every": 100,
        "seed": 0,
        "fid_samples": 50000,
        "sampling_steps": 250,
        "sample_seed": 0,
        "precision": "tf32",  # official train.py / sample_ddp.py: allow_tf32 = True
    }
    args = sample_cli_defaults()
    assert args.precision == "tf32" and TrainOptions.precision == "tf32"
    assert (args.num_samples, args.seed, args.cfg_scale, args.guidance_channels) == (
        50000,
        0,
        1.0,
        3,  # SampleOptions' own default (the flag once restated it as the text "3")
    )


def sample_cli_defaults():
    from udit.sampling.cli import build_parser

    return build_parser().parse_args(["--checkpoint", "c.pt", "--out", "s.npz"])


def test_sampling_defaults_are_250_ddpm_steps():
    from udit.sampling.cli import build_parser
    from udit.sampling.options import SampleOptions

    assert DEFAULT_SAMPLING_STEPS == 250
    assert SampleOptions(checkpoint="c.pt", out="s.npz").steps == 250
    args = build_parser().parse_args(["--checkpoint", "c.pt", "--out", "s.npz"])
    assert args.steps == 250 and args.sampler == "ddpm"
    assert create_diffusion("250").num_timesteps == 250


def test_data_order_reshuffles_every_epoch_like_distributed_sampler():
    """DistributedSampler.set_epoch: the permutation of epoch e is randperm seeded seed + e."""
    from udit.training.determinism import DataOrder

    order = DataOrder(num_items=64, global_batch=8, world_size=1, rank=0, seed=3)
    for epoch in (0, 1, 5):
        want = torch.randperm(64, generator=torch.Generator().manual_seed(3 + epoch))
        assert torch.equal(order.permutation(epoch), want)
    assert not torch.equal(order.permutation(0), order.permutation(1))
    # Step 8 is the first batch of epoch 1 (8 batches per epoch): its indices come from epoch 1.
    assert order.local_indices(8) == order.permutation(1)[:8].tolist()


def test_grad_accumulation_is_the_same_step_as_one_batch():
    """2 micro-batches of 4 == one batch of 8 (float64): per-sample loss terms, gradients and
    the weights after the AdamW step, with the trainer's per-sample noise, timesteps and
    label-drop coins (drawn per global sample index, so the split cannot change them)."""
    torch.manual_seed(0)
    base = create_model(
        "DiT-S/2", input_size=SIDE, in_channels=C, num_classes=CLASSES, **TINY_KW
    ).double()  # class_dropout_prob as the recipe (0.1): the coins come from the draws
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    diffusion = create_diffusion(timestep_respacing="")
    draws = draw_samples(
        seed=0,
        step=3,
        offset=0,
        count=8,
        shape=(C, SIDE, SIDE),
        num_timesteps=diffusion.num_timesteps,
        num_embedders=1,
        drop_prob=0.5,  # more coins than the recipe's 0.1, so both outcomes occur in 8
        latent=False,
        flip_prob=0.5,
    )
    assert draws.label_drop.any() and not draws.label_drop.all()
    x = torch.randn(8, C, SIDE, SIDE, generator=torch.Generator().manual_seed(2)).double()
    y = torch.arange(8) % CLASSES
    results = []
    for accum in (1, 2):
        model = copy.deepcopy(base).train()
        drops = LabelDropControl(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0, foreach=True)
        terms, _ = train_step(
            net=model,
            opt=opt,
            diffusion=diffusion,
            x=x,
            y=y,
            t=draws.t,
            noise=draws.noise.double(),
            autocast=nullcontext(),
            accum=accum,
            drops=drops,
            label_drop=draws.label_drop,
        )
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((terms, grads, model.state_dict()))
    (t1, g1, w1), (t2, g2, w2) = results
    for key in ("loss", "mse", "vb"):
        torch.testing.assert_close(t2[key], t1[key], rtol=1e-12, atol=1e-14)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-9, atol=1e-14, msg=name)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-12, msg=name)
    moved = (w1["final_layer.linear.weight"] - base.state_dict()["final_layer.linear.weight"]).abs()
    assert moved.max() > 1e-4  # the step did move the weights
