"""Classifier-free guidance as `udit sample` applies it (udit.sampling: sample_batch, generate).

An "echo" network stands in for the denoiser: its 8 output channels encode the label it was
given, and it records every call, so the null label, the batch doubling and which channels
were guided can be read off a real 2-step DDPM run of the sampling code. DiT / U-DiT guide
eps channels 0-2 only (models.py forward_with_cfg); channel 3 and the learned-sigma channels
come from the conditional half; the null label is num_classes; cfg = 1 is a single plain pass.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

from udit.diffusion import create_diffusion
from udit.errors import BadValueError
from udit.models import create_model
from udit.sampling.cli import main as sample_main
from udit.sampling.generate import generate
from udit.sampling.options import SampleOptions
from udit.sampling.sampler import sample_batch

C, SIDE, NUM_CLASSES = 4, 4, 10  # latent channels, side, classes (null label = 10)
SCALE = 4.0  # cfg scale: large, so guided and unguided channels are far apart
INDICES = [0, 1, 2]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def echo(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W), labels (N,) -> (N, 2C, H, W): eps_c = x_c + 1e-3 (y+1)(c+1) and sigma value
    v_c = -1 + 0.04 (y+1)(c+1), so the label shows in every channel. eps ~ x keeps x_0 finite at
    t = 999, where the step multiplies x - eps by 1 / sqrt(alpha_bar) ~ 158."""
    channel = torch.arange(1, C + 1, dtype=x.dtype)[None, :, None, None]
    code = (y + 1).to(x.dtype)[:, None, None, None] * channel
    return torch.cat([x + 1e-3 * code, (-1 + 0.04 * code).expand_as(x)], dim=1)


class Echo(nn.Module):
    """The denoiser stand-in: echo(x, y), recording (x, t, y) of every call."""

    def __init__(self):
        super().__init__()
        self.num_classes = NUM_CLASSES
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, y):
        self.calls.append((x.clone(), t.clone(), y.clone()))
        return echo(x, y)


class Expected(Echo):
    """The guided echo written out: uncond + s (cond - uncond) on the output channels in
    `guided` (uncond = echo with the null label), cond on the others."""

    def __init__(self, guided: tuple[int, ...]):
        super().__init__()
        self.guided = torch.zeros(2 * C, dtype=torch.bool)
        self.guided[list(guided)] = True

    def forward(self, x, t, y):
        self.calls.append((x.clone(), t.clone(), y.clone()))
        cond, uncond = echo(x, y), echo(x, torch.full_like(y, NUM_CLASSES))
        guided = uncond + SCALE * (cond - uncond)
        return torch.where(self.guided[None, :, None, None], guided, cond)


EPS_0_TO_2 = (0, 1, 2)  # DiT / U-DiT: guidance on the first three channels


def _run(model: nn.Module, *, cfg_scale: float, guidance_channels=3):
    """sample_batch as generate() calls it (pixel path: no VAE), 2 respaced DDPM steps."""
    images, labels = sample_batch(
        model=model,
        diffusion=create_diffusion("2"),  # t = 999 then t = 0
        vae=None,
        indices=INDICES,
        seed=0,
        num_classes=NUM_CLASSES,
        labels="random",
        cfg_scale=cfg_scale,
        guidance_channels=guidance_channels,
        sampler="ddpm",
        eta=0.0,
        shape=(C, SIDE, SIDE),
        device=torch.device("cpu"),
    )
    return images, torch.from_numpy(labels)


def _trajectory(model: Echo) -> list[torch.Tensor]:
    """The x the sampler fed the model at each step (the first half of a doubled batch)."""
    n = len(INDICES)
    return [x[:n] for x, _, _ in model.calls]


def test_sampling_guides_eps_channels_0_to_2_with_null_label_num_classes():
    model = Echo()
    images, y = _run(model, cfg_scale=SCALE)
    n = len(INDICES)
    assert len(model.calls) == 2  # one doubled forward per step
    for x, t, labels in model.calls:
        assert x.shape[0] == 2 * n
        torch.testing.assert_close(x[n:], x[:n], rtol=0, atol=0)  # [x | x]
        torch.testing.assert_close(t[n:], t[:n], rtol=0, atol=0)
        torch.testing.assert_close(labels[:n], y, rtol=0, atol=0)  # conditional half: y
        assert labels[n:].tolist() == [NUM_CLASSES] * n  # unconditional half: the null row
    assert [int(t[0]) for _, t, _ in model.calls] == [999, 0]

    # Same sampler, same seeds, with the guided output written out: identical trajectory.
    expected = Expected(guided=EPS_0_TO_2)
    images_want, y_want = _run(expected, cfg_scale=1.0)
    torch.testing.assert_close(y_want, y, rtol=0, atol=0)
    for got, want in zip(_trajectory(model), _trajectory(expected), strict=True):
        torch.testing.assert_close(got, want)
    np.testing.assert_array_equal(images, images_want)

    # Read the guided channels off x_{t=0}: a DDPM step is channel-wise (channel c depends on
    # eps_c, v_c and its noise only), so channels 0-2 follow a run with eps 0-3 guided and
    # channel 3 a run with nothing guided; guided sigma values would change the noise scale.
    x1 = _trajectory(model)[1]
    other = {}
    for name, guided in {
        "none": (),
        "eps 0-3": (0, 1, 2, 3),
        "eps 0-2 + sigma": (0, 1, 2, 4, 5, 6, 7),
    }.items():
        other[name] = Expected(guided=guided)
        _run(other[name], cfg_scale=1.0)
        other[name] = _trajectory(other[name])[1]
    torch.testing.assert_close(x1[:, :3], other["eps 0-3"][:, :3])
    torch.testing.assert_close(x1[:, 3], other["none"][:, 3])
    assert (x1[:, :3] - other["none"][:, :3]).abs().min() > 1  # guidance moved channels 0-2
    assert (x1[:, 3] - other["eps 0-3"][:, 3]).abs().min() > 1  # a guided channel 3 would show
    sigma_shift = (x1 - other["eps 0-2 + sigma"]).abs().amax(dim=(0, 2, 3))  # (C,)
    assert (sigma_shift > 1e-2).all(), sigma_shift  # measured >= 0.03 per channel


def test_cfg_scale_one_is_a_single_plain_pass():
    model = Echo()
    _, y = _run(model, cfg_scale=1.0)
    assert len(model.calls) == 2
    for x, _, labels in model.calls:
        assert x.shape[0] == len(INDICES)  # no doubled batch
        torch.testing.assert_close(labels, y, rtol=0, atol=0)  # no null label
    # The sampler saw the model's own output: same trajectory as the plain echo written out.
    plain = Expected(guided=())
    _run(plain, cfg_scale=1.0)
    for got, want in zip(_trajectory(model), _trajectory(plain), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ----------------------------------------------------------------------------- defaults

TINY = {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 2}


@pytest.fixture(scope="module")
def latent_ckpt(tmp_path_factory):
    """A tiny 4-channel latent DiT (perturbed weights) and a tiny random VAE: with 4 eps
    channels, guiding 3 and guiding 'all' give different samples."""
    from udit.data.vae import save_tiny_vae

    root = tmp_path_factory.mktemp("latent")
    vae_dir = save_tiny_vae(out_dir=str(root / "vae"), seed=0)
    torch.manual_seed(0)
    model = create_model("DiT-S/2", input_size=8, in_channels=4, num_classes=4, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = {
        "model": "DiT-S/2",
        "model_kw": TINY,
        "num_classes": 4,
        "image_size": 32,  # factor-4 tiny VAE -> 8x8 latents
        "pixel": False,
        "vae": vae_dir,
    }
    state = model.state_dict()
    torch.save({"model": state, "ema": state, "args": args}, root / "c.pt")
    return root / "c.pt"


COMMON = {"num_samples": 2, "steps": 3, "batch_size": 2, "seed": 1, "cfg_scale": SCALE}


def _generate(ckpt, out, **kw) -> tuple[np.ndarray, dict]:
    generate(SampleOptions(checkpoint=str(ckpt), out=str(out), device="cpu", **COMMON, **kw))
    with np.load(out) as data:
        images = data["arr_0"]
    return images, json.loads(out.with_name(out.name + ".json").read_text())["config"]


def test_default_guidance_channels_are_3_in_generate_and_the_cli(latent_ckpt, tmp_path):
    three, config = _generate(latent_ckpt, tmp_path / "three.npz", guidance_channels=3)
    assert config["guidance_channels"] == 3
    every, _ = _generate(latent_ckpt, tmp_path / "all.npz", guidance_channels="all")
    assert not np.array_equal(three, every)  # the two settings are told apart below

    default, config = _generate(latent_ckpt, tmp_path / "default.npz")  # function default
    assert config["guidance_channels"] == 3
    np.testing.assert_array_equal(default, three)

    cli_out = tmp_path / "cli.npz"
    argv = ["--checkpoint", str(latent_ckpt), "--out", str(cli_out), "--device", "cpu"]
    for key, value in COMMON.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert sample_main(argv) == 0  # no --guidance-channels: the CLI default
    with np.load(cli_out) as data:
        np.testing.assert_array_equal(data["arr_0"], three)
    config = json.loads(cli_out.with_name("cli.npz.json").read_text())["config"]
    assert config["guidance_channels"] == 3


def test_guiding_more_channels_than_the_model_predicts_is_refused_naming_it(latent_ckpt, tmp_path):
    with pytest.raises(BadValueError) as err:
        _generate(latent_ckpt, tmp_path / "five.npz", guidance_channels=5)
    assert str(err.value) == (
        "--guidance-channels 5 exceeds the 4 eps channels of DiT-S/2 here; guide at most 4, "
        "or 'all'"
    )
    assert not (tmp_path / "five.npz").exists()


class NaNAt(nn.Module):
    """Predicts zeros, except NaN for the samples whose label is `bad_label`."""

    def __init__(self, bad_label: int):
        super().__init__()
        self.bad_label = bad_label

    def forward(self, x, t, y):
        out = torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])
        out[y == self.bad_label] = float("nan")
        return out


def test_samples_gone_non_finite_are_refused_naming_their_indices():
    """A model that returns NaN for some samples: sample_batch refuses the batch naming how many
    and which (by sample index), instead of writing black images that FID would score."""
    from udit.sampling.sampler import NonFiniteSamplesError, sample_labels

    labels = sample_labels(seed=0, indices=INDICES, num_classes=NUM_CLASSES, mode="random")
    bad = [i for i, y in zip(INDICES, labels.tolist(), strict=True) if y == labels[0]]
    with pytest.raises(NonFiniteSamplesError) as err:
        _run(NaNAt(int(labels[0])), cfg_scale=1.0)
    listed = ", ".join(map(str, bad))
    assert str(err.value) == (
        f"the model's samples hold NaN/inf for {len(bad)} of {len(INDICES)} samples "
        f"(indices {listed})"
    )


@pytest.mark.parametrize("count", [1, 8, 9, 20])
def test_a_non_finite_refusal_lists_at_most_eight_indices(count):
    from udit.sampling.sampler import NonFiniteSamplesError, _check_finite

    indices = list(range(100, 120))
    x = torch.zeros(20, 3, 2, 2)
    x[:count, 1, 0, 1] = float("inf")
    with pytest.raises(NonFiniteSamplesError) as err:
        _check_finite(x, indices, stage="these")
    listed = ", ".join(map(str, indices[: min(count, 8)])) + (" ..." if count > 8 else "")
    assert str(err.value) == (f"these hold NaN/inf for {count} of 20 samples (indices {listed})")
    _check_finite(torch.zeros(20, 3, 2, 2), indices, stage="these")  # finite: no error


def test_label_modes():
    """'uniform' is i mod C; 'random' is seeded per sample index (the same index gets the same
    label in any batch); another mode is refused naming both."""
    from udit.errors import BadValueError
    from udit.sampling.sampler import sample_labels

    assert sample_labels(seed=0, indices=[0, 5, 6, 11], num_classes=5, mode="uniform").tolist() == [
        0,
        0,
        1,
        1,
    ]
    whole = sample_labels(seed=3, indices=list(range(64)), num_classes=10, mode="random")
    part = sample_labels(seed=3, indices=[40, 7], num_classes=10, mode="random")
    assert part.tolist() == [int(whole[40]), int(whole[7])] and len(set(whole.tolist())) > 5
    other = sample_labels(seed=4, indices=list(range(64)), num_classes=10, mode="random")
    assert not torch.equal(whole, other)
    with pytest.raises(BadValueError) as err:
        sample_labels(seed=0, indices=[0], num_classes=5, mode="balanced")
    assert str(err.value) == "unknown label mode 'balanced'; choose 'random' or 'uniform'"


class NaNDecoder:
    """A VAE stand-in whose decoder returns NaN for the second sample: latents were finite."""

    def decode(self, z):
        out = torch.zeros(z.shape[0], 3, 2 * z.shape[2], 2 * z.shape[3])
        out[1] = float("nan")
        return type("Decoded", (), {"sample": out})()


def test_decoded_images_gone_non_finite_are_refused_naming_the_vae():
    from udit.sampling.sampler import NonFiniteSamplesError

    with pytest.raises(NonFiniteSamplesError) as err:
        sample_batch(
            model=Echo(),
            diffusion=create_diffusion("2"),
            vae=NaNDecoder(),
            indices=[7, 8, 9],
            seed=0,
            num_classes=NUM_CLASSES,
            labels="random",
            cfg_scale=1.0,
            guidance_channels=3,
            sampler="ddpm",
            eta=0.0,
            shape=(C, SIDE, SIDE),
            device=torch.device("cpu"),
        )
    assert str(err.value) == (
        "the VAE's decoded images (of finite latents) hold NaN/inf for 1 of 3 samples (indices 8)"
    )
