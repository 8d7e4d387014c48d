"""Every case of the December 2026 hostile-input note (issue 19), with the outcome the
guarantees now require. `pytest -k A6` runs one case: the test ids are the note's ids.

shared/notes/hostile-inputs-2026-12.md lists 82 hostile inputs and faults tried against the
`udit` CLI (A evaluate, B sample, C train, D disk / permissions / symlinks, F signals,
I import-features, X images, V VAE folders, R report, P/G plan and configs, S/Q Snakemake).
Each is re-run here through the command's `main(argv)`; a separate process only where the case
needs one: a signal, a second writer, Snakemake, dropped root capabilities, or a memory cap
around a case that once exhausted memory. Every case must end in one of two ways:

  refused  exit 2 (75 for a stopped train, 130 for Ctrl-C elsewhere), exactly one
           `udit <cmd>: error:` line (argparse's `argument --flag:` one for a range) naming the
           culprit (file, flag or value), no traceback, every input byte-identical afterwards
           (SHA-256 snapshots), no partial output and no temp file left;
  handled  exit 0 with the correct result, compared with a clean run where there is one.

Sizes are scaled down from the note wherever only the mechanism matters (each case says so):
16 px toy images, a width-32 DiT, the tiny VAE, one stand-in Inception per module. Disk full
and read-only use a real tmpfs (root only, as in CI); mode 000 drops root's DAC capabilities.
"""

import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file
from test_bad_inputs_faults import Payload, sample_argv, snapshot, tiny_state, write_ckpt

from udit import outputs
from udit import plan as plan_cli
from udit.cli import main as udit_main
from udit.data import features, latents, toy
from udit.data.vae import save_tiny_vae
from udit.io import sha256_file
from udit.metrics import evaluate, reference, standin
from udit.report import main as report_main
from udit.sampling.cli import main as sample_main
from udit.training.loop import main as train_main

ROOT = Path(__file__).resolve().parents[1]
PAPER = (ROOT / "config" / "paper.yaml").read_text()
SMOKE_CONFIG = ROOT / "config" / "smoke.yaml"
SMOKE = SMOKE_CONFIG.read_text()
SIZE = 16  # px of every toy image; the tiny VAE makes 4x4 latents of them
MODEL_KW = ("hidden_size=32", "depth=2", "num_heads=2")  # DiT-S/2 shrunk, as the note's run
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MEMORY_CAP = 6_000_000_000  # bytes of address space for the cases that once exhausted memory
HUNG_S = 120  # the note's verdict HANG: no exit within 120 s

# A `udit` command in a fresh interpreter. argv: HOOK PAUSE COMMAND ARGS...; HOOK 'module.attr'
# (or '-') is wrapped to print 'HOOK attr' on stderr when entered and sleep PAUSE s after it
# returns, so a test can signal or kill the command at a known point of its work.
CHILD = """
import importlib, signal, sys, time
# started from a script, SIGINT may arrive ignored: give the command Python's own Ctrl-C
signal.signal(signal.SIGINT, signal.default_int_handler)
hook, pause, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
if hook != "-":
    owner_name, name = hook.rsplit(".", 1)
    owner = importlib.import_module(owner_name)
    original = getattr(owner, name)

    def announced(*args, **kwargs):
        print("HOOK " + name, file=sys.stderr, flush=True)
        result = original(*args, **kwargs)
        time.sleep(pause)
        return result

    setattr(owner, name, announced)
from udit.cli import main
sys.exit(main(argv))
"""

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------- outcomes


@dataclass
class Ran:
    code: int | str
    out: str
    err: str

    def tail(self) -> str:
        return f"exit {self.code}; stderr ...{self.err[-1500:]}; stdout ...{self.out[-400:]}"


def refused(ran: Ran, prog: str, *culprits, code: int = 2) -> str:
    """Exit `code`, exactly one `prog: error:` line, every culprit named, no traceback;
    -> the error line. (A progress bar's last state may precede it on its terminal line.)"""
    assert ran.code == code, ran.tail()
    assert "Traceback" not in ran.out + ran.err, ran.tail()
    mark = f"{prog}: error:"
    assert ran.err.count(mark) == 1, f"{ran.err.count(mark)} '{mark}' lines; {ran.tail()}"
    for culprit in culprits:
        assert str(culprit) in ran.err, f"{str(culprit)!r} is not named; {ran.tail()}"
    return mark + ran.err.split(mark, 1)[1].split("\n", 1)[0]


def handled(ran: Ran) -> Ran:
    assert ran.code == 0, ran.tail()
    assert "Traceback" not in ran.out + ran.err, ran.tail()
    return ran


def temp_files(root: Path) -> list[str]:
    """Temp files of an atomic write (`.<name>.<random>.tmp`) or a folder save under `root`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp"))


def digests(*paths: Path) -> list[str]:
    return [sha256_file(p) for p in paths]


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old  # the edit must hit: a config change could make it miss
    return text.replace(old, new)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Case:
    """What a case function gets: its scratch folder, the module's fixtures by name (built
    only for the cases that use them) and in-process command calls."""

    def __init__(self, request, tmp: Path, capsys):
        self.request, self.tmp, self.capsys = request, tmp, capsys

    def fx(self, name: str):
        return self.request.getfixturevalue(name)

    def call(self, main, *argv) -> Ran:
        """`main(argv)` of a command; argparse's SystemExit becomes the exit code."""
        self.capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        out, err = self.capsys.readouterr()
        return Ran(code, out, err)


CASES = []


def case(case_id: str, *marks):
    """Register `check(t: Case)` as test_case[<case_id>]; case_id starts with the note's id."""

    def register(check):
        CASES.append(pytest.param(check, id=case_id, marks=marks))
        return check

    return register


@pytest.mark.parametrize("check", CASES)
def test_case(check, request, tmp_path, capsys):
    check(Case(request, tmp_path, capsys))


def test_every_case_of_the_note_has_a_test():
    note_ids = [f"A{i}" for i in range(1, 9)] + [f"B{i}" for i in range(1, 11)]
    note_ids += [f"C{i}" for i in range(1, 14)] + [f"D{i}" for i in range(1, 10)]
    note_ids += [f"F{i}" for i in range(1, 8)] + [f"I{i}" for i in range(1, 5)]
    note_ids += [f"X{i}" for i in range(1, 9)] + [f"V{i}" for i in range(1, 4)]
    note_ids += ["R1", "R2a", "R2b", "R2c", "R2d", "R3", "P1"] + [f"G{i}" for i in range(1, 11)]
    note_ids += ["S1", "S2", "Q1"]
    ids = [param.id.split("-")[0] for param in CASES]
    assert len(note_ids) == 82 and sorted(ids) == sorted(note_ids)


# ----------------------------------------------------------------------------- processes


class Child:
    """A command in its own process whose output is read while it runs, so the test can wait
    for its progress before signalling it."""

    def __init__(self, cmd: list[str], *, cwd: Path, env: dict | None = None):
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=env or CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        while line := stream.readline():  # text mode: tqdm's \r ends a line too
            lines.append(line)

    def hooks(self) -> int:
        return "".join(self.err).count("HOOK ")  # a progress bar may precede it on its line

    def wait_for(self, ready, what: str, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the process ended before {what}: {self.finish().tail()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} within {timeout} s: {self.finish().tail()}")
            time.sleep(0.05)

    def finish(self, timeout: float = HUNG_S) -> Ran:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = f"none: still running after {timeout} s (a hang), killed"
        for reader in self.readers:
            reader.join(10)
        return Ran(code, "".join(self.out), "".join(self.err))


def udit(*argv, hook: str = "-", pause: float = 0.0) -> list[str]:
    """The command line of `udit <argv>` in a fresh interpreter (see CHILD for `hook`)."""
    return [sys.executable, "-c", CHILD, hook, str(pause), *map(str, argv)]


def snakemake(workdir: Path, *args) -> list[str]:
    snakefile = str(ROOT / "Snakefile")
    return [sys.executable, "-m", "snakemake", "-s", snakefile, "-d", str(workdir), *map(str, args)]


def run_capped(cmd: list[str], *, cwd: Path, timeout: float = HUNG_S) -> tuple[Ran, float]:
    """Run `cmd` to its end under MEMORY_CAP bytes of address space; -> (outcome, seconds).
    A case that once took 22 GB must not take the shared machine down if it regresses."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=CHILD_ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=cap,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else ""
        pytest.fail(f"no exit within {timeout} s (a hang): ...{stderr[-1500:]}")
    return Ran(proc.returncode, proc.stdout, proc.stderr), time.monotonic() - start


def without_dac_override() -> list[str]:
    """Prefix that runs a command as root without the capabilities that ignore mode 000 (the
    note used the same setpriv); nothing to drop for another user."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run as root without DAC override")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


class Hang(BaseException):
    """Raised by `within` in the test process; a BaseException, so no `except Exception` of a
    command swallows it."""


@contextlib.contextmanager
def within(seconds: float):
    """Fail an in-process call that runs longer than `seconds` (the note's HANG verdict)."""

    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "2500k"):
    """A small tmpfs at `where` (the note's 2.5 MB disk); root only, as in CI."""
    where.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        if os.environ.get("UDIT_REQUIRE_MOUNT") == "1":
            pytest.fail(f"UDIT_REQUIRE_MOUNT=1 but no tmpfs could be mounted: {proc.stderr}")
        pytest.skip(f"mounting a tmpfs needs root: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def read_only(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)


def fill(mnt: Path, *, leave: int) -> Path:
    """Fill the tmpfs `mnt` until `leave` bytes (whole 4 KB pages) stay free."""
    free = shutil.disk_usage(mnt).free
    assert free >= leave, (free, leave)
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (free - leave))
    return filler


# ----------------------------------------------------------------------------- inputs


def smooth_images(n: int, *, seed: int) -> np.ndarray:
    """uint8 (n, SIZE, SIZE, 3): 4x4 random colour blocks plus pixel noise."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.uniform(0, 255, (n, 4, 4, 3)), np.ones((1, 4, 4, 1)))
    return np.clip(blocks + rng.normal(0, 12, blocks.shape), 0, 255).astype(np.uint8)


def write_samples(path: Path, n: int, *, seed: int) -> Path:
    np.savez(path, arr_0=smooth_images(n, seed=seed), arr_1=np.arange(n, dtype=np.int64) % 4)
    return path


def eval_argv(samples: Path, ref: Path, weights: Path, out: Path, *extra) -> list:
    argv = ["--samples", samples, "--reference", ref, "--inception-weights", weights]
    return [*argv, "--out", out, "--device", "cpu", *extra]


def reference_argv(images: Path, out: Path, weights: Path, *extra) -> list:
    argv = ["--images", images, "--out", out, "--inception-weights", weights]
    return [*argv, "--image-size", SIZE, "--device", "cpu", *extra]


def extract_argv(images: Path, out: Path, vae: Path, *extra) -> list:
    argv = ["--images", images, "--out", out, "--image-size", SIZE, "--vae", vae]
    return [*argv, "--device", "cpu", *extra]


def train_argv(
    run_dir: Path,
    cache: Path,
    *extra,
    total_steps=4,
    ckpt_every=2,
    num_classes=4,
    image_size=SIZE,
    model_kw=MODEL_KW,
) -> list:
    """The note's tiny DiT run on a latent cache (--model-kw last: it takes every word after)."""
    argv = ["--model", "DiT-S/2", "--run-dir", run_dir, "--latents", cache]
    argv += ["--image-size", image_size, "--num-classes", num_classes, "--global-batch", 4]
    argv += ["--total-steps", total_steps, "--ckpt-every", ckpt_every, "--log-every", 1]
    return [*argv, "--num-workers", 0, "--device", "cpu", *extra, "--model-kw", *model_kw]


def ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"ckpt-{step:07d}.pt"


def write_features(root: Path, n: int, *, side: int = 4) -> Path:
    """n + 1 feature/label pairs in fast-DiT's layout ('{i}_{rank}.npy', 2 ranks); the official
    loader drops the last one."""
    rng = np.random.default_rng(0)
    feats, labels = root / "imagenet256_features", root / "imagenet256_labels"
    feats.mkdir(parents=True)
    labels.mkdir()
    for k in range(n + 1):
        name = f"{k // 2}_{k % 2}.npy"
        np.save(feats / name, rng.standard_normal((1, 4, side, side)).astype(np.float32))
        np.save(labels / name, np.array([k % 3], dtype=np.int64))
    return root


def corrupt_shard(src: Path, dst: Path, change) -> Path:
    """A copy of the latent cache `src` whose first shard `change(tensors)` edits; the manifest's
    bytes and sha256 are updated to match, so only the content can give it away."""
    shutil.copytree(src, dst)
    shard = dst / latents.shard_name(0)
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard)
    manifest = json.loads((dst / latents.MANIFEST).read_text())
    entry = manifest["shards"][0]
    entry["bytes"], entry["sha256"] = shard.stat().st_size, sha256_file(shard)
    (dst / latents.MANIFEST).write_text(json.dumps(manifest, indent=2))
    return shard


def image_folder_with(t: Case, name: str, bad_name: str, make_bad) -> tuple[Path, Path]:
    """A copy of the small toy folder plus one bad file in its first class folder (as the note
    did with its 32-image folder): -> (folder, the bad file)."""
    folder = t.tmp / "b" / name
    shutil.copytree(t.fx("few_images"), folder)
    bad = folder / toy.class_folder(0) / bad_name
    make_bad(bad)
    return folder, bad


def noise_image(size: int = 64, *, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def truncated(fmt: str):
    def make(path: Path) -> None:
        noise_image().save(path, format=fmt)  # 64 px of noise: half of it cuts the pixel data
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return make


def num_cached(cache: Path) -> int:
    return json.loads((cache / latents.MANIFEST).read_text())["num_images"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory) -> Path:
    """The note's `img`, scaled down: 4 classes x 8 images at 16 px."""
    root = tmp_path_factory.mktemp("toy") / "img"
    toy.generate_toy_data(out=str(root), num_classes=4, per_class=8, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def few_images(tmp_path_factory) -> Path:
    """4 classes x 2 images at 16 px: the base of the X cases' folders."""
    root = tmp_path_factory.mktemp("few") / "img"
    toy.generate_toy_data(out=str(root), num_classes=4, per_class=2, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    return Path(save_tiny_vae(out_dir=str(tmp_path_factory.mktemp("vae") / "vae"), seed=0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory, toy_images, tiny_vae) -> Path:
    """The note's `lat`: latents of toy_images, two shards of 16 images."""
    out = tmp_path_factory.mktemp("latents") / "lat"
    argv = extract_argv(toy_images, out, tiny_vae, "--shard-size", 16)
    assert latents.main([str(a) for a in argv]) == 0
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache) -> Path:
    """The note's 4-step run: checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    assert train_main([str(a) for a in train_argv(run_dir, cache)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory, toy_images) -> Path:
    """The note's `inc.pth`: the stand-in Inception, BatchNorm calibrated on 8 toy images."""
    path = tmp_path_factory.mktemp("inception") / "inc.pth"
    standin.make_standin_inception(
        out=path, seed=0, calibration_images=toy_images, num_calibration=8, image_size=SIZE
    )
    return path


@pytest.fixture(scope="module")
def reference_npz(tmp_path_factory, toy_images, inception_weights) -> Path:
    out = tmp_path_factory.mktemp("reference") / "ref.npz"
    assert reference.main([str(a) for a in reference_argv(toy_images, out, inception_weights)]) == 0
    return out


@pytest.fixture(scope="module")
def samples_npz(tmp_path_factory) -> Path:
    return write_samples(tmp_path_factory.mktemp("samples") / "s.npz", 8, seed=1)


@pytest.fixture(scope="module")
def metrics_json(tmp_path_factory, samples_npz, reference_npz, inception_weights) -> Path:
    """The note's `ok.json`: the metrics of samples_npz."""
    out = tmp_path_factory.mktemp("metrics") / "ok.json"
    argv = eval_argv(samples_npz, reference_npz, inception_weights, out)
    assert evaluate.main([str(a) for a in argv]) == 0
    return out


def evaluate_inputs(t: Case) -> tuple[Path, Path, Path]:
    return t.fx("samples_npz"), t.fx("reference_npz"), t.fx("inception_weights")


# ============================================================================= A: udit evaluate


@case("A1-evaluate-npz-with-extra-keys")
def case_a1(t: Case):
    samples, ref, weights = evaluate_inputs(t)
    clean = json.loads(t.fx("metrics_json").read_text())
    extra = t.tmp / "extra.npz"
    with np.load(samples) as data:
        np.savez(extra, arr_0=data["arr_0"], arr_1=data["arr_1"], arr_2=np.ones(3), junk=[1, 2])
    out = t.tmp / "m_extra.json"
    handled(t.call(evaluate.main, *eval_argv(extra, ref, weights, out)))
    got = json.loads(out.read_text())
    for key in ("fid", "sfid", "is", "precision", "recall", "kid"):
        assert got[key] == pytest.approx(clean[key], rel=1e-6), key


def evaluate_refuses_weights(t: Case, make) -> None:
    samples, ref, _ = evaluate_inputs(t)
    weights = t.tmp / "weights.pth"
    make(weights)
    before, kept = snapshot(t.tmp), digests(samples, ref)
    ran = t.call(evaluate.main, *eval_argv(samples, ref, weights, t.tmp / "m.json"))
    refused(ran, "udit evaluate", weights)
    assert snapshot(t.tmp) == before and digests(samples, ref) == kept


@case("A2-evaluate-inception-weights-of-a-dit")
def case_a2(t: Case):
    evaluate_refuses_weights(t, lambda path: torch.save(tiny_state(0), path))


@case("A3-evaluate-inception-weights-of-a-resnet18")
def case_a3(t: Case):
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    evaluate_refuses_weights(t, lambda path: torch.save(resnet.state_dict(), path))


@case("A4-evaluate-num-samples-1e12")
def case_a4(t: Case):
    samples, ref, weights = evaluate_inputs(t)
    out = t.tmp / "m.json"
    ran = t.call(evaluate.main, *eval_argv(samples, ref, weights, out, "--first", 10**12))
    refused(ran, "udit evaluate", "1000000000000")
    assert "--first" in ran.err or str(samples) in ran.err, ran.tail()
    assert not out.exists() and temp_files(t.tmp) == []


@case("A5-evaluate-out-is-a-directory")
def case_a5(t: Case):
    samples, ref, weights = evaluate_inputs(t)
    outdir = t.tmp / "outdir"
    outdir.mkdir()
    ran = t.call(evaluate.main, *eval_argv(samples, ref, weights, outdir))
    refused(ran, "udit evaluate", outdir)
    assert list(outdir.iterdir()) == [] and temp_files(t.tmp) == []


def evaluate_out_is_input(t: Case, role: str) -> None:
    """--out names the file given as `role`; each input is a copy in the case's folder."""
    samples, ref, weights = evaluate_inputs(t)
    files = {"--samples": samples, "--reference": ref, "--inception-weights": weights}
    files[role] = Path(shutil.copy(files[role], t.tmp / f"self{files[role].suffix}"))
    before = snapshot(t.tmp)
    argv = eval_argv(
        files["--samples"], files["--reference"], files["--inception-weights"], files[role]
    )
    refused(t.call(evaluate.main, *argv), "udit evaluate", "--out", role, files[role])
    assert snapshot(t.tmp) == before


@case("A6-evaluate-out-is-its-samples")
def case_a6(t: Case):
    evaluate_out_is_input(t, "--samples")


@case("A7-evaluate-out-is-its-reference")
def case_a7(t: Case):
    evaluate_out_is_input(t, "--reference")


@case("A8-evaluate-out-is-its-inception-weights")
def case_a8(t: Case):
    evaluate_out_is_input(t, "--inception-weights")


# ============================================================================= B: udit sample
# A pixel-space DiT checkpoint of tests/test_bad_inputs_faults.py (8 px, 4 classes): these
# cases are about the options and outputs of `udit sample`, not about the VAE.


def sample_refused(t: Case, *extra, out_name: str = "s.npz", culprits=()) -> None:
    ckpt_path = write_ckpt(t.tmp / "ckpt.pt")
    out = t.tmp / out_name
    before = snapshot(t.tmp)
    refused(t.call(sample_main, *sample_argv(ckpt_path, out, *extra)), "udit sample", *culprits)
    assert snapshot(t.tmp) == before
    assert not Path(f"{out}.parts").exists() and temp_files(t.tmp) == []


@case("B1-sample-grid-is-its-checkpoint")
def case_b1(t: Case):
    ckpt_path = write_ckpt(t.tmp / "ckpt-0000004.pt")
    before = snapshot(t.tmp)
    ran = t.call(sample_main, *sample_argv(ckpt_path, t.tmp / "g.npz", "--grid", ckpt_path))
    refused(ran, "udit sample", "--grid", "--checkpoint", ckpt_path)
    assert snapshot(t.tmp) == before


@case("B2-sample-out-is-a-reference-batch")
def case_b2(t: Case):
    shutil.copy(t.fx("reference_npz"), t.tmp / "refcopy.npz")
    sample_refused(t, out_name="refcopy.npz", culprits=("--out", t.tmp / "refcopy.npz"))


@case("B3-sample-over-finished-samples-other-seed")
def case_b3(t: Case):
    ckpt_path = write_ckpt(t.tmp / "ckpt.pt")
    out = t.tmp / "s2.npz"
    handled(t.call(sample_main, *sample_argv(ckpt_path, out)))
    before = snapshot(t.tmp)
    ran = t.call(sample_main, *sample_argv(ckpt_path, out, "--seed", "7"))
    refused(ran, "udit sample", out, "seed")
    assert snapshot(t.tmp) == before
    again = handled(t.call(sample_main, *sample_argv(ckpt_path, out)))  # B3b: same options
    assert "nothing to do" in again.err and snapshot(t.tmp) == before


@case("B4-sample-cfg-scale-nan")
def case_b4(t: Case):
    sample_refused(t, "--cfg-scale", "nan", out_name="nan.npz", culprits=("--cfg-scale", "nan"))


@case("B5-sample-cfg-scale-inf")
def case_b5(t: Case):
    sample_refused(t, "--cfg-scale", "inf", out_name="inf.npz", culprits=("--cfg-scale", "inf"))


@case("B6-sample-num-samples-1e12")
def case_b6(t: Case):
    # its own process under a memory cap: this case once reached 22 GB and the OOM killer
    ckpt_path = write_ckpt(t.tmp / "ckpt.pt")
    out = t.tmp / "huge.npz"
    before = snapshot(t.tmp)
    argv = sample_argv(ckpt_path, out, "--num-samples", "1000000000000")
    ran, seconds = run_capped(udit("sample", *argv), cwd=t.tmp)
    refused(ran, "udit sample", "--num-samples", "1000000000000")
    assert seconds < 60, f"{seconds:.0f} s to refuse"
    assert snapshot(t.tmp) == before and not Path(f"{out}.parts").exists()


@case("B7-sample-two-writers-same-out")
def case_b7(t: Case):
    ckpt_path = write_ckpt(t.tmp / "ckpt.pt")
    out, solo = t.tmp / "conc.npz", t.tmp / "solo.npz"
    more = ("--num-samples", "8", "--batch-size", "1")  # 256 samples in the note; 8 shards here
    argv = sample_argv(ckpt_path, out, *more)
    first = Child(udit("sample", *argv, "--pause-after-shard", "0.5"), cwd=t.tmp)
    parts = Path(f"{out}.parts")
    first.wait_for(lambda: any(parts.glob("shard-*.npz")), "a first shard")
    second = t.call(sample_main, *argv)
    refused(second, "udit sample", "--out", out, f"PID {first.proc.pid}")
    handled(first.finish())
    handled(t.call(sample_main, *sample_argv(ckpt_path, solo, *more)))
    with np.load(out) as got, np.load(solo) as want:
        assert np.array_equal(got["arr_0"], want["arr_0"])
        assert np.array_equal(got["arr_1"], want["arr_1"])
    assert not parts.exists() and temp_files(t.tmp) == []
    assert not list(t.tmp.glob(".*.lock"))


@case("B8-sample-out-is-a-directory")
def case_b8(t: Case):
    (t.tmp / "dir.npz").mkdir()
    sample_refused(t, out_name="dir.npz", culprits=(t.tmp / "dir.npz",))
    assert list((t.tmp / "dir.npz").iterdir()) == []


@case("B9-sample-out-with-space-unicode-newline")
def case_b9(t: Case):
    ckpt_path = write_ckpt(t.tmp / "ckpt.pt")
    folder = t.tmp / "uni dir ✓ é"
    folder.mkdir()
    handled(t.call(sample_main, *sample_argv(ckpt_path, folder / "a\nb.npz")))
    assert sorted(p.name for p in folder.iterdir()) == ["a\nb.npz", "a\nb.npz.json", "a\nb.png"]
    handled(t.call(sample_main, *sample_argv(ckpt_path, t.tmp / "plain.npz")))
    with np.load(folder / "a\nb.npz") as got, np.load(t.tmp / "plain.npz") as want:
        assert np.array_equal(got["arr_0"], want["arr_0"])


@case("B10-sample-num-classes-1000-on-4-class-checkpoint")
def case_b10(t: Case):
    sample_refused(t, "--num-classes", "1000", culprits=("--num-classes 1000", "num_classes=4"))


# ============================================================================= C: udit train


def train_refused(t: Case, run_dir: Path, cache: Path, *culprits, **options) -> Ran:
    """`udit train` refused: nothing of a run folder (options.json included) is left."""
    before = snapshot(t.tmp)
    ran = t.call(train_main, *train_argv(run_dir, cache, **options))
    refused(ran, "udit train", *culprits)
    assert snapshot(t.tmp) == before, "the refused run left files behind"
    return ran


@case("C1-train-two-writers-same-run-dir")
def case_c1(t: Case):
    run_dir = t.tmp / "conc"
    argv = train_argv(run_dir, t.fx("cache"), total_steps=12, ckpt_every=4)  # 300 in the note
    first = Child(udit("train", *argv, "--pause-after-step", "0.3"), cwd=t.tmp)
    log = run_dir / "log.jsonl"
    first.wait_for(log.exists, "the first log line")
    second = t.call(train_main, *argv)
    refused(second, "udit train", "--run-dir", run_dir, f"PID {first.proc.pid}")
    handled(first.finish())
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 13)), steps  # one writer: every step logged once


@case("C2-train-resume-from-a-json-file")
def case_c2(t: Case):
    cache = t.fx("cache")
    not_ckpt = write(t.tmp / "ok.json", json.dumps({"fid": 2038.7, "uncalibrated": True}))
    run_dir = t.tmp / "rj"
    before = snapshot(t.tmp)
    ran = t.call(train_main, *train_argv(run_dir, cache, "--resume", not_ckpt))
    line = refused(ran, "udit train", "--resume", not_ckpt)
    assert ran.err.rstrip().endswith(line), f"a message of several lines: {ran.tail()}"
    assert snapshot(t.tmp) == before, "the refused run left files behind"
    handled(t.call(train_main, *train_argv(run_dir, cache)))  # the corrected re-run


@case("C3-train-hidden-size-not-divisible-by-heads")
def case_c3(t: Case):
    cache = t.fx("cache")
    # 4 heads do not divide 30; 2 do, but the 2D sin-cos embedding needs a multiple of 4
    for heads in ("num_heads=4", "num_heads=2"):
        model_kw = ("hidden_size=30", "depth=2", heads)
        train_refused(t, t.tmp / "hd", cache, "hidden_size", "30", model_kw=model_kw)


@case("C4-train-total-steps-0")
def case_c4(t: Case):
    train_refused(t, t.tmp / "r", t.fx("cache"), "--total-steps", "0", total_steps=0)


@case("C5-train-ckpt-every-0")
def case_c5(t: Case):
    train_refused(t, t.tmp / "r", t.fx("cache"), "--ckpt-every", "0", ckpt_every=0)


def train_on_corrupt_shard(t: Case, change, *culprits, any_of: tuple[str, ...] = ()) -> None:
    """Training on the cache with one shard changed: refused naming the shard, the culprits
    and one of `any_of` (the bad value, which a message may spell either way)."""
    bad = t.tmp / "lat_bad"
    shard = corrupt_shard(t.fx("cache"), bad, change)
    ran = train_refused(t, t.tmp / "run", bad, shard, *culprits)
    assert not any_of or any(word in ran.err for word in any_of), (any_of, ran.tail())


@case("C6-train-float16-shard-manifest-says-float32")
def case_c6(t: Case):
    def to_float16(tensors):
        tensors["moments"] = tensors["moments"].astype(np.float16)

    train_on_corrupt_shard(t, to_float16, any_of=("F16", "float16"))


@case("C7-train-shard-moments-of-another-shape")
def case_c7(t: Case):
    def reshape(tensors):
        count = len(tensors["labels"])
        tensors["moments"] = np.random.default_rng(0).standard_normal(
            (count, 2, 4, 8, 8), dtype=np.float32
        )

    train_on_corrupt_shard(t, reshape, "moments", any_of=("[16, 2, 4, 8, 8]", "(16, 2, 4, 8, 8)"))


@case("C8-train-label-5000")
def case_c8(t: Case):
    def label(tensors):
        tensors["labels"][3] = 5000

    train_on_corrupt_shard(t, label, "5000")


@case("C9-train-label-minus-1")
def case_c9(t: Case):
    def label(tensors):
        tensors["labels"][3] = -1

    train_on_corrupt_shard(t, label, "-1")


@case("C10-train-nan-moments-of-one-image")
def case_c10(t: Case):
    def poison(tensors):
        tensors["moments"][5, 0, 0, 0, 0] = np.nan

    train_on_corrupt_shard(t, poison, "nan", any_of=("image 5", "index 5"))


@case("C11-train-resume-4-class-checkpoint-into-2-classes")
def case_c11(t: Case):
    run_dir = t.fx("run")
    images, lat2 = t.tmp / "img2c", t.tmp / "lat2c"
    toy.generate_toy_data(out=str(images), num_classes=2, per_class=4, size=SIZE, seed=0)
    handled(t.call(latents.main, *extract_argv(images, lat2, t.fx("tiny_vae"))))
    resume = ckpt(run_dir, 4)
    before, run_before = snapshot(t.tmp), snapshot(run_dir)
    ran = t.call(train_main, *train_argv(t.tmp / "run2c", lat2, "--resume", resume, num_classes=2))
    refused(ran, "udit train", resume, "num_classes")
    assert snapshot(t.tmp) == before and snapshot(run_dir) == run_before


@case("C12-train-lr-nan")
def case_c12(t: Case):
    cache = t.fx("cache")
    before = snapshot(t.tmp)
    ran = t.call(train_main, *train_argv(t.tmp / "r", cache, "--lr", "nan"))
    refused(ran, "udit train", "--lr", "nan")
    assert snapshot(t.tmp) == before


@case("C13-train-ema-decay-2")
def case_c13(t: Case):
    cache = t.fx("cache")
    before = snapshot(t.tmp)
    ran = t.call(train_main, *train_argv(t.tmp / "r", cache, "--ema-decay", "2"))
    refused(ran, "udit train", "--ema-decay", "2")
    assert snapshot(t.tmp) == before


# ============================================================================= D: OS faults


@case("D1-train-disk-full-at-checkpoint-save")
def case_d1(t: Case):
    run_dir, cache = t.fx("run"), t.fx("cache")
    with tmpfs(t.tmp / "full") as mnt:
        copy = mnt / "run"
        shutil.copytree(run_dir, copy)
        half_ckpt = ckpt(copy, 4).stat().st_size // 2 // 4096 * 4096
        fill(mnt, leave=half_ckpt)  # the next checkpoint cannot fit
        kept = snapshot(copy / "checkpoints")
        ran = t.call(train_main, *train_argv(copy, cache, total_steps=8, ckpt_every=2))
        refused(ran, "udit train", mnt, "free")
        assert snapshot(copy / "checkpoints") == kept
        assert temp_files(mnt) == []


@case("D2-evaluate-disk-full-writing-metrics")
def case_d2(t: Case):
    samples, ref, weights = evaluate_inputs(t)
    good = t.fx("metrics_json")
    with tmpfs(t.tmp / "full") as mnt:
        out = Path(shutil.copy(good, mnt / "m.json"))
        fill(mnt, leave=4096)  # one page: the lock's; the new JSON (about 5 KB) cannot fit
        before = snapshot(mnt)
        # other inputs than m.json's (6 samples) and --overwrite: the write itself must fail
        argv = eval_argv(samples, ref, weights, out, "--first", "6", "--overwrite")
        ran = t.call(evaluate.main, *argv)
        refused(ran, "udit evaluate", mnt)
        assert "space" in ran.err, ran.tail()
        assert snapshot(mnt) == before


@case("D3-sample-disk-full-for-its-shards")
def case_d3(t: Case):
    ckpt_path = write_ckpt(t.tmp / "ckpt.pt")
    more = ("--num-samples", "64", "--batch-size", "8")
    with tmpfs(t.tmp / "full") as mnt:
        out = mnt / "s.npz"
        filler = fill(mnt, leave=8192)  # 64 x 8 x 8 x 3 bytes of samples (twice) do not fit
        before = snapshot(mnt)
        ran = t.call(sample_main, *sample_argv(ckpt_path, out, *more))
        refused(ran, "udit sample", mnt, "space")
        assert snapshot(mnt) == before and not Path(f"{out}.parts").exists()
        filler.unlink()  # D3b: with space again the same command finishes, as a clean run
        handled(t.call(sample_main, *sample_argv(ckpt_path, out, *more)))
        handled(t.call(sample_main, *sample_argv(ckpt_path, t.tmp / "solo.npz", *more)))
        with np.load(out) as got, np.load(t.tmp / "solo.npz") as want:
            assert np.array_equal(got["arr_0"], want["arr_0"])


@case("D4-evaluate-out-on-read-only-mount")
def case_d4(t: Case):
    samples, ref, weights = evaluate_inputs(t)
    with tmpfs(t.tmp / "ro") as mnt:
        read_only(mnt)
        ran = t.call(evaluate.main, *eval_argv(samples, ref, weights, mnt / "m.json"))
        refused(ran, "udit evaluate", mnt, "read-only")


@case("D5-train-run-dir-on-read-only-mount")
def case_d5(t: Case):
    cache = t.fx("cache")
    with tmpfs(t.tmp / "ro") as mnt:
        read_only(mnt)
        ran = t.call(train_main, *train_argv(mnt / "run", cache))
        refused(ran, "udit train", mnt, "read-only")


@case("D6-evaluate-samples-mode-000")
def case_d6(t: Case):
    samples, ref, weights = evaluate_inputs(t)
    unreadable = Path(shutil.copy(samples, t.tmp / "s.npz"))
    unreadable.chmod(0)
    before = snapshot(t.tmp)
    argv = eval_argv(unreadable, ref, weights, t.tmp / "m.json")
    ran, _ = run_capped(without_dac_override() + udit("evaluate", *argv), cwd=t.tmp)
    refused(ran, "udit evaluate", unreadable, "ermission")
    assert snapshot(t.tmp) == before


@case("D7-train-resume-newest-checkpoint-mode-000")
def case_d7(t: Case):
    copy = t.tmp / "perm"
    shutil.copytree(t.fx("run"), copy)
    # the copy's options.json still names the original folder: a first resume records this one
    handled(t.call(train_main, *train_argv(copy, t.fx("cache"))))
    newest = ckpt(copy, 4)
    newest.chmod(0)
    before = snapshot(t.tmp)
    cmd = without_dac_override() + udit("train", *train_argv(copy, t.fx("cache")))
    ran, _ = run_capped(cmd, cwd=t.tmp)
    refused(ran, "udit train", newest, "ermission")
    assert snapshot(t.tmp) == before  # nothing deleted, moved aside or rewritten


@case("D8-train-run-dir-through-symlink-loop")
def case_d8(t: Case):
    (t.tmp / "loopA").symlink_to(t.tmp / "loopB")
    (t.tmp / "loopB").symlink_to(t.tmp / "loopA")
    ran = t.call(train_main, *train_argv(t.tmp / "loopA" / "run", t.fx("cache")))
    refused(ran, "udit train", t.tmp / "loopA", "symbolic links")


@case("D9-report-results-is-a-symlink-loop")
def case_d9(t: Case):
    (t.tmp / "loopA").symlink_to(t.tmp / "loopB")
    (t.tmp / "loopB").symlink_to(t.tmp / "loopA")
    ran = t.call(report_main, *report_argv(t.tmp / "loopA", t.tmp / "rep_loop"))
    refused(ran, "udit report", t.tmp / "loopA")
    assert not (t.tmp / "rep_loop").exists()


# ============================================================================= F: signals
# The note signalled after a delay; here after the command shows progress (a hooked function
# entered, a log line, a shard): the same point of the work on a fast or a loaded machine.

INCEPTION_PASS = "udit.metrics.inception.extract_features"


def evaluate_signalled(t: Case, sig: signal.Signals) -> tuple[Ran, dict, Path]:
    """`udit evaluate` of 64 samples (batch 1: the Inception pass outlasts the signal) over a
    good m.json (other inputs, --overwrite), sent `sig` once its Inception pass has begun."""
    _, ref, weights = evaluate_inputs(t)
    samples = write_samples(t.tmp / "s64.npz", 64, seed=2)
    out = Path(shutil.copy(t.fx("metrics_json"), t.tmp / "m.json"))
    before = snapshot(t.tmp)
    argv = eval_argv(samples, ref, weights, out, "--batch-size", "1", "--overwrite")
    child = Child(udit("evaluate", *argv, hook=INCEPTION_PASS), cwd=t.tmp)
    child.wait_for(lambda: child.hooks() >= 1, "the Inception pass")
    child.proc.send_signal(sig)
    return child.finish(), before, out


@case("F1-evaluate-sigterm", pytest.mark.slow)  # F2 (SIGINT) stays fast
def case_f1(t: Case):
    ran, before, out = evaluate_signalled(t, signal.SIGTERM)
    assert ran.code != 0 and "Traceback" not in ran.err, ran.tail()
    assert sha256_file(out) == before["m.json"] and temp_files(t.tmp) == []
    left = set(snapshot(t.tmp)) - set(before)
    assert all(name.endswith(".lock") for name in left), left
    with outputs.locked(out):  # a lock its dead holder left never blocks the next run
        pass


@case("F2-evaluate-sigint")
def case_f2(t: Case):
    ran, before, _ = evaluate_signalled(t, signal.SIGINT)
    assert ran.code == 130, ran.tail()
    assert "Traceback" not in ran.err and "udit evaluate: interrupted" in ran.err, ran.tail()
    assert snapshot(t.tmp) == before


def killed_then_rerun(t: Case, *, hook: str, argv: list, solo_argv: list, out: Path) -> None:
    """Kill -9 the command in its third unit of work (a shard being made), re-run it in
    process: it keeps the shards its manifest records and ends byte-equal to an uninterrupted
    run."""
    child = Child(udit(*argv, hook=hook, pause=0.5), cwd=t.tmp)
    child.wait_for(lambda: child.hooks() >= 3, "a third shard")
    child.proc.kill()
    child.finish()
    recorded = json.loads((out / latents.MANIFEST).read_text())["shards"]
    kept = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in recorded}
    assert kept, "the kill came before any shard was recorded"
    handled(t.call(udit_main, *argv))
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # resumed
    handled(t.call(udit_main, *solo_argv))
    solo = Path(solo_argv[solo_argv.index("--out") + 1])
    assert snapshot(out) == snapshot(solo)  # manifest and shards byte-equal; no tmp, no lock


@case("F3-extract-latents-kill-9-then-rerun")
def case_f3(t: Case):
    # 1024 images in shards of 64 in the note; 64 in shards of 8 here
    images = t.tmp / "img64"
    toy.generate_toy_data(out=str(images), num_classes=4, per_class=16, size=SIZE, seed=0)
    vae, more = t.fx("tiny_vae"), ("--shard-size", "8", "--batch-size", "8")
    out, solo = t.tmp / "latk", t.tmp / "solo"
    killed_then_rerun(
        t,
        hook="udit.data.latents._encode_shard",
        argv=["extract-latents", *extract_argv(images, out, vae, *more)],
        solo_argv=["extract-latents", *extract_argv(images, solo, vae, *more)],
        out=out,
    )


def reference_signalled(t: Case, sig: signal.Signals) -> tuple[Ran, dict, Path]:
    """`udit build-reference` (32 images, batch 1; 1024 in the note) over a good ref.npz of
    other images (--overwrite), sent `sig` once its Inception pass has begun."""
    images = t.tmp / "img"
    toy.generate_toy_data(out=str(images), num_classes=4, per_class=8, size=SIZE, seed=1)
    out = Path(shutil.copy(t.fx("reference_npz"), t.tmp / "ref.npz"))
    before = snapshot(t.tmp)
    argv = reference_argv(images, out, t.fx("inception_weights"), "--batch-size", "1")
    child = Child(udit("build-reference", *argv, "--overwrite", hook=INCEPTION_PASS), cwd=t.tmp)
    child.wait_for(lambda: child.hooks() >= 1, "the Inception pass")
    child.proc.send_signal(sig)
    return child.finish(), before, out


@case("F4-build-reference-sigterm")
def case_f4(t: Case):
    ran, before, out = reference_signalled(t, signal.SIGTERM)
    assert ran.code != 0 and "Traceback" not in ran.err, ran.tail()
    assert sha256_file(out) == before["ref.npz"] and temp_files(t.tmp) == []
    left = set(snapshot(t.tmp)) - set(before)
    assert all(name.endswith(".lock") for name in left), left


@case("F5-build-reference-sigint", pytest.mark.slow)  # F4 (SIGTERM) stays fast
def case_f5(t: Case):
    ran, before, _ = reference_signalled(t, signal.SIGINT)
    assert ran.code == 130, ran.tail()
    assert "Traceback" not in ran.err and "udit build-reference: interrupted" in ran.err
    assert snapshot(t.tmp) == before


@case("F6-train-sigint", pytest.mark.slow)  # test_guarantees: Ctrl-C in train
def case_f6(t: Case):
    run_dir = t.tmp / "trint"
    argv = train_argv(run_dir, t.fx("cache"), total_steps=500, ckpt_every=1000)
    child = Child(udit("train", *argv, "--pause-after-step", "0.2"), cwd=t.tmp)
    log = run_dir / "log.jsonl"
    child.wait_for(lambda: log.exists() and log.read_text().count("\n") >= 2, "two logged steps")
    child.proc.send_signal(signal.SIGINT)
    ran = child.finish()
    refused(ran, "udit train", "SIGINT", code=75)
    logged = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    saved = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert [p.name for p in saved] == [ckpt(run_dir, logged[-1]).name], (saved, logged)
    assert temp_files(run_dir) == []


@case("F7-import-features-kill-9-then-rerun")
def case_f7(t: Case):
    # 30,000 feature files in shards of 1024 in the note; 96 in shards of 8 here
    feats = write_features(t.tmp / "feat_huge", 96)
    out, solo = t.tmp / "lh_k", t.tmp / "solo"
    base = ["import-features", "--features", feats, "--image-size", "32", "--shard-size", "8"]
    killed_then_rerun(
        t,
        hook="udit.data.features._import_shard",
        argv=[*base, "--out", out],
        solo_argv=[*base, "--out", solo],
        out=out,
    )


# ============================================================================= I: import-features


def import_refused(t: Case, edit, *culprits) -> None:
    feats = write_features(t.tmp / "feat", 8)
    culprit = edit(feats)
    out = t.tmp / "li"
    before = snapshot(t.tmp)
    argv = ["--features", feats, "--out", out, "--image-size", "32"]
    refused(t.call(features.main, *argv), "udit import-features", culprit, *culprits)
    assert snapshot(t.tmp) == before


@case("I1-import-features-one-feature-of-another-shape")
def case_i1(t: Case):
    def edit(feats: Path) -> Path:
        path = feats / "imagenet256_features" / "2_1.npy"
        np.save(path, np.zeros((1, 4, 8, 8), np.float32))
        return path

    import_refused(t, edit, "(4, 8, 8)")


@case("I2-import-features-float-label")
def case_i2(t: Case):
    def edit(feats: Path) -> Path:
        path = feats / "imagenet256_labels" / "0_0.npy"
        np.save(path, np.array([0.5]))
        return path

    import_refused(t, edit)


@case("I3-import-features-label-5000-caught-by-train")
def case_i3(t: Case):
    feats = write_features(t.tmp / "feat", 8)
    np.save(feats / "imagenet256_labels" / "1_1.npy", np.array([5000], dtype=np.int64))
    out = t.tmp / "li_lab5000"
    handled(t.call(features.main, "--features", feats, "--out", out, "--image-size", "32"))
    assert len(json.loads((out / latents.MANIFEST).read_text())["classes"]) == 5001
    argv = train_argv(t.tmp / "run", out, num_classes=1000, image_size=32)
    before = snapshot(t.tmp)
    refused(t.call(train_main, *argv), "udit train", out, "5001", "1000")
    assert snapshot(t.tmp) == before, "the refused run left files behind"


@case("I4-import-features-all-nan-feature")
def case_i4(t: Case):
    def edit(feats: Path) -> Path:
        path = feats / "imagenet256_features" / "1_0.npy"
        np.save(path, np.full((1, 4, 4, 4), np.nan, np.float32))
        return path

    import_refused(t, edit)


# ============================================================================= X: images


def extract_refused(t: Case, folder: Path, *culprits) -> None:
    out = t.tmp / "lat"
    before = snapshot(t.tmp)
    ran = t.call(latents.main, *extract_argv(folder, out, t.fx("tiny_vae")))
    refused(ran, "udit extract-latents", *culprits)
    assert snapshot(t.tmp) == before


def extract_handled(t: Case, folder: Path) -> Path:
    out = t.tmp / f"lat_{folder.name}"
    handled(t.call(latents.main, *extract_argv(folder, out, t.fx("tiny_vae"))))
    return out


def shards(cache: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(cache.glob("shard_*.safetensors"))}


@case("X1-extract-latents-class-folders-without-images")
def case_x1(t: Case):
    folder = t.tmp / "b" / "emptyclasses"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    extract_refused(t, folder, folder)


@case("X2-extract-latents-1x1-png")
def case_x2(t: Case):
    folder, _ = image_folder_with(t, "tiny1px", "p.png", lambda p: Image.new("RGB", (1, 1)).save(p))
    assert num_cached(extract_handled(t, folder)) == 9  # 8 toy images + the 1x1 one, upscaled


@case("X3-extract-latents-cmyk-jpeg")
def case_x3(t: Case):
    folder, bad = image_folder_with(
        t, "cmyk", "c.jpg", lambda p: noise_image(16).convert("CMYK").save(p, quality=95)
    )
    with Image.open(bad) as image:  # what the file holds, as RGB, stored losslessly
        rgb = image.convert("RGB")
    twin, _ = image_folder_with(t, "cmyk_as_rgb", "c.png", rgb.save)
    got, want = extract_handled(t, folder), extract_handled(t, twin)
    assert num_cached(got) == 9 and shards(got) == shards(want)


def gray16() -> np.ndarray:
    """The note's 16-bit grayscale picture: values 5..65523."""
    return np.linspace(5, 65523, SIZE * SIZE).reshape(SIZE, SIZE).astype(np.uint16)


def png16(path: Path) -> None:
    Image.fromarray(gray16()).save(path)  # PIL mode I;16: a 16-bit grayscale PNG


def png16_as_8_bit(path: Path) -> None:
    """The same picture in 8 bits (65535 / 257 = 255): what the 16-bit file means."""
    Image.fromarray(np.rint(gray16() / 257).astype(np.uint8)).save(path)


@case("X4-16-bit-grayscale-png-in-latents-and-reference")
def case_x4(t: Case):
    folder, _ = image_folder_with(t, "png16", "g.png", png16)
    twin, _ = image_folder_with(t, "png8", "g.png", png16_as_8_bit)
    got, want = extract_handled(t, folder), extract_handled(t, twin)
    assert shards(got) == shards(want), "the 16-bit image was not read as its 8-bit meaning"
    weights = t.fx("inception_weights")
    for images in (folder, twin):
        argv = reference_argv(images, t.tmp / f"{images.name}.npz", weights)
        handled(t.call(reference.main, *argv))
    with np.load(t.tmp / "png16.npz") as got16, np.load(t.tmp / "png8.npz") as got8:
        assert np.array_equal(got16["arr_0"], got8["arr_0"])


@case("X5-extract-latents-truncated-png")
def case_x5(t: Case):
    folder, bad = image_folder_with(t, "truncpng", "t.png", truncated("PNG"))
    extract_refused(t, folder, bad)


@case("X6-extract-latents-truncated-jpeg")
def case_x6(t: Case):
    folder, bad = image_folder_with(t, "truncjpg", "t.jpg", truncated("JPEG"))
    extract_refused(t, folder, bad)


@case("X7-extract-latents-txt-and-ds-store-in-class-folder")
def case_x7(t: Case):
    folder, bad = image_folder_with(t, "txtfile", "notes.txt", lambda p: p.write_text("notes"))
    (bad.parent / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(64))
    assert num_cached(extract_handled(t, folder)) == 8


@case("X8-build-reference-truncated-jpeg")
def case_x8(t: Case):
    folder, bad = image_folder_with(t, "truncjpg", "t.jpg", truncated("JPEG"))
    before = snapshot(t.tmp)
    argv = reference_argv(folder, t.tmp / "ref.npz", t.fx("inception_weights"))
    refused(t.call(reference.main, *argv), "udit build-reference", bad)
    assert snapshot(t.tmp) == before


# ============================================================================= V: VAE folders


def vae_folder(t: Case, name: str, *, weights: bool = True) -> Path:
    folder = t.tmp / "b" / name
    folder.mkdir(parents=True)
    shutil.copy(t.fx("tiny_vae") / "config.json", folder)
    if weights:
        shutil.copy(t.fx("tiny_vae") / "diffusion_pytorch_model.safetensors", folder)
    return folder


def vae_refused(t: Case, vae: Path) -> Ran:
    """extract-latents with the folder `vae`: refused naming it, not blaming the hub."""
    before = snapshot(t.tmp)
    ran = t.call(latents.main, *extract_argv(t.fx("few_images"), t.tmp / "lat", vae))
    line = refused(ran, "udit extract-latents", vae)
    assert "unreachable" not in line and "hub cache" not in line, ran.tail()
    assert snapshot(t.tmp) == before
    return ran


@case("V1-vae-folder-without-weights")
def case_v1(t: Case):
    vae = vae_folder(t, "vae_noweights", weights=False)
    vae_refused(t, vae)
    latent_ckpt = ckpt(t.fx("run"), 4)  # and `udit sample` of a latent-space checkpoint
    before = snapshot(t.tmp)
    ran = t.call(sample_main, *sample_argv(latent_ckpt, t.tmp / "s.npz", "--vae", vae))
    line = refused(ran, "udit sample", vae)
    assert "unreachable" not in line and "hub cache" not in line, ran.tail()
    assert snapshot(t.tmp) == before


@case("V2-vae-config-latent-channels-8-weights-for-4")
def case_v2(t: Case):
    vae = vae_folder(t, "vae_badcfg")
    config = json.loads((vae / "config.json").read_text())
    config["latent_channels"] = 8
    (vae / "config.json").write_text(json.dumps(config))
    vae_refused(t, vae)


@case("V3-vae-weights-only-as-pickled-bin")
def case_v3(t: Case):
    vae = vae_folder(t, "vae_pickle", weights=False)
    marker = t.tmp / "PWNED_vae"
    torch.save({"encoder.conv_in.weight": Payload(marker)}, vae / "diffusion_pytorch_model.bin")
    vae_refused(t, vae)
    assert not marker.exists()  # the pickle never ran


# ============================================================================= R: udit report
# config/smoke.yaml; its u-dit-b node 0000008-cfg1.0 is the note's T2 row.


def report_argv(results: Path, out: Path, *extra) -> list:
    return ["--configfile", SMOKE_CONFIG, "--results", results, "--out", out, *extra]


def metrics_doc(**changes) -> dict:
    """A metrics JSON as `udit evaluate` writes it (the keys the report reads)."""
    doc = {
        "fid": 250.0,
        "sfid": 60.0,
        "is": 3.5,
        "precision": 0.4,
        "recall": 0.3,
        "kid": 0.01,
        "kid_std": 0.001,
        "uncalibrated": True,
        "protocol": {"N": 16, "N_reference": 64, "k": 3},
        "provenance": {"inception_weights": {"sha256": "0123abcd" * 8, "official": False}},
    }
    return {**doc, **changes}


@case("R1-report-empty-results")
def case_r1(t: Case):
    (t.tmp / "empty").mkdir()
    ran = handled(t.call(report_main, *report_argv(t.tmp / "empty", t.tmp / "out_empty")))
    assert "pending" in ran.out and (t.tmp / "out_empty" / "index.html").is_file()


def report_invalid(t: Case, text: str, *culprits) -> None:
    """One broken metrics file: --strict exits 2 naming it, and the page written marks it
    where it is seen, not only in a tooltip."""
    results = t.tmp / "results"
    metrics = write(results / "u-dit-b" / "metrics" / "0000008-cfg1.0.json", text)
    out = t.tmp / "out"
    ran = t.call(report_main, *report_argv(results, out, "--strict"))
    refused(ran, "udit report", metrics, *culprits)
    html = (out / "index.html").read_text()
    visible = re.sub(r'title="[^"]*"', "", html)
    assert "0000008-cfg1.0.json" in visible and ">invalid<" in visible


@case("R2a-report-metrics-fid-nan")
def case_r2a(t: Case):
    report_invalid(t, json.dumps(metrics_doc(fid=float("nan"))), "fid", "nan")


@case("R2b-report-metrics-without-metric-keys")
def case_r2b(t: Case):
    metrics = ("fid", "sfid", "is", "precision", "recall")
    doc = {key: value for key, value in metrics_doc().items() if key not in metrics}
    report_invalid(t, json.dumps(doc), "fid")


@case("R2c-report-metrics-fid-minus-5-is-inf")
def case_r2c(t: Case):
    doc = metrics_doc(fid=-5.0, uncalibrated=False, **{"is": float("inf")})
    report_invalid(t, json.dumps(doc), "fid", "-5")


@case("R2d-report-metrics-is-a-json-list")
def case_r2d(t: Case):
    report_invalid(t, "[1, 2, 3]", "list")


@case("R3-report-out-is-an-existing-file")
def case_r3(t: Case):
    (t.tmp / "results").mkdir()
    precious = write(t.tmp / "precious.txt", "mine")
    before = snapshot(t.tmp)
    ran = t.call(report_main, *report_argv(t.tmp / "results", precious))
    refused(ran, "udit report", precious)
    assert snapshot(t.tmp) == before


# ============================================================================= P, G: plan, configs


@case("P1-plan-speed-json-with-negative-and-zero-rates")
def case_p1(t: Case):
    rates = {"inception": {"images_per_s": -5}, "vae_decode": {"images_per_s": 0}}
    speed = write(t.tmp / "speedneg.json", json.dumps({"schema": 1, "train": [], **rates}))
    argv = ["--configfile", SMOKE_CONFIG, "--speed-json", speed, "--format", "json"]
    with within(60):
        ran = t.call(plan_cli.main, *argv)
    refused(ran, "udit plan", speed, "images_per_s")


def bomb(levels: int = 9) -> str:
    """A billion-laughs block under `x-bomb:` (9 levels: 9^9 = 387 million 'lol's)."""
    lines = ["x-bomb:", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


def plan_refused(t: Case, text: str, *culprits, name: str = "bad.yaml", file: bool = False) -> Ran:
    """`udit plan` of a config `text`: refused naming the culprits (and the file, where the
    file as a whole is the culprit), within a minute and a screen."""
    cfg = write(t.tmp / name, text)
    with within(60):
        ran = t.call(plan_cli.main, "--configfile", cfg, "--format", "json")
    refused(ran, "udit plan", *culprits, *([cfg] if file else []))
    assert len(ran.err) < 4000, f"{len(ran.err)} characters of error"
    return ran


@case("G1-plan-billion-laughs-yaml")
def case_g1(t: Case):
    ran = plan_refused(t, PAPER + bomb(), "alias", name="bomb.yaml", file=True)
    assert ran.err.count("lol") < 10


@case("G2-snakemake-billion-laughs-yaml")
def case_g2(t: Case):
    cfg = write(t.tmp / "bomb.yaml", PAPER + bomb())
    (t.tmp / "wd").mkdir()
    cmd = snakemake(t.tmp / "wd", "-n", "--cores", "1", "--configfile", cfg)
    ran, seconds = run_capped(cmd, cwd=t.tmp)
    text = ran.out + ran.err
    assert ran.code != 0 and str(cfg) in text, ran.tail()
    assert seconds < 60 and len(text) < 5000 and text.count("lol") < 10, ran.tail()
    assert "Traceback" not in text, ran.tail()


@case("G3-plan-50-mb-config")
def case_g3(t: Case):
    big = replace_once(PAPER, "description: the full paper", f"description: {'x' * 50_000_000} the")
    plan_refused(t, big, "bytes", name="big.yaml", file=True)


U_DIT_B_CFG15 = "      - {step: 400000, cfg: 1.5, paper: [{table: cfg_1.5_T4, row: U-DiT-B}]}\n"
U_DIT_B_600K = (
    "      - {step: 600000, paper: [{table: longer_training_T5, row: U-DiT-B, key: 600K}]}\n"
)


@case("G4-plan-cfg-evaluation-listed-twice")
def case_g4(t: Case):
    plan_refused(t, replace_once(PAPER, U_DIT_B_CFG15, U_DIT_B_CFG15 * 2), "u-dit-b", "duplicate")


@case("G5-plan-step-without-cfg-and-with-cfg-1")
def case_g5(t: Case):
    text = replace_once(PAPER, U_DIT_B_600K, U_DIT_B_600K + "      - {step: 600000, cfg: 1.0}\n")
    plan_refused(t, text, "u-dit-b", "600000")


@case("G6-plan-iterations-not-a-multiple-of-ckpt-every")
def case_g6(t: Case):
    block = "    model: U-DiT-B\n    table: T5\n    size: B\n    iterations: 1000000\n"
    text = replace_once(PAPER, block, block.replace("1000000", "1000001"))
    text = replace_once(text, U_DIT_B_600K, U_DIT_B_600K + "      - {step: 200003}\n")
    cfg = write(t.tmp / "iters.yaml", text)
    with within(60):
        ran = handled(t.call(plan_cli.main, "--configfile", cfg, "--format", "json"))
    ends = [n["to_step"] for n in json.loads(ran.out)["nodes"] if n["experiment"] == "u-dit-b"]
    assert 200003 in ends and max(ends) == 1000001, ends


@case("G7-plan-experiment-ids-that-collide-in-lower-case")
def case_g7(t: Case):
    start = PAPER.index("  u-dit-b:\n")
    block = PAPER[start : PAPER.index("  u-dit-l:\n")]
    text = replace_once(PAPER, block, block.replace("  u-dit-b:", "  U-DIT-B:", 1) + block)
    plan_refused(t, text, "U-DIT-B")


MAX_JOB_HOURS = "gpu: {max_job_hours: 24,"


@case("G8-plan-max-job-hours-0")
def case_g8(t: Case):
    text = replace_once(PAPER, MAX_JOB_HOURS, "gpu: {max_job_hours: 0,")
    plan_refused(t, text, "max_job_hours")


@case("G9-plan-max-job-hours-0.0001")
def case_g9(t: Case):
    text = replace_once(PAPER, MAX_JOB_HOURS, "gpu: {max_job_hours: 0.0001,")
    plan_refused(t, text, "max_job_hours", "0.0001")


@case("G10-plan-max-job-hours-0.001")
def case_g10(t: Case):
    # its own process under a memory cap: this case once built chunks until MemoryError
    text = replace_once(PAPER, MAX_JOB_HOURS, "gpu: {max_job_hours: 0.001,")
    cfg = write(t.tmp / "mjh001.yaml", text)
    ran, seconds = run_capped(udit("plan", "--configfile", cfg, "--format", "json"), cwd=t.tmp)
    refused(ran, "udit plan", "max_job_hours", "0.001")
    assert seconds < 60, f"{seconds:.0f} s to refuse"


# ============================================================================= S, Q: Snakemake


LATENTS_TARGET = "data/toy32/latents/manifest.json"  # toy data, tiny VAE, latents: 3 jobs
S1_TRAIN_TARGET = "u-dit-t/train/checkpoints/ckpt-0000008.pt"


def smoke_config(root: Path, results: Path) -> Path:
    text = replace_once(SMOKE, "results: results\n", f"results: {json.dumps(str(results))}\n")
    return write(root / "smoke.yaml", text)


def dag_outputs(results: Path) -> dict[str, str]:
    """Every file the 3 jobs wrote (logs and benchmarks aside), by content; the manifest with
    the results folder's own path blanked (it records the VAE's path)."""
    found = {}
    for path in sorted((results / "data").rglob("*")):
        if not path.is_file():
            continue
        name = str(path.relative_to(results))
        if path.name == latents.MANIFEST:
            found[name] = path.read_text().replace(str(results), "<results>")
        else:
            found[name] = sha256_file(path)
    return found


@pytest.fixture(scope="module")
def s1_runs(tmp_path_factory) -> tuple[Ran, Ran, Path]:
    """The note's S1: two `snakemake` runs at once in one workdir on one results folder."""
    root = tmp_path_factory.mktemp("s1")
    results, workdir = root / "smr", root / "wd"
    workdir.mkdir()
    # before --configfile, which takes every word after; a training node paused 1 s per step
    # holds the first run (and its lock) long after the second has started: without it the
    # first could finish first, and the second find nothing to do (no lock taken, exit 0)
    targets = [f"{results}/{LATENTS_TARGET}", f"{results}/{S1_TRAIN_TARGET}"]
    cmd = snakemake(workdir, "--cores", "1", *targets, "--configfile", smoke_config(root, results))
    first = Child(cmd, cwd=root, env={**CHILD_ENV, "UDIT_PAUSE_AFTER_STEP": "1"})
    locks = workdir / ".snakemake" / "locks"
    first.wait_for(lambda: locks.is_dir() and any(locks.iterdir()), "Snakemake's lock", timeout=120)
    second = Child(cmd, cwd=root).finish(timeout=300)
    return first.finish(timeout=300), second, results


# S1, S2: two Snakemake runs of 3 jobs each, ~12 s alone on 2 cores, over 20 s when loaded
@case("S1-snakemake-two-runs-same-workdir", pytest.mark.slow)
def case_s1(t: Case):
    first, second, results = t.fx("s1_runs")
    handled(first)
    assert (results / LATENTS_TARGET).is_file()
    text = second.out + second.err
    assert second.code != 0 and "Traceback" not in text, second.tail()
    assert "LockException" in text or "cannot be locked" in text, second.tail()


@case("S2-snakemake-two-workdirs-same-results", pytest.mark.slow)
def case_s2(t: Case):
    _, _, solo = t.fx("s1_runs")  # S1's first run had the results folder to itself
    results = t.tmp / "smr2"
    cfg = smoke_config(t.tmp, results)
    target = f"{results}/{LATENTS_TARGET}"
    (t.tmp / "wd1").mkdir()
    (t.tmp / "wd2").mkdir()
    first = Child(snakemake(t.tmp / "wd1", "--cores", "1", target, "--configfile", cfg), cwd=t.tmp)
    first.wait_for(lambda: (results / "logs").is_dir(), "the first run's first job")
    second = Child(snakemake(t.tmp / "wd2", "--cores", "1", target, "--configfile", cfg), cwd=t.tmp)
    runs = [first.finish(timeout=300), second.finish(timeout=300)]
    for ran in runs:  # each ends well, or its job is refused by the other's lock
        text = ran.out + ran.err
        assert "Traceback" not in text, ran.tail()
        assert ran.code == 0 or "is being written by" in text, ran.tail()
    assert any(ran.code == 0 for ran in runs), [ran.tail() for ran in runs]
    assert dag_outputs(results) == dag_outputs(solo)  # nothing duplicated, torn or deleted


@case("Q1-snakemake-hostile-config-strings-stay-quoted")
def case_q1(t: Case):
    weights = f"{t.tmp}/inc$(touch {t.tmp}/PWNED1);touch {t.tmp}/PWNED2;#"
    images = f"{t.tmp}/img`touch {t.tmp}/PWNED3`"
    # the rest of each line (the file name, the comment) becomes a comment
    text = replace_once(PAPER, "  weights: data/weights-", f"  weights: {json.dumps(weights)} #")
    imagenet256 = "    images: data/imagenet/train           # ImageNet-1k"
    text = replace_once(text, imagenet256, f"    images: {json.dumps(images)} #")
    cfg = write(t.tmp / "injw.yaml", text)
    (t.tmp / "wd").mkdir()
    ran, _ = run_capped(snakemake(t.tmp / "wd", "-n", "-p", "--configfile", cfg), cwd=t.tmp)
    handled(ran)
    printed = (ran.out + ran.err).replace("\\\n", " ")
    words = [shlex.split(line) for line in printed.splitlines() if "--inception-weights" in line]
    assert words and all(w[w.index("--inception-weights") + 1] == weights for w in words)
    words = [shlex.split(line) for line in printed.splitlines() if " extract-latents " in line]
    assert any(w[w.index("--images") + 1] == images for w in words), printed[-3000:]
    assert not list(t.tmp.glob("PWNED*"))
