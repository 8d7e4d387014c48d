"""Fault injection for issue 11, part B: unsafe weights, corrupt checkpoints, torn files, bad
samples. Every expected failure goes through the command's `main(argv)`: exit 2, a message
that names the culprit, no traceback, and the good files around it byte-identical afterwards.
Recoveries (corrupt stray checkpoint, stale temp files, torn log line, failed sample run)
exit 0 and keep every verified file.

CPU only: a 1-2 block DiT of width 32 on 8-16 px images, a few sampling / training steps.
"""

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from udit import paths
from udit.data.toy import generate_toy_data
from udit.io import sha256_file
from udit.metrics import evaluate, inception, reference
from udit.models import create_model
from udit.sampling.cli import main as sample_main
from udit.training import store
from udit.training.loop import TrainOptions, with_cache_vae
from udit.training.loop import main as train_main

# --- sampling: a tiny pixel-space DiT (as tests/test_sample.py) --------------------------
IMAGE = 8
CLASSES = 4
TINY = {"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 2}
ARGS = {"model": "DiT-S/2", "model_kw": TINY, "pixel": True, "num_classes": CLASSES}
HUGE = 3e38  # finite in float32, but the sampler's arithmetic overflows to inf, then NaN

# --- training: DiT-S/2 shrunk, 16 px toy images in pixel space (as tests/test_train.py) ----
TRAIN_KW = {"hidden_size": 32, "depth": 2, "num_heads": 2}
TRAIN_SIZE = 16
N = 2  # steps of the base run (one checkpoint); recoveries continue it to 2N


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `root`."""
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


def assert_refused(code: int, capsys, *culprits) -> str:
    """Exit 2, one message naming every culprit, no traceback; returns stderr."""
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in out + err
    for culprit in culprits:
        assert str(culprit) in err, f"{culprit!r} not named in: {err}"
    return err


class Payload:
    """Unpickling it creates `marker`: what a hostile weights file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------- sampling


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = create_model("DiT-S/2", input_size=IMAGE, in_channels=3, num_classes=CLASSES, **TINY)
    with torch.no_grad():  # adaLN-Zero would make the output constant
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.state_dict()


def write_ckpt(path: Path, *, ema=None, model=None, sidecar: bool = True) -> Path:
    """A training-style checkpoint (+ the trainer's sidecar)."""
    ema = tiny_state(0) if ema is None else ema
    model = tiny_state(1) if model is None else model
    state = {"ema": ema, "model": model, "args": {**ARGS, "image_size": IMAGE}}
    torch.save(state, path)
    if sidecar:
        path.with_name(path.name + ".sha256").write_text(f"{sha256_file(path)}  {path.name}\n")
    return path


def sample_argv(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--num-samples",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


def flip_byte_inside(path: Path) -> None:
    """One changed byte in the middle (tensor data): torch.load still reads the file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def sign(path: Path) -> None:
    """A sidecar that matches the file as it is now: the file must be refused on its content."""
    path.with_name(path.name + ".sha256").write_text(f"{sha256_file(path)}  {path.name}\n")


def unsign(path: Path) -> None:
    path.with_name(path.name + ".sha256").unlink()


def truncated_no_sidecar(path: Path) -> None:
    truncate(path)
    unsign(path)


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    sign(path)


def pickled_payload(path: Path) -> None:
    torch.save({"ema": Payload(path.with_name("PWNED")), "args": ARGS}, path)
    sign(path)


def non_finite(key: str, name: str, value: float):
    def inject(path: Path) -> None:
        weights = {"ema": tiny_state(0), "model": tiny_state(1)}
        weights[key][name].view(-1)[3] = value
        write_ckpt(path, **weights)

    return inject


CHECKPOINT_FAULTS = {
    # id: (damage the good checkpoint, extra CLI args, words the message must contain)
    "sidecar-mismatch": (flip_byte_inside, [], ["does not match its sidecar", "ckpt.pt.sha256"]),
    "truncated-with-sidecar": (truncate, [], ["does not match its sidecar"]),
    "truncated-no-sidecar": (truncated_no_sidecar, [], ["cannot be loaded", "truncated"]),
    "random-bytes": (random_bytes, [], ["cannot be loaded", "not a torch checkpoint"]),
    "pickle-payload": (pickled_payload, [], ["cannot be loaded", "it pickles"]),
    "nan-ema": (
        non_finite("ema", "blocks.0.attn.qkv.weight", float("nan")),
        [],
        ["ema weights are not finite", "blocks.0.attn.qkv.weight"],
    ),
    "inf-model-weights": (
        non_finite("model", "final_layer.linear.weight", float("inf")),
        ["--weights", "model"],
        ["model weights are not finite", "final_layer.linear.weight"],
    ),
}


@pytest.mark.parametrize("fault", CHECKPOINT_FAULTS)
def test_sample_refuses_unusable_checkpoint(fault, tmp_path, capsys):
    damage, extra, words = CHECKPOINT_FAULTS[fault]
    ckpt = write_ckpt(tmp_path / "ckpt.pt")
    damage(ckpt)
    good = write_ckpt(tmp_path / "good.pt")  # a neighbour that must stay untouched
    before = snapshot(tmp_path)
    code = sample_main(sample_argv(ckpt, tmp_path / "s.npz", *extra))
    assert_refused(code, capsys, ckpt, *words)
    assert snapshot(tmp_path) == before  # no parts folder, no npz, nothing changed
    assert not (tmp_path / "PWNED").exists()  # the payload never ran
    assert sha256_file(good) == before["good.pt"]


def test_nan_in_weights_not_sampled_is_no_reason_to_refuse(tmp_path, capsys):
    ema = tiny_state(0)
    raw = tiny_state(1)
    raw["final_layer.linear.weight"][0, 0] = float("nan")  # raw weights; EMA ones are sampled
    ckpt = write_ckpt(tmp_path / "ckpt.pt", ema=ema, model=raw)
    assert sample_main(sample_argv(ckpt, tmp_path / "s.npz")) == 0
    assert (tmp_path / "s.npz").is_file()


def test_nan_samples_refused_then_corrected_rerun_proceeds(tmp_path, capsys):
    """Finite weights that overflow while sampling: refused, no image written; the parts
    folder that failed run left (options, no shard) does not block the corrected re-run."""
    ema = tiny_state(0)
    ema["final_layer.linear.bias"].fill_(HUGE)
    bad = write_ckpt(tmp_path / "bad.pt", ema=ema)
    out = tmp_path / "s.npz"
    before = snapshot(tmp_path)
    code = sample_main(sample_argv(bad, out))
    assert_refused(code, capsys, bad, "NaN/inf", "indices 0, 1", "no image was written")
    parts = tmp_path / "s.npz.parts"
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert sorted(p.name for p in parts.iterdir()) == ["config.json"]  # no shard
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("s.npz")} == before

    good = write_ckpt(tmp_path / "good.pt")  # the fix: another checkpoint, same --out
    assert sample_main(sample_argv(good, out)) == 0
    summary = json.loads((tmp_path / "s.npz.json").read_text())
    assert summary["config"]["checkpoint_sha256"] == sha256_file(good)
    assert not parts.exists()


def test_parts_with_shards_of_other_options_still_refused(tmp_path, capsys):
    """Never mix: once a shard exists, other options are refused and the shard stays as is."""
    ckpt = write_ckpt(tmp_path / "ckpt.pt")
    out = tmp_path / "s.npz"
    argv = sample_argv(ckpt, out, "--batch-size", "1", "--keep-parts")
    assert sample_main(argv) == 0
    out.unlink()  # as if the run had stopped before assembling
    before = snapshot(tmp_path)
    code = sample_main([*argv, "--seed", "99"])
    assert_refused(code, capsys, "s.npz.parts", "seed")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- evaluate


def write_reference(path: Path, *, size: int) -> Path:
    """An ADM-format reference (its statistics are never reached by these cases)."""
    images = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    stats = {"mu": np.zeros(3), "sigma": np.eye(3), "mu_s": np.zeros(3), "sigma_s": np.eye(3)}
    np.savez(path, arr_0=images, **stats)
    return path


def write_samples(path: Path, *, size: int) -> Path:
    images = np.random.default_rng(1).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    np.savez(path, arr_0=images, arr_1=np.zeros(4, np.int64))
    return path


def evaluate_argv(samples: Path, ref: Path, weights: Path, out: Path) -> list[str]:
    argv = ["--samples", str(samples), "--reference", str(ref), "--out", str(out)]
    return [*argv, "--inception-weights", str(weights), "--device", "cpu"]


def weights_torch_payload(path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2), "x": Payload(path.with_name("PWNED"))}, path)


def weights_raw_pickle_payload(path: Path) -> None:
    path.write_bytes(pickle.dumps({"fc.weight": Payload(path.with_name("PWNED"))}))


BAD_WEIGHTS = {
    "torch-save-payload": (weights_torch_payload, "it pickles"),
    "raw-pickle-payload": (weights_raw_pickle_payload, "pickle data is unreadable"),
    "random-bytes": (lambda p: p.write_bytes(np.random.bytes(2048)), "not a plain tensor"),
    "not-a-state-dict": (lambda p: torch.save([torch.zeros(2)], p), "holds a list"),
}


@pytest.mark.parametrize("kind", BAD_WEIGHTS)
def test_evaluate_refuses_unsafe_inception_weights(kind, tmp_path, capsys):
    make, words = BAD_WEIGHTS[kind]
    weights = tmp_path / "weights.pth"
    make(weights)
    samples = write_samples(tmp_path / "samples.npz", size=32)
    ref = write_reference(tmp_path / "ref.npz", size=32)
    before = snapshot(tmp_path)
    code = evaluate.main(evaluate_argv(samples, ref, weights, tmp_path / "metrics.json"))
    assert_refused(code, capsys, weights, words)
    assert not (tmp_path / "PWNED").exists()  # torch-fidelity never unpickled it
    assert snapshot(tmp_path) == before  # no metrics JSON


def test_build_reference_refuses_pickle_payload_weights(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images" / "class_0"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    weights = tmp_path / "weights.pth"
    weights_torch_payload(weights)
    before = snapshot(tmp_path)
    argv = ["--images", str(tmp_path / "images"), "--out", str(tmp_path / "ref.npz")]
    argv += ["--inception-weights", str(weights), "--image-size", "32", "--device", "cpu"]
    assert_refused(reference.main(argv), capsys, weights, "refused")
    assert not (tmp_path / "PWNED").exists()
    assert snapshot(tmp_path) == before


def test_plain_state_dict_weights_still_load(tmp_path):
    """The stand-in's format (a plain state dict with the official keys) goes through the safe
    load into torch-fidelity's extractor unchanged."""
    from udit.metrics.standin import _UninitialisedInceptionV3

    state = _UninitialisedInceptionV3().state_dict()
    path = tmp_path / "standin.pth"
    torch.save(state, path)
    extractor = inception.load_extractor(weights=path, features=(inception.POOL,))
    loaded = extractor.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_evaluate_refuses_resolution_mismatch(tmp_path, capsys):
    samples = write_samples(tmp_path / "samples.npz", size=64)
    ref = write_reference(tmp_path / "ref.npz", size=32)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"never read: the sizes are checked first")
    before = snapshot(tmp_path)
    code = evaluate.main(evaluate_argv(samples, ref, weights, tmp_path / "metrics.json"))
    assert_refused(code, capsys, samples, ref, "64x64 px", "32x32 px")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- training


def train_argv(run_dir: Path, data: Path, **extra) -> list[str]:
    args = ["--model", "DiT-S/2", "--run-dir", str(run_dir), "--images", str(data), "--pixel"]
    args += ["--image-size", str(TRAIN_SIZE), "--num-classes", "4", "--global-batch", "8"]
    args += ["--log-every", "2", "--num-workers", "0", "--device", "cpu", "--model-kw"]
    args += [f"{k}={v}" for k, v in TRAIN_KW.items()]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    generate_toy_data(out=str(root), num_classes=4, per_class=4, size=TRAIN_SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def base_run(toy, tmp_path_factory) -> Path:
    """A run stopped at step N with one checkpoint; each test continues a copy of it."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert train_main(train_argv(run, toy, total_steps=2 * N, ckpt_every=N, stop_at=N)) == 0
    return run


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def ckpt_path(run_dir: Path, step: int) -> Path:
    return run_dir / paths.CKPT_DIR / paths.checkpoint_name(step)


def test_corrupt_stray_checkpoint_and_keep_last_1(run, toy, capsys):
    """The issue's data loss: a corrupt ckpt-0009999.pt no longer pushes out the checkpoint
    resumed from and the one just written; it is moved aside, named in a warning."""
    resumed = ckpt_path(run, N)
    resumed_sha = sha256_file(resumed)
    stray = ckpt_path(run, 9999)
    stray.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.warns(UserWarning, match="moved corrupt checkpoint .*ckpt-0009999.pt"):
        code = train_main(train_argv(run, toy, total_steps=2 * N, ckpt_every=N, keep_last=1))
    assert code == 0
    assert sha256_file(resumed) == resumed_sha  # resumed from: kept, byte-identical
    assert store.verify_checkpoint(ckpt_path(run, 2 * N)) is None  # just written: kept
    assert [s for s, _ in store.list_checkpoints(run)] == [N, 2 * N]
    aside = stray.with_name(stray.name + store.CORRUPT_SUFFIX)
    assert aside.read_bytes() == b"PK\x03\x04 not a checkpoint"
    assert "Traceback" not in capsys.readouterr().err


def test_rotation_never_counts_a_corrupt_checkpoint(tmp_path):
    for step in (1, 2, 3):
        store.save_checkpoint(
            {"w": torch.full((4,), float(step))}, run_dir=tmp_path, step=step, keep_last=5
        )
    truncate(ckpt_path(tmp_path, 3))  # after its sidecar was written
    good = sha256_file(ckpt_path(tmp_path, 2))
    with pytest.warns(UserWarning, match="moved corrupt checkpoint"):
        store.save_checkpoint({"w": torch.zeros(4)}, run_dir=tmp_path, step=4, keep_last=2)
    assert [s for s, _ in store.list_checkpoints(tmp_path)] == [2, 4]  # 3 not counted
    assert sha256_file(ckpt_path(tmp_path, 2)) == good
    names = {p.name for p in (tmp_path / paths.CKPT_DIR).iterdir()}
    assert "ckpt-0000003.pt.corrupt" in names and "ckpt-0000003.pt.corrupt.sha256" in names


def test_stale_temp_files_removed_at_start(run, toy, capsys):
    ckpts = run / paths.CKPT_DIR
    stale = [
        ckpts / ".ckpt-0000004.pt.k2j3h4.tmp",
        ckpts / ".ckpt-0000004.pt.sha256.a8b7c6.tmp",
        run / ".log.jsonl.q1w2e3.tmp",
        run / ".options.json.z9x8c7.tmp",
    ]
    for path in stale:
        path.write_bytes(b"\0" * 1024)  # half a checkpoint, at paper scale gigabytes
    foreign = run / "notes.tmp"  # not a temp name of ours: left alone
    foreign.write_text("mine")
    kept = sha256_file(ckpt_path(run, N))
    # already at --stop-at: nothing to train, the start of the job still cleans up
    assert train_main(train_argv(run, toy, total_steps=2 * N, ckpt_every=N, stop_at=N)) == 0
    err = capsys.readouterr().err
    assert not any(p.exists() for p in stale)
    assert "removed 4 temp file(s)" in err and "Traceback" not in err
    assert foreign.read_text() == "mine" and sha256_file(ckpt_path(run, N)) == kept


def test_torn_log_line_does_not_block_resume(run, toy, capsys):
    log = run / paths.TRAIN_LOG
    good_lines = log.read_text()
    with open(log, "a") as f:
        f.write('{"step": 3, "loss": 0.5, "ms')  # killed mid-write: no newline, no closing brace
    assert train_main(train_argv(run, toy, total_steps=2 * N, ckpt_every=N)) == 0
    err = capsys.readouterr().err
    assert "dropped 1 unreadable line(s)" in err and "Traceback" not in err
    text = log.read_text()
    assert text.startswith(good_lines)
    assert [json.loads(line)["step"] for line in text.splitlines()] == [2, 4]


def test_train_refuses_vae_contradicting_latent_cache(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"vae": {"name": "results/data/tiny-vae"}}))
    opts = TrainOptions(
        model="DiT-S/2", run_dir=str(tmp_path / "r"), total_steps=1, latents=str(cache)
    )
    assert with_cache_vae(opts).vae == "results/data/tiny-vae"  # the default gives way
    before = snapshot(tmp_path)
    argv = ["--model", "DiT-S/2", "--run-dir", str(tmp_path / "r"), "--latents", str(cache)]
    code = train_main([*argv, "--total-steps", "1", "--vae", "other/vae", "--device", "cpu"])
    assert_refused(code, capsys, "--vae other/vae", cache, "results/data/tiny-vae")
    assert snapshot(tmp_path) == before and not (tmp_path / "r").exists()


def test_tiny_vae_latents_record_the_cache_vae(toy, tmp_path):
    """A run on tiny-VAE latents records that VAE (options.json and the checkpoint's args that
    `udit sample` decodes with), not the sd-vae-ft-ema default."""
    from udit.data import extract_latents, save_tiny_vae

    vae = save_tiny_vae(out_dir=str(tmp_path / "vae"), seed=0)
    cache = tmp_path / "cache"
    extract_latents(images=str(toy), out=str(cache), image_size=TRAIN_SIZE, vae=vae, progress=False)
    run = tmp_path / "run"
    argv = train_argv(run, toy, total_steps=1, ckpt_every=1)
    argv = [a for a in argv if a != "--pixel"]
    argv[argv.index("--images") : argv.index("--images") + 2] = ["--latents", str(cache)]
    assert train_main(argv) == 0
    assert json.loads((run / store.OPTIONS_NAME).read_text())["vae"] == vae
    assert store.load_checkpoint_state(ckpt_path(run, 1))["args"]["vae"] == vae
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tmp_path / "s.npz"
        assert sample_main(sample_argv(ckpt_path(run, 1), out)) == 0
    assert json.loads((tmp_path / "s.npz.json").read_text())["config"]["vae"] == vae


def test_each_corrupt_copy_of_a_step_is_kept_under_its_own_name(tmp_path):
    """A step written, found corrupt and moved aside three times (a retried node): three
    post-mortem copies, .corrupt, .corrupt.1, .corrupt.2, each with its own sidecar, none
    overwritten; the warning names the file, the copy and the problem."""
    directory = tmp_path / paths.CKPT_DIR
    for attempt in range(3):
        store.save_checkpoint({"w": torch.full((4,), attempt)}, run_dir=tmp_path, step=3,
                              keep_last=5)  # fmt: skip
        truncate(ckpt_path(tmp_path, 3))
        problem = store.verify_checkpoint(ckpt_path(tmp_path, 3))
        with pytest.warns(UserWarning) as caught:
            store.rotate(run_dir=tmp_path, keep_last=5)
        suffix = ".corrupt" + (f".{attempt}" if attempt else "")
        assert str(caught[0].message).startswith(
            f"moved corrupt checkpoint {ckpt_path(tmp_path, 3)} aside to ckpt-0000003.pt{suffix}:"
        )
        assert problem and str(caught[0].message).endswith(f": {problem}")
    names = sorted(p.name for p in directory.iterdir())
    copies = ["ckpt-0000003.pt.corrupt", "ckpt-0000003.pt.corrupt.1", "ckpt-0000003.pt.corrupt.2"]
    assert names == sorted(copies + [c + ".sha256" for c in copies])
    contents = {(directory / c).read_bytes() for c in copies}
    assert len(contents) == 3  # three different truncated files: none overwritten


def test_log_truncation_keeps_records_up_to_the_step_whatever_else_is_there(tmp_path, capsys):
    """A log a killed job left: lines past the resumed step go, blank lines and torn or foreign
    ones (a multi-byte character cut in half included) are dropped and counted, the records up
    to the step stay in order."""
    log = tmp_path / "log.jsonl"
    records = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    torn = '{"step": 5, "note": "\u00e9'.encode()[:-1]  # cut inside the two bytes of e-acute
    text = "\n".join([records[0], "", records[1], "[1, 2]", records[2], '{"no": "step"}'])
    log.write_bytes(text.encode() + b"\n\n" + records[3].encode() + b"\n" + torn)
    store.truncate_log(log, step=3)
    assert log.read_text().splitlines() == records[:3]
    assert capsys.readouterr().err == f"note: dropped 3 unreadable line(s) of {log} (torn write)\n"
    store.truncate_log(log, step=3)  # clean now: nothing said
    assert capsys.readouterr().err == "" and log.read_text().splitlines() == records[:3]


def test_rotation_keeps_exactly_keep_last_counting_the_protected_ones(tmp_path):
    """keep_last 2 with the file just written and the one resumed from both protected: those
    two are the two kept, older ordinary ones go (a sidecar already gone is no error), and
    rotate returns what it deleted; keep_last 0 is refused naming it."""
    run = tmp_path / "deep" / "run"  # save_checkpoint makes the folders
    for step in range(1, 6):
        store.save_checkpoint({"w": torch.zeros(1)}, run_dir=run, step=step, keep_last=10)
    sidecar = ckpt_path(run, 1).with_name(ckpt_path(run, 1).name + ".sha256")
    sidecar.unlink()  # an old checkpoint without its sidecar
    removed = store.rotate(run_dir=run, keep_last=2, protect=(ckpt_path(run, 5), ckpt_path(run, 4)))
    assert [s for s, _ in store.list_checkpoints(run)] == [4, 5]
    assert sorted(removed) == [ckpt_path(run, s) for s in (1, 2, 3)]
    with pytest.raises(ValueError, match="keep_last must be >= 1, got 0"):
        store.save_checkpoint({"w": torch.zeros(1)}, run_dir=run, step=6, keep_last=0)


class _Tripwire:
    """Unpickling one creates `path`: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_an_old_reference_holding_a_pickle_is_never_unpickled(tmp_path):
    """`udit build-reference` reads the options an existing --out was built with: an npz whose
    record is a pickled object is not ours, and its pickle never runs."""
    marker = tmp_path / "unpickled"
    out = tmp_path / "ref.npz"
    record = np.empty((), dtype=object)
    record[()] = _Tripwire(marker)
    np.savez(out, provenance_json=record, inception_sha256=np.array("x"))
    try:
        assert reference.recorded_options(out) is None
    except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        assert "allow_pickle" in str(err)
    assert not marker.exists()
