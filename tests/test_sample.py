"""`udit sample`: ADM npz layout, per-sample determinism, resume after SIGKILL, DDP, cfg, weights,
the model options a training checkpoint carries, the batch generator and the shard claim.

A tiny pixel-space DiT (8x8 RGB, 4 classes) with perturbed weights (the final layer is
zero-initialised, which would make every sample pure noise-free output) is sampled for a few
respaced steps on CPU.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from udit import distributed
from udit.cli import options_of
from udit.distributed import DistInfo
from udit.errors import UserError
from udit.models import create_model
from udit.sampling import shards
from udit.sampling.batches import Batch, batches, bind_sampler
from udit.sampling.checkpoint import build_model
from udit.sampling.cli import build_parser, main
from udit.sampling.generate import generate, resolve
from udit.sampling.options import RANGES, SampleOptions
from udit.stop import EXIT_STOPPED

IMAGE = 8  # pixels
CLASSES = 4
STEPS = 4  # respaced sampling steps: enough to exercise the chain
TINY = {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 2}
PERTURB = 0.05  # std of the noise added to every weight
REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("DiT-S/2", input_size=IMAGE, in_channels=3, num_classes=CLASSES, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(PERTURB * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A training-style checkpoint (ema != model weights) and the EMA weights as a raw state
    dict."""
    root = tmp_path_factory.mktemp("ckpt")
    ema, raw = _tiny_model(0).state_dict(), _tiny_model(1).state_dict()
    args = {
        "model": "DiT-S/2",
        "model_kw": TINY,
        "pixel": True,
        "num_classes": CLASSES,
        "image_size": IMAGE,
    }
    torch.save({"model": raw, "ema": ema, "step": 10, "args": args}, root / "train.pt")
    torch.save(ema, root / "released.pt")
    return root


def _sample(ckpt: Path, out: Path, **kw) -> dict:
    base = {"num_samples": 6, "steps": STEPS, "batch_size": 4, "device": "cpu", "seed": 3}
    generate(SampleOptions(checkpoint=str(ckpt), out=str(out), **{**base, **kw}))
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


def _adm_read_arr0(path: Path) -> np.ndarray:
    """Read arr_0 the way guided-diffusion's evaluator.py streams it: zip member, npy v1/v2 header,
    raw C-order bytes (it falls back to np.load only for other versions or fortran order)."""
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        assert version == (1, 0), f"npy header version {version}"
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert not fortran and dtype == np.uint8
        data = f.read()
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def test_npz_layout_is_what_the_adm_evaluator_reads(ckpts, tmp_path):
    out = tmp_path / "s.npz"
    arrays = _sample(ckpts / "train.pt", out, num_samples=5)
    assert sorted(arrays) == ["arr_0", "arr_1"]
    images, labels = arrays["arr_0"], arrays["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (5, IMAGE, IMAGE, 3)  # NHWC
    assert labels.dtype == np.int64 and labels.shape == (5,)
    assert labels.min() >= 0 and labels.max() < CLASSES
    np.testing.assert_array_equal(_adm_read_arr0(out), images)
    assert images.std() > 1.0, "samples are constant: the checkpoint did not reach the model"
    # Grid of 5 samples: 3 columns x 2 rows; shards are removed once the npz is assembled.
    from PIL import Image

    assert Image.open(out.with_suffix(".png")).size == (3 * IMAGE, 2 * IMAGE)
    assert not (tmp_path / "s.npz.parts").exists()
    summary = json.loads((tmp_path / "s.npz.json").read_text())
    assert summary["num_samples"] == 5 and summary["config"]["model"] == "DiT-S/2"
    assert summary["config"]["precision"] == "tf32"  # provenance: the default, as sample_ddp.py


def test_uniform_labels_cycle_over_classes(ckpts, tmp_path):
    labels = _sample(ckpts / "train.pt", tmp_path / "u.npz", labels="uniform", num_samples=6)[
        "arr_1"
    ]
    np.testing.assert_array_equal(labels, np.arange(6) % CLASSES)


def test_sample_depends_only_on_seed_and_index(ckpts, tmp_path):
    a = _sample(ckpts / "train.pt", tmp_path / "a.npz", batch_size=4, cfg_scale=1.5)
    b = _sample(ckpts / "train.pt", tmp_path / "b.npz", batch_size=1, cfg_scale=1.5)
    longer = _sample(
        ckpts / "train.pt", tmp_path / "c.npz", batch_size=3, cfg_scale=1.5, num_samples=8
    )
    other = _sample(ckpts / "train.pt", tmp_path / "d.npz", batch_size=4, cfg_scale=1.5, seed=4)
    for key in ("arr_0", "arr_1"):
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], longer[key][:6])  # more samples: same first six
    assert not np.array_equal(a["arr_0"], other["arr_0"])
    # Distinct samples within a run: each index has its own noise.
    assert len({img.tobytes() for img in a["arr_0"]}) == 6


def test_guidance_scale_changes_samples(ckpts, tmp_path):
    plain = _sample(ckpts / "train.pt", tmp_path / "p.npz", cfg_scale=1.0)
    guided = _sample(ckpts / "train.pt", tmp_path / "g.npz", cfg_scale=1.5)
    np.testing.assert_array_equal(plain["arr_1"], guided["arr_1"])  # same labels, same noise
    assert not np.array_equal(plain["arr_0"], guided["arr_0"])


def test_ema_by_default_and_released_state_dicts(ckpts, tmp_path):
    ema = _sample(ckpts / "train.pt", tmp_path / "e.npz")
    raw = _sample(ckpts / "train.pt", tmp_path / "m.npz", weights="model")
    assert not np.array_equal(ema["arr_0"], raw["arr_0"])
    # The EMA weights saved as a bare state dict (a released checkpoint) need the model named.
    released = _sample(
        ckpts / "released.pt",
        tmp_path / "r.npz",
        model="DiT-S/2",
        model_kw=TINY,
        pixel=True,
        num_classes=CLASSES,
        image_size=IMAGE,
    )
    np.testing.assert_array_equal(ema["arr_0"], released["arr_0"])


def test_ddim_is_deterministic_and_differs_from_ddpm(ckpts, tmp_path):
    ddim = _sample(ckpts / "train.pt", tmp_path / "i.npz", sampler="ddim")
    again = _sample(ckpts / "train.pt", tmp_path / "j.npz", sampler="ddim", batch_size=1)
    ddpm = _sample(ckpts / "train.pt", tmp_path / "k.npz")
    np.testing.assert_array_equal(ddim["arr_0"], again["arr_0"])
    assert not np.array_equal(ddim["arr_0"], ddpm["arr_0"])


def test_clear_errors(ckpts, tmp_path, capsys):
    base = [
        "--out",
        str(tmp_path / "x.npz"),
        "--num-samples",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
    ]
    assert main(["--checkpoint", str(ckpts / "train.pt"), "--model", "DiT-B/2", *base]) == 2
    assert "contradicts the checkpoint" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpts / "train.pt"), "--model-kw", "depth=2", *base]) == 2
    assert "--model-kw {'depth': 2} contradicts" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpts / "train.pt"), "--model-kw", "mlp_ratio=2", *base]) == 2
    assert (
        "--model-kw {'mlp_ratio': 2} contradicts" in capsys.readouterr().err
    )  # not trained with it
    # The training values (or a subset) and the model's slug are accepted.
    assert (
        main(
            [
                "--checkpoint",
                str(ckpts / "train.pt"),
                "--model",
                "dit-s-2",
                "--model-kw",
                "depth=1",
                *base,
            ]
        )
        == 0
    )
    assert main(["--checkpoint", str(ckpts / "released.pt"), "--pixel", *base]) == 2
    assert "pass --model" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), *base]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert (
        main(["--checkpoint", str(ckpts / "released.pt"), "--model", "DiT-Q/9", "--pixel", *base])
        == 2
    )
    assert "known models" in capsys.readouterr().err


def test_parts_made_with_other_options_are_refused(ckpts, tmp_path):
    out = tmp_path / "s.npz"
    _sample(ckpts / "train.pt", out, num_samples=2, keep_parts=True)
    with pytest.raises(ValueError, match="seed"):
        _sample(ckpts / "train.pt", out, num_samples=2, seed=99)
    out.unlink()  # the shards alone: they name exactly the option that differs
    with pytest.raises(ValueError, match=r"holds samples made with other options \(seed differ\)"):
        _sample(ckpts / "train.pt", out, num_samples=2, seed=99)
    with pytest.raises(ValueError, match=r"other options \(seed, steps differ\)"):
        _sample(ckpts / "train.pt", out, num_samples=2, seed=99, steps=STEPS + 1)


def test_rerun_of_a_finished_job_is_a_no_op(ckpts, tmp_path, capsys):
    out = tmp_path / "s.npz"
    _sample(ckpts / "train.pt", out, num_samples=3)
    stamp = out.stat().st_mtime_ns
    assert "nothing to do" not in capsys.readouterr().err  # the first run had work to do
    _sample(ckpts / "train.pt", out, num_samples=3)
    assert out.stat().st_mtime_ns == stamp
    assert f"{out} already holds these 3 samples; nothing to do" in capsys.readouterr().err


def _cli(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--num-samples",
        "8",
        "--steps",
        str(STEPS),
        "--seed",
        "3",
        "--device",
        "cpu",
        *extra,
    ]


def test_resume_after_sigkill_matches_an_uninterrupted_run(ckpts, tmp_path):
    ckpt = ckpts / "train.pt"
    reference = _sample(ckpt, tmp_path / "ref.npz", num_samples=8, batch_size=8)
    out = tmp_path / "killed.npz"
    parts = tmp_path / "killed.npz.parts"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "udit.sampling",
            *_cli(ckpt, out, "--batch-size", "2", "--pause-after-shard", "30"),
        ],
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(parts.glob("shard-*.npz"))) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard written within 60 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("shard-*.npz")}
    assert 1 <= len(finished) < 4

    resumed = _sample(ckpt, out, num_samples=8, batch_size=2, keep_parts=True)
    for name, stamp in finished.items():  # finished shards were kept, not recomputed
        assert (parts / name).stat().st_mtime_ns == stamp
    assert len(list(parts.glob("shard-*.npz"))) == 4
    for key in ("arr_0", "arr_1"):
        np.testing.assert_array_equal(resumed[key], reference[key])


def test_stop_signal_ends_at_a_shard_boundary_and_resumes(ckpts, tmp_path):
    """SIGUSR1 while a shard is pending: that shard is finished, the job exits EXIT_STOPPED,
    and the same command run again makes the rest: the same samples as an uninterrupted run."""
    ckpt = ckpts / "train.pt"
    reference = _sample(ckpt, tmp_path / "ref.npz", num_samples=8, batch_size=8)
    out, parts = tmp_path / "stopped.npz", tmp_path / "stopped.npz.parts"
    cli = [sys.executable, "-m", "udit.sampling", *_cli(ckpt, out, "--batch-size", "2")]
    proc = subprocess.Popen(
        [*cli, "--pause-after-shard", "2"],
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(parts.glob("shard-*.npz")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard written within 60 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=60) == EXIT_STOPPED
    assert "SIGUSR1: stopped after 2 of this rank's 8 samples" in proc.stderr.read().decode()
    assert len(list(parts.glob("shard-*.npz"))) == 1 and not out.exists()
    again = subprocess.run(cli, env=SUBPROCESS_ENV, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    with np.load(out) as resumed:
        for key in ("arr_0", "arr_1"):
            np.testing.assert_array_equal(resumed[key], reference[key])


@pytest.mark.slow
def test_two_processes_match_one(ckpts, tmp_path):
    ckpt = ckpts / "train.pt"
    reference = _sample(ckpt, tmp_path / "one.npz", num_samples=8, batch_size=8)
    out = tmp_path / "two.npz"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "udit.sampling",
        *_cli(ckpt, out, "--batch-size", "3", "--keep-parts"),
    ]
    result = subprocess.run(
        cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shards = [
        np.load(p)["indices"].tolist() for p in sorted((tmp_path / "two.npz.parts").glob("shard-*"))
    ]
    assert sorted(shards) == [[0, 2, 4], [1, 3, 5], [6], [7]]  # rank r takes r, r + 2, ...
    with np.load(out) as two:
        for key in ("arr_0", "arr_1"):
            np.testing.assert_array_equal(two[key], reference[key])


def test_latent_model_is_decoded_by_the_vae(tmp_path):
    """Latent space: a tiny random AutoencoderKL (real diffusers, factor 4)
    decodes z / LATENT_SCALE."""
    from udit.data.vae import save_tiny_vae

    vae_dir = save_tiny_vae(out_dir=str(tmp_path / "vae"), seed=0)
    side = 8  # latents of 32-px images through the factor-4 tiny VAE
    torch.manual_seed(0)
    model = create_model("DiT-S/2", input_size=side, in_channels=4, num_classes=CLASSES, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(PERTURB * torch.randn_like(p))
    args = {
        "model": "DiT-S/2",
        "model_kw": TINY,
        "num_classes": CLASSES,
        "image_size": 4 * side,
        "pixel": False,
        "vae": vae_dir,
    }
    torch.save(
        {"model": model.state_dict(), "ema": model.state_dict(), "args": args}, tmp_path / "c.pt"
    )
    arrays = _sample(tmp_path / "c.pt", tmp_path / "z.npz", num_samples=3)
    assert arrays["arr_0"].shape == (3, 4 * side, 4 * side, 3) and arrays["arr_0"].dtype == np.uint8
    summary = json.loads((tmp_path / "z.npz.json").read_text())
    assert summary["config"]["vae_fingerprint"]["weights_sha256"]
    with pytest.raises(ValueError, match="pixel"):  # the checkpoint was trained on latents
        _sample(tmp_path / "c.pt", tmp_path / "p.npz", pixel=True)


def test_damaged_shard_is_redone(ckpts, tmp_path, capsys):
    out = tmp_path / "s.npz"
    first = _sample(ckpts / "train.pt", out, num_samples=5, batch_size=2, keep_parts=True)
    shards_made = sorted((tmp_path / "s.npz.parts").glob("shard-*.npz"))  # 3: [0 1] [2 3] [4]
    for shard in shards_made[:2]:  # truncated, e.g. by a full disk after the rename
        shard.write_bytes(shard.read_bytes()[:100])
    kept = {p: p.stat().st_mtime_ns for p in shards_made[2:]}
    out.unlink()
    capsys.readouterr()
    # another batch size: the redone shards get other names, so the damaged ones must go
    again = _sample(ckpts / "train.pt", out, num_samples=5, batch_size=3, keep_parts=True)
    err = capsys.readouterr().err
    assert f"warning: unreadable shard {shards_made[0].name} will be redone: " in err
    for key in ("arr_0", "arr_1"):
        np.testing.assert_array_equal(first[key], again[key])
    # only the damaged shards were redone: the readable one after them was not taken as missing
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_u_dit_samples_are_batch_invariant(tmp_path):
    """The U-shaped family (downsampled attention, re-parameterised FFN in eval mode) through the
    same path, from a training-style checkpoint whose model_kw came from JSON (lists, not
    tuples)."""
    kw = {"hidden_size": 16, "num_heads": 2, "depths": [1, 1, 1, 1, 1]}
    torch.manual_seed(0)
    model = create_model("U-DiT-S", input_size=IMAGE, in_channels=3, num_classes=CLASSES, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(PERTURB * torch.randn_like(p))
    args = {
        "model": "U-DiT-S",
        "model_kw": kw,
        "num_classes": CLASSES,
        "image_size": IMAGE,
        "pixel": True,
    }
    torch.save(
        {"model": model.state_dict(), "ema": model.state_dict(), "args": args}, tmp_path / "u.pt"
    )
    one = _sample(tmp_path / "u.pt", tmp_path / "a.npz", batch_size=1, cfg_scale=1.5, num_samples=4)
    four = _sample(
        tmp_path / "u.pt", tmp_path / "b.npz", batch_size=4, cfg_scale=1.5, num_samples=4
    )
    np.testing.assert_array_equal(one["arr_0"], four["arr_0"])
    assert one["arr_0"].std() > 1.0


def test_pixels_to_uint8_as_dit_sample_ddp():
    """clamp(127.5 x + 128, 0, 255) then truncation: 0 -> 128 (not 127), -1 -> 0, 1 -> 255."""
    from udit.sampling.sampler import to_uint8

    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.001, 0.5, 1.0, 3.0], dtype=torch.float64)
    assert to_uint8(x).tolist() == [0, 0, 64, 128, 128, 191, 255, 255]
    assert to_uint8(x).dtype == torch.uint8


# ----------------------------------------------------------------------------- model options


def _argv(ckpt: Path, out: Path, *extra: str) -> list[str]:
    base = ["--num-samples", "3", "--steps", "2", "--batch-size", "3", "--device", "cpu"]
    return ["--checkpoint", str(ckpt), "--out", str(out), *base, *extra]


def test_options_from_a_training_checkpoint_take_its_model_fields(ckpts, tmp_path):
    """No model flag: the model, its kw, classes, size and space are the checkpoint's "args"."""
    args = build_parser().parse_args(_argv(ckpts / "train.pt", tmp_path / "s.npz"))
    opts = options_of(args, SampleOptions)
    assert {k: v for k, v in opts.given_model().items() if v} == {}  # nothing given
    state, run = resolve(opts, torch.device("cpu"))
    assert run.model == {
        "model": "DiT-S/2",
        "model_kw": TINY,
        "num_classes": CLASSES,
        "image_size": IMAGE,
        "pixel": True,
        "vae": None,  # pixel space: no VAE, whatever the default
    }
    assert run.shape == (3, IMAGE, IMAGE) and run.vae is None
    assert {k: run.config[k] for k in run.model} == run.model  # the shard config records them
    assert state["args"]["model"] == "DiT-S/2"


@pytest.mark.parametrize(
    ("flag", "value", "recorded"),
    [
        ("--model", "DiT-B/2", "model='DiT-S/2'"),
        ("--model-kw", "depth=2", "model_kw="),
        ("--num-classes", "10", f"num_classes={CLASSES}"),
        ("--image-size", "16", f"image_size={IMAGE}"),
    ],
)
def test_a_model_flag_that_differs_from_a_training_checkpoint_is_refused(
    ckpts, tmp_path, capsys, flag, value, recorded
):
    out = tmp_path / "s.npz"
    assert main(_argv(ckpts / "train.pt", out, flag, value)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"udit sample: error: {flag} ")
    assert "contradicts the checkpoint" in lines[0] and recorded in lines[0]
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_model_flags_equal_to_a_training_checkpoint_are_accepted(ckpts, tmp_path):
    """Older command lines (the DAG sent every model flag) keep working: equal values, the
    model's slug, a subset of the trained model_kw."""
    plain = tmp_path / "plain.npz"
    assert main(_argv(ckpts / "train.pt", plain)) == 0
    equal = tmp_path / "equal.npz"
    flags = ["--model", "dit-s-2", "--model-kw", "depth=1", "hidden_size=32", "--pixel"]
    flags += ["--num-classes", str(CLASSES), "--image-size", str(IMAGE)]
    assert main(_argv(ckpts / "train.pt", equal, *flags)) == 0
    with np.load(plain) as a, np.load(equal) as b:
        for key in ("arr_0", "arr_1"):
            np.testing.assert_array_equal(a[key], b[key])
    configs = [json.loads(Path(f"{p}.json").read_text())["config"] for p in (plain, equal)]
    assert configs[0] == configs[1]


def test_options_json_is_the_same_as_flags(ckpts, tmp_path):
    """What a DAG job passes (--options, typed JSON) samples what the same flags sample."""
    flags, options = tmp_path / "flags.npz", tmp_path / "options.npz"
    assert main(_argv(ckpts / "train.pt", flags, "--cfg-scale", "1.5", "--seed", "7")) == 0
    document = json.dumps({"cfg_scale": 1.5, "seed": 7, "model_kw": {"depth": 1}})
    assert main(_argv(ckpts / "train.pt", options, "--options", document)) == 0
    with np.load(flags) as a, np.load(options) as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])


# ----------------------------------------------------------------------------- batches, shards


def test_batches_are_the_same_samples_whatever_the_batch_size(ckpts):
    """The generator over sample_batch: any chunking of the same indices (a rank's share is
    not contiguous) gives the same images and labels, in the order of the indices."""
    opts = SampleOptions(checkpoint="-", out="-.npz", steps=STEPS, seed=3, cfg_scale=1.5)
    state = torch.load(ckpts / "train.pt", weights_only=True)
    model_options = {"model": "DiT-S/2", "model_kw": TINY, "num_classes": CLASSES}
    net = build_model(
        checkpoint=state,
        options=model_options,
        in_channels=3,
        input_size=IMAGE,
        weights="ema",
        device=torch.device("cpu"),
    )
    draw = bind_sampler(
        opts,
        model=net,
        vae=None,
        shape=(3, IMAGE, IMAGE),
        num_classes=CLASSES,
        device=torch.device("cpu"),
    )
    indices = [0, 2, 3, 5, 6]
    runs = {}
    for size in (1, 2, 3, 5, 8):
        got = list(batches(draw, indices, size))
        assert [len(b.indices) for b in got] == [min(size, 5 - k) for k in range(0, 5, size)]
        assert [i for b in got for i in b.indices] == indices
        runs[size] = (
            np.concatenate([b.images for b in got]),
            np.concatenate([b.labels for b in got]),
        )
    for images, labels in runs.values():
        np.testing.assert_array_equal(images, runs[1][0])
        np.testing.assert_array_equal(labels, runs[1][1])
    assert runs[1][0].shape == (5, IMAGE, IMAGE, 3) and runs[1][0].dtype == np.uint8
    assert len({img.tobytes() for img in runs[1][0]}) == 5  # each index its own noise


def _shard(parts: Path, indices: list[int]) -> None:
    images = np.zeros((len(indices), 2, 2, 3), dtype=np.uint8)
    shards.write_shard(parts, Batch(indices, images, np.zeros(len(indices), dtype=np.int64)))


def test_claim_deals_the_missing_indices_over_the_ranks(tmp_path, monkeypatch):
    """Rank r computes missing[r::W]; indices a shard holds are not redone, and shards of a
    longer earlier run (indices past num_samples) do not count."""
    monkeypatch.setattr(distributed, "barrier", lambda info: None)  # ranks called in turn here
    ranks = [
        DistInfo(rank=r, world_size=2, local_rank=r, device=torch.device("cpu")) for r in (0, 1)
    ]
    parts, config = tmp_path / "s.npz.parts", {"seed": 3}

    def claims(num_samples: int) -> list:
        return [
            shards.claim(parts=parts, config=config, num_samples=num_samples, info=info)
            for info in ranks
        ]

    assert claims(7) == [([0, 2, 4, 6], 7), ([1, 3, 5], 7)]
    _shard(parts, [1, 2])
    assert claims(7) == [([0, 4, 6], 5), ([3, 5], 5)]
    _shard(parts, [5, 6, 7, 8])  # from a run that asked for 9 samples
    assert claims(6) == [([0, 4], 3), ([3], 3)]
    assert claims(9) == [([0, 4], 3), ([3], 3)]
    with pytest.raises(ValueError, match="seed"):  # never mixed with other options
        shards.claim(parts=parts, config={"seed": 4}, num_samples=9, info=ranks[0])


def test_fewer_samples_reuse_the_shards_of_a_longer_run(ckpts, tmp_path):
    out = tmp_path / "s.npz"
    longer = _sample(ckpts / "train.pt", out, num_samples=6, batch_size=3, keep_parts=True)
    out.unlink()
    made = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s.npz.parts").glob("shard-*")}
    shorter = _sample(ckpts / "train.pt", out, num_samples=4, batch_size=3, keep_parts=True)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s.npz.parts").glob("shard-*")}
    assert after == made  # nothing recomputed
    for key in ("arr_0", "arr_1"):
        np.testing.assert_array_equal(shorter[key], longer[key][:4])


# --- settings the other tests leave at their defaults (mutation testing found them) ----------


def test_bf16_runs_the_network_alone_in_bf16_and_tf32_is_fp32_on_a_cpu(ckpts, tmp_path):
    """Under bf16 only the network runs in bf16: guided samples stay close to fp32's but are not
    the same numbers; TF32 is a CUDA matmul mode, so on a CPU it is fp32 exactly. A tf32 run
    sent through the bf16 wrapper, or a bf16 run that lost its wrapper or the model's class count
    (the guidance null class), fails here."""
    runs = {
        p: _sample(ckpts / "train.pt", tmp_path / f"{p}.npz", precision=p, cfg_scale=1.5)["arr_0"]
        for p in ("fp32", "tf32", "bf16")
    }
    np.testing.assert_array_equal(runs["tf32"], runs["fp32"])
    diff = np.abs(runs["bf16"].astype(int) - runs["fp32"].astype(int))
    assert diff.max() > 0  # bf16 really ran
    assert diff.mean() < 8  # of 255: the same samples, rounded differently


def test_a_missing_shard_is_named_with_the_count_and_first_index(tmp_path):
    parts = tmp_path / "s.npz.parts"
    _shard(parts, [0, 1, 3])
    with pytest.raises(RuntimeError, match=r"2 of 5 samples have no shard .*first missing index 2"):
        shards.assemble(parts=parts, num_samples=5)
    images, labels = shards.assemble(parts=parts, num_samples=2)
    assert images.shape == (2, 2, 2, 3) and labels.dtype == np.int64


def test_the_summary_records_shape_and_grid_and_the_run_says_what_it_wrote(ckpts, tmp_path, capsys):
    out = tmp_path / "s.npz"
    _sample(ckpts / "train.pt", out)
    summary = json.loads((tmp_path / "s.npz.json").read_text())
    assert summary["shape"] == [6, IMAGE, IMAGE, 3] and summary["grid"] == "s.png"
    err = capsys.readouterr().err
    assert f"wrote {out} arr_0 (6, {IMAGE}, {IMAGE}, 3) uint8, arr_1 (6,) int64" in err


def test_free_space_for_the_npz_and_its_shards_is_checked_first(ckpts, tmp_path, monkeypatch):
    """N samples of S x S x 3 bytes, plus as many again in shards: 2 x 6 x 3 x 8^2 = 2304 bytes.
    One byte less free: refused before any work; exactly that: it runs."""
    import shutil

    need = 2 * 6 * 3 * IMAGE**2
    real = shutil.disk_usage

    def usage(free):
        return lambda path: real(path)._replace(free=free)

    monkeypatch.setattr(shutil, "disk_usage", usage(need - 1))
    with pytest.raises(OSError, match=r"not enough free space for 6 samples \(2\.2 KB needed"):
        _sample(ckpts / "train.pt", tmp_path / "a.npz")
    assert not (tmp_path / "a.npz.parts").exists()
    monkeypatch.setattr(shutil, "disk_usage", usage(need))
    assert _sample(ckpts / "train.pt", tmp_path / "a.npz")["arr_0"].shape[0] == 6


def test_a_grid_path_holding_another_file_is_not_replaced(ckpts, tmp_path):
    """--grid is replaced only when it is a PNG (an earlier run's grid); any other file there
    is refused, named, and kept."""
    grid = tmp_path / "notes.png"
    grid.write_text("my notes, not a grid")
    refused = rf"^--grid {re.escape(str(grid))} exists and is not a result of this command"
    with pytest.raises(Exception, match=refused):
        _sample(ckpts / "train.pt", tmp_path / "s.npz", grid=str(grid))
    assert grid.read_text() == "my notes, not a grid"
    _sample(ckpts / "train.pt", tmp_path / "s.npz", grid=str(grid), overwrite=True)  # as it says
    assert grid.read_bytes().startswith(b"\x89PNG")


def test_overwrite_clears_the_shards_of_other_options(ckpts, tmp_path):
    """--overwrite over a finished result whose OUT.parts/ (kept) holds shards of other options:
    those shards go first, and the new result equals a fresh run of the new options."""
    out = tmp_path / "s.npz"
    _sample(ckpts / "train.pt", out, keep_parts=True)
    guided = _sample(ckpts / "train.pt", out, cfg_scale=1.5, overwrite=True, keep_parts=True)
    fresh = _sample(ckpts / "train.pt", tmp_path / "f.npz", cfg_scale=1.5)
    np.testing.assert_array_equal(guided["arr_0"], fresh["arr_0"])


def test_a_summary_of_another_file_or_a_broken_one_does_not_make_out_ours(ckpts, tmp_path):
    """OUT.json marks a finished OUT only when it names OUT: a result copied under another name
    (its summary says s.npz) is not taken as this command's t.npz, nor is OUT with a summary
    that is not JSON."""
    import shutil

    from udit.errors import UserError

    _sample(ckpts / "train.pt", tmp_path / "s.npz")
    for suffix in ("", ".json"):
        shutil.copy(tmp_path / f"s.npz{suffix}", tmp_path / f"t.npz{suffix}")
    with pytest.raises(UserError, match=r"^--out .*t\.npz exists and is not a result of this"):
        _sample(ckpts / "train.pt", tmp_path / "t.npz")
    (tmp_path / "s.npz.json").write_text("{not json")  # a broken record: not ours either
    with pytest.raises(UserError, match="is not a result of this command"):
        _sample(ckpts / "train.pt", tmp_path / "s.npz")


def test_parts_without_or_with_a_broken_options_record_are_refused_by_name(ckpts, tmp_path):
    """OUT.parts/ whose config.json is gone, or not JSON: its shards' options are unknown, so
    they are refused (never mixed in), with the folder and the fix named."""
    from udit.errors import UserError

    out = tmp_path / "s.npz"
    _sample(ckpts / "train.pt", out, keep_parts=True)
    out.unlink()
    record = tmp_path / "s.npz.parts" / shards.CONFIG_NAME
    record.write_text("{not json")
    with pytest.raises(UserError, match=r"sample shard options.*delete .*s\.npz\.parts"):
        _sample(ckpts / "train.pt", out)
    record.unlink()
    with pytest.raises(UserError, match=rf"holds shards but no {shards.CONFIG_NAME}.*--out"):
        _sample(ckpts / "train.pt", out)


def test_a_killed_runs_temp_files_in_the_parts_folder_are_removed(ckpts, tmp_path):
    """A run killed inside atomic_open leaves `.shard-*.npz.*.tmp` in OUT.parts/; the next run
    removes it (the training store's own temp names would not match it)."""
    out = tmp_path / "s.npz"
    _sample(ckpts / "train.pt", out, keep_parts=True)
    out.unlink()
    stale = tmp_path / "s.npz.parts" / ".shard-r0-0000000.npz.abc123.tmp"
    stale.write_bytes(b"half a shard")
    _sample(ckpts / "train.pt", out, keep_parts=True)
    assert not stale.exists()


@pytest.mark.parametrize("name", sorted(RANGES))
def test_sample_options_from_python_refuse_each_value_past_its_range(name, tmp_path):
    """SampleOptions built in Python (the DAG's job runner, a notebook) get the checks the CLI
    applies while parsing: one below each range's lower bound is refused naming the flag,
    and guidance channels must be a positive int or 'all'."""
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    allowed = RANGES[name]
    below = allowed.low - 1 if allowed.kind == "int" else allowed.low - 0.5
    opts = SampleOptions(checkpoint=str(ckpt), out=str(tmp_path / "s.npz"))
    opts.validate()  # the defaults pass
    with pytest.raises(UserError, match=f"^--{name.replace('_', '-')} must be "):
        replace(opts, **{name: below}).validate()
    for channels in (0, 2.5, "3.5"):
        with pytest.raises(UserError, match="--guidance-channels must be a positive integer"):
            replace(opts, guidance_channels=channels).validate()
    assert replace(opts, guidance_channels="3").guidance_channels == 3  # a config's string


def test_a_garbled_sidecar_is_a_mismatch_not_a_crash(tmp_path):
    """A .sha256 sidecar with bytes that are not text is a sidecar that disagrees: refused with
    the checkpoint's name, not a UnicodeDecodeError."""
    from udit.sampling.checkpoint import UnusableCheckpointError, checkpoint_sha256

    ckpt = tmp_path / "0000008.pt"
    ckpt.write_bytes(b"weights")
    (tmp_path / "0000008.pt.sha256").write_bytes(b"\xff\xfe\x00garbled")
    with pytest.raises(UnusableCheckpointError) as err:
        checkpoint_sha256(ckpt)
    assert str(err.value).startswith(f"checkpoint {ckpt} does not match its sidecar 0000008.pt")


def test_official_checkpoints_record_their_options_as_a_namespace():
    """DiT / U-DiT train.py save `args` as an argparse Namespace: its model fields are read like
    a dict's; anything else that is not a mapping is refused by name."""
    import argparse

    from udit.errors import BadValueError
    from udit.sampling.checkpoint import checkpoint_options

    ns = argparse.Namespace(model="U-DiT-B", image_size=256, num_classes=1000, epochs=80)
    got = checkpoint_options({"args": ns})
    assert got == checkpoint_options({"args": vars(ns)}) and got["model"] == "U-DiT-B"
    assert "epochs" not in got
    with pytest.raises(BadValueError) as err:
        checkpoint_options({"args": [1, 2]})
    assert str(err.value) == (
        "the checkpoint's 'args' is a list, not the options of a training run; it is damaged "
        "or not a training checkpoint"
    )


@pytest.mark.parametrize(("channels", "ok"), [(1, True), (3, True), ("all", True), (0, False)])
def test_guidance_may_steer_a_single_channel(channels, ok, tmp_path):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")
    opts = SampleOptions(checkpoint=str(ckpt), out=str(tmp_path / "s.npz"))
    opts = replace(opts, guidance_channels=channels)
    if ok:
        opts.validate()
    else:
        with pytest.raises(UserError, match="guidance"):
            opts.validate()
