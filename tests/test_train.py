"""udit train: step-exact resume after a real SIGKILL, world-size independence under torchrun,
EMA initialisation, checkpoint validation and rotation. CPU, a 2-block DiT of width 32 on
16 px toy images in pixel space, so every run takes a few seconds."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from printed_text import check_printed, record_text

import udit.stop
from udit import paths
from udit.data.toy import generate_toy_data
from udit.distributed import DistInfo
from udit.errors import UserError
from udit.models import create_model
from udit.stop import EXIT_STOPPED
from udit.training import store
from udit.training.determinism import DataOrder, LabelDropControl, StepBatchSampler, draw_samples
from udit.training.ema import make_ema, update_ema
from udit.training.loop import NonFiniteLossError, TrainOptions, main, train

TINY_KW = {"hidden_size": 32, "depth": 2, "num_heads": 2}  # DiT-S/2 shrunk to ~0.1 M parameters
TINY_UDIT_KW = {"hidden_size": 16, "num_heads": 2, "depths": (1, 1, 1, 1, 1)}  # U-DiT-S shrunk
IMAGE_SIZE = 16
NUM_CLASSES = 4
BATCH = 8
N = 3  # checkpoint step of the kill test; the full run is 2N
KILL_TIMEOUT_S = 60
REPO = Path(__file__).resolve().parents[1]


def _cli_args(run_dir, data, **extra) -> list[str]:
    args = [
        "--model",
        "DiT-S/2",
        "--run-dir",
        str(run_dir),
        "--images",
        str(data),
        "--pixel",
        "--image-size",
        str(IMAGE_SIZE),
        "--num-classes",
        str(NUM_CLASSES),
        "--global-batch",
        str(BATCH),
        "--log-every",
        "2",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--model-kw",
        *[f"{k}={v}" for k, v in TINY_KW.items()],
    ]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _options(run_dir, data, **extra) -> TrainOptions:
    kw = {
        "model": "DiT-S/2",
        "run_dir": str(run_dir),
        "images": str(data),
        "pixel": True,
        "image_size": IMAGE_SIZE,
        "num_classes": NUM_CLASSES,
        "global_batch": BATCH,
        "log_every": 2,
        "num_workers": 0,
        "device": "cpu",
        "model_kw": dict(TINY_KW),
    }
    return TrainOptions(**{**kw, **extra})


def _weights(path) -> dict:
    return store.load_checkpoint_state(path)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    return env


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    generate_toy_data(out=str(root), num_classes=NUM_CLASSES, per_class=5, size=IMAGE_SIZE, seed=0)
    return root  # 20 images: 2 batches per epoch, so 2N steps cross epoch boundaries


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory) -> Path:
    """The uninterrupted 2N-step run every interrupted variant must reproduce."""
    run = tmp_path_factory.mktemp("reference")
    result = train(_options(run, toy, total_steps=2 * N, ckpt_every=N))
    return Path(result["checkpoint"])


def test_a_checkpoint_records_its_run_as_read(reference):
    """What a checkpoint says of its run besides the tensors, held key by key
    (tests/printed/records/): the options that made it, the data order's position and identity,
    AdamW's hyper-parameters, how per-sample noise is seeded. A person or a tool resuming,
    sampling or auditing the run reads these."""
    ckpt = torch.load(reference, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "ema", "opt", "step", "args", "rng", "data"}
    (group,) = ckpt["opt"]["param_groups"]
    record = {
        "step": ckpt["step"],
        "args": ckpt["args"],
        "data": ckpt["data"],
        "adamw": {k: group[k] for k in ("lr", "betas", "eps", "weight_decay")},
        "rng": {"ranks": len(ckpt["rng"]["ranks"]), "per_sample": ckpt["rng"]["per_sample"]},
    }
    varies = {"args.run_dir", "args.images"}  # pytest's temporary folders
    check_printed(record_text(record, varies=varies), "records/checkpoint.json")


def test_the_progress_bar_counts_from_the_resumed_step_and_shows_the_loss(toy, tmp_path, capsys):
    """What a person watches: a bar on stderr from the step a run resumes at to its end, with
    the last logged loss; every log line carries the learning rate the optimiser used."""
    run = tmp_path / "run"
    train(_options(run, toy, total_steps=2, ckpt_every=2, lr=3e-4))
    capsys.readouterr()
    train(_options(run, toy, total_steps=4, ckpt_every=2, lr=3e-4))  # resumes at step 2
    bar = capsys.readouterr().err.split("\r")[-1].strip()
    lines = [json.loads(line) for line in (run / paths.TRAIN_LOG).read_text().splitlines()]
    assert bar.startswith("100%") and " 4/4 [" in bar, bar
    assert bar.endswith(f"loss={lines[-1]['loss']:.4f}]"), bar
    assert [(e["step"], e["lr"]) for e in lines] == [(2, 3e-4), (4, 3e-4)]


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_step_exact_resume_after_sigkill(toy, reference, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "udit.training.loop",
        *_cli_args(run, toy, total_steps=2 * N, ckpt_every=N, pause_after_ckpt=KILL_TIMEOUT_S),
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sidecar = run / paths.CKPT_DIR / (paths.checkpoint_name(N) + store.SIDECAR_SUFFIX)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not sidecar.exists():
        assert proc.poll() is None, f"trainer exited early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "checkpoint N never appeared"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert [s for s, _ in store.list_checkpoints(run)] == [N]  # killed before step 2N
    # A torn write of a later checkpoint (no sidecar, truncated pickle) must be skipped.
    (run / paths.CKPT_DIR / paths.checkpoint_name(N + 1)).write_bytes(b"PK\x03\x04 truncated")

    with pytest.warns(UserWarning, match="skipping invalid checkpoint"):
        result = train(_options(run, toy, total_steps=2 * N, ckpt_every=N))
    assert result["step"] == 2 * N
    got, want = _weights(result["checkpoint"]), _weights(reference)
    assert got["step"] == want["step"] == 2 * N
    assert _max_diff(got["model"], want["model"]) <= 1e-6
    assert _max_diff(got["ema"], want["ema"]) <= 1e-6
    assert got["data"] == want["data"]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 2 * N  # no duplicate lines after the resume


def _train_cmd(run, toy, **extra) -> list[str]:
    return [sys.executable, "-m", "udit.training.loop", *_cli_args(run, toy, **extra)]


def _one_thread_env() -> dict:
    return {**_env(), "OMP_NUM_THREADS": "1"}  # one summation order: bitwise comparisons


@pytest.fixture(scope="module")
def cli_reference(toy, tmp_path_factory) -> dict:
    """An uninterrupted `udit train` subprocess of 2N steps (no checkpoint before the end)."""
    run = tmp_path_factory.mktemp("cli-reference")
    cmd = _train_cmd(run, toy, total_steps=2 * N, ckpt_every=100)
    out = subprocess.run(cmd, env=_one_thread_env(), capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return _weights(run / paths.CKPT_DIR / paths.checkpoint_name(2 * N))


# SIGUSR1: launch.sh's warning before a SLURM job's end; SIGTERM (any scheduler's) runs in CI
@pytest.mark.parametrize(
    "sig", [signal.SIGUSR1, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_stop_signal_checkpoints_that_step_and_the_rerun_is_bitwise_the_same(
    toy, cli_reference, tmp_path, sig
):
    """A cluster's warning signal mid-run: the step in flight finishes, a checkpoint of exactly
    that step is written (no scheduled one is due: ckpt_every 100), the exit code asks for a
    retry, and the same command run again ends with the uninterrupted run's weights, bitwise."""
    run = tmp_path / "run"
    cmd = _train_cmd(run, toy, total_steps=2 * N, ckpt_every=100, log_every=1)
    proc = subprocess.Popen(
        [*cmd, "--pause-after-step", "2"],
        env=_one_thread_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    log = run / paths.TRAIN_LOG
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not (log.exists() and log.read_text().strip()):
        assert proc.poll() is None, f"trainer exited early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no step logged"
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=KILL_TIMEOUT_S) == EXIT_STOPPED
    err = proc.stderr.read().decode()
    logged = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    steps = [s for s, _ in store.list_checkpoints(run)]
    assert steps == [logged[-1]] and 1 <= steps[0] < 2 * N, (steps, logged)  # that exact step
    saved = run / paths.CKPT_DIR / paths.checkpoint_name(steps[0])
    said = f"{signal.Signals(sig).name}: stopped after step {steps[0]} and saved {saved} (rank 0); "
    assert said + "run the same command again to resume from it" in err, err[-2000:]
    assert store.verify_checkpoint(store.list_checkpoints(run)[0][1]) is None

    again = subprocess.run(cmd, env=_one_thread_env(), capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {steps[0]}" in again.stderr  # resumed from the stop checkpoint
    got = _weights(run / paths.CKPT_DIR / paths.checkpoint_name(2 * N))
    for part in ("model", "ema"):
        for key, want in cli_reference[part].items():
            assert torch.equal(got[part][key], want), (part, key)
    opt_got, opt_want = got["opt"]["state"], cli_reference["opt"]["state"]
    assert opt_got.keys() == opt_want.keys() and opt_want
    for key, state in opt_want.items():  # Adam moments and step counts too
        assert all(torch.equal(opt_got[key][k], v) for k, v in state.items()), key


def test_time_based_checkpoint(toy, tmp_path, monkeypatch):
    """checkpoint_minutes: a checkpoint once that much time has passed since the last one,
    besides the scheduled ones, and the rotation (keep_last) still applies. The stop module's
    clock is replaced by one that advances 25 s per reading: due at steps 3 and 6."""

    class Clock:
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            cls.now += 25.0
            return cls.now

    monkeypatch.setattr(udit.stop, "time", Clock)
    run = tmp_path / "run"
    opts = _options(run, toy, total_steps=7, ckpt_every=100, keep_last=3, checkpoint_minutes=1)
    assert train(opts)["step"] == 7
    assert [s for s, _ in store.list_checkpoints(run)] == [3, 6, 7]
    quiet = tmp_path / "quiet"
    train(_options(quiet, toy, total_steps=7, ckpt_every=100, keep_last=3, checkpoint_minutes=0))
    assert [s for s, _ in store.list_checkpoints(quiet)] == [7]


def test_grad_accum_run_matches_the_one_batch_run(toy, reference, tmp_path, monkeypatch):
    """--grad-accum 4: every step runs as 4 micro-batches of 2 (seen by the step function) and
    the run ends with the reference run's weights (float32 rounding)."""
    from udit.training import loop

    seen, real = [], loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda **kw: seen.append(kw["accum"]) or real(**kw))
    result = train(_options(tmp_path / "run", toy, total_steps=2 * N, ckpt_every=N, grad_accum=4))
    assert seen == [4] * (2 * N)
    got, want = _weights(result["checkpoint"]), _weights(reference)
    assert _max_diff(got["model"], want["model"]) <= 1e-6
    assert _max_diff(got["ema"], want["ema"]) <= 1e-6
    with pytest.raises(ValueError, match="not divisible by --grad-accum 3"):
        _options(tmp_path / "bad", toy, total_steps=1, grad_accum=3).validate()


@pytest.mark.slow
def test_a_compiled_run_trains_the_same_weights_and_saves_the_plain_keys(toy, tmp_path):
    """--compile (torch.compile, inductor on CPU: about a minute) changes speed, not the run:
    the same weights within float32 rounding, and checkpoints keyed like an uncompiled model's
    (no `_orig_mod.` prefix), so sampling loads them."""
    plain = train(_options(tmp_path / "plain", toy, total_steps=2, ckpt_every=2))
    compiled = train(
        _options(tmp_path / "compiled", toy, total_steps=2, ckpt_every=2, compile=True)
    )
    got, want = _weights(compiled["checkpoint"]), _weights(plain["checkpoint"])
    assert list(got["model"]) == list(want["model"]) and list(got["ema"]) == list(want["ema"])
    assert _max_diff(got["model"], want["model"]) <= 1e-6
    assert _max_diff(got["model"], want["ema"]) > 0  # weights moved


def test_stop_at_and_milestones_take_any_step_from_1_to_total(toy, tmp_path):
    """--stop-at and --milestones may be 1 or --total-steps itself; 0 and total + 1 are refused,
    naming the flag (past the total: and the range)."""
    opts = _options(tmp_path / "run", toy, total_steps=6)
    for step in (1, 6):
        replace(opts, stop_at=step, milestones=(step,)).validate()
    for step in (0, 7):
        with pytest.raises(UserError, match="^--stop-at ") as err:
            replace(opts, stop_at=step).validate()
        assert step == 0 or str(err.value) == "--stop-at 7 must lie in [1, --total-steps 6]"
        with pytest.raises(UserError, match="^--milestones must be steps in \\[1, --total-steps 6"):
            replace(opts, milestones=(3, step)).validate()


def test_stop_at_then_continue_equals_one_run(toy, reference, tmp_path):
    """The 400K -> 1M flow: a node stops at a milestone, a later node continues the same run."""
    run = tmp_path / "run"
    first = train(
        _options(run, toy, total_steps=2 * N, ckpt_every=100, stop_at=N - 1, milestones=(N - 1,))
    )
    assert first["step"] == N - 1
    final = train(_options(run, toy, total_steps=2 * N, ckpt_every=100, milestones=(N - 1,)))
    assert _max_diff(_weights(final["checkpoint"])["model"], _weights(reference)["model"]) <= 1e-6
    assert paths.checkpoint_name(N - 1) in os.listdir(run / paths.CKPT_DIR)  # milestone kept
    again = train(_options(run, toy, total_steps=2 * N))  # already done: trains nothing
    assert again["step"] == 2 * N


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy, reference, tmp_path, capsys):
    """A NaN at step N+1 stops the run before its log line or any later checkpoint; checkpoint N
    stays byte-identical, and re-running (no NaN) resumes from it to the uninterrupted result."""
    run = tmp_path / "run"
    bad_step = N + 1  # after checkpoint N, before the next log line (log_every=2) and ckpt 2N
    with pytest.raises(
        NonFiniteLossError, match=rf"non-finite loss at step {bad_step} \(loss=nan, mse=nan, vb="
    ):
        train(_options(run, toy, total_steps=2 * N, ckpt_every=N, inject_nan_at=bad_step))
    assert [s for s, _ in store.list_checkpoints(run)] == [N]
    good = run / paths.CKPT_DIR / paths.checkpoint_name(N)
    assert store.verify_checkpoint(good) is None
    digest = store.sha256_file(good)
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2] and all(
        torch.isfinite(torch.tensor(r["loss"])) for r in logged
    )
    # The CLI path: same stop, exit status 1, a message naming the step and the newest checkpoint.
    code = main(_cli_args(run, toy, total_steps=2 * N, ckpt_every=N, inject_nan_at=N + 2))
    err = capsys.readouterr().err
    assert code == 1 and f"non-finite loss at step {N + 2}" in err and good.name in err
    assert store.sha256_file(good) == digest  # untouched by both failed attempts
    assert [s for s, _ in store.list_checkpoints(run)] == [N]
    final = train(_options(run, toy, total_steps=2 * N, ckpt_every=N))
    assert _max_diff(_weights(final["checkpoint"])["model"], _weights(reference)["model"]) <= 1e-6


@pytest.mark.parametrize(
    ("log_every", "ckpt_every"), [(1, 2), (2, 1)], ids=["at-a-log-step", "at-a-checkpoint-step"]
)
def test_a_nan_stop_names_the_newest_checkpoint(toy, tmp_path, log_every, ckpt_every):
    """A NaN at step 3 is caught by whichever check comes first, the log line's (log every
    step) or the checkpoint's (log every 2nd step, checkpoint every step); both name checkpoint 2,
    the one a re-run resumes from, in a run folder whose parents did not exist yet."""
    run = tmp_path / "not" / "made" / "yet"
    opts = _options(run, toy, total_steps=4, log_every=log_every, ckpt_every=ckpt_every)
    with pytest.raises(NonFiniteLossError) as err:
        train(replace(opts, inject_nan_at=3))
    newest = run / paths.CKPT_DIR / paths.checkpoint_name(2)
    assert str(err.value).startswith("non-finite loss at step 3 (loss=nan, ")
    assert str(err.value).endswith(
        f"; the newest checkpoint is {newest} (re-running resumes from it)"
    )
    assert (
        store.list_checkpoints(run)[-1] == (2, newest) and store.verify_checkpoint(newest) is None
    )


def test_resume_refuses_changed_recipe(toy, tmp_path):
    run = tmp_path / "run"
    train(_options(run, toy, total_steps=1, ckpt_every=1))
    with pytest.raises(ValueError, match="global_batch"):
        train(_options(run, toy, total_steps=2, ckpt_every=1, global_batch=4))


def test_latent_cache_and_online_vae_modes(toy, tmp_path):
    """Both latent paths build a 4-channel model at image_size / VAE factor and train (3 s: in
    the fast suite, where mutation testing sees it)."""
    from udit.data import extract_latents, save_tiny_vae

    vae = save_tiny_vae(out_dir=str(tmp_path / "vae"), seed=0)  # factor 4: 16 px -> 4x4 latents
    cache = tmp_path / "cache"
    extract_latents(images=str(toy), out=str(cache), image_size=IMAGE_SIZE, vae=vae, progress=False)
    common = {"pixel": False, "total_steps": 2, "ckpt_every": 2}
    runs = {
        "latents": _options(
            tmp_path / "lat", toy, **{**common, "images": None, "latents": str(cache)}
        ),
        "vae": _options(tmp_path / "vae-run", toy, **common, vae=vae),
    }
    for kind, opts in runs.items():
        result = train(opts)
        assert result["kind"] == kind
        state = _weights(result["checkpoint"])
        assert state["model"]["x_embedder.proj.weight"].shape == (TINY_KW["hidden_size"], 4, 2, 2)
        log = [
            json.loads(line) for line in (Path(opts.run_dir) / "log.jsonl").read_text().splitlines()
        ]
        assert log[-1]["step"] == 2 and 0 < log[-1]["loss"] < 10
    with pytest.raises(ValueError, match="extracted at 16 px"):
        train(
            _options(
                tmp_path / "bad",
                toy,
                **{**common, "images": None, "latents": str(cache), "image_size": 32},
            )
        )


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_world_size_two_matches_one(toy, tmp_path):
    """torchrun 2 x CPU/gloo with the global batch split in two == 1 process with the whole
    batch."""
    single = train(_options(tmp_path / "one", toy, total_steps=1, ckpt_every=1))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "udit.training.loop",
        *_cli_args(tmp_path / "two", toy, total_steps=1, ckpt_every=1),
    ]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    two = _weights(tmp_path / "two" / paths.CKPT_DIR / paths.checkpoint_name(1))
    one = _weights(single["checkpoint"])
    assert len(two["rng"]["ranks"]) == 2
    torch.manual_seed(
        0
    )  # the trainer's rank-0 seed (seed 0 * world_size + 0): same initial weights
    init = create_model(
        "DiT-S/2", input_size=IMAGE_SIZE, in_channels=3, num_classes=NUM_CLASSES, **TINY_KW
    )
    assert (
        _max_diff(one["model"], init.state_dict()) > 1e-5
    )  # the step moved the weights (Adam: ~lr)
    assert _max_diff(two["model"], one["model"]) <= 1e-6
    assert _max_diff(two["ema"], one["ema"]) <= 1e-6


def _worker_pid(agent_pid: int, rank: int) -> int | None:
    """PID of the torchrun worker with RANK=rank among the agent's children (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == agent_pid and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rank 1", "agent"])
def test_stop_signal_on_one_rank_stops_every_rank_after_the_same_step(
    toy, reference, tmp_path, target
):
    """Only rank 1 gets SIGUSR1: the flags are all-reduced, so both ranks leave after the same
    step, rank 0 writes its checkpoint, and a rerun finishes like the uninterrupted run.
    'agent': SIGUSR1 to torchrun itself, which passes it on to both ranks when told to
    (torchrun --signals-to-handle, set through PET_SIGNALS_TO_HANDLE as launch.sh does)."""
    run = tmp_path / "run"
    args = _cli_args(run, toy, total_steps=2 * N, ckpt_every=100, log_every=1)
    args += ["--stop-poll-every", "2"]  # the ranks agree at even steps only
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd = [*launch, "2", "-m", "udit.training.loop", *args]
    env = {**_env(), "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}
    proc = subprocess.Popen(
        [*cmd, "--pause-after-step", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    log = run / paths.TRAIN_LOG
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no step logged"
        time.sleep(0.05)
    os.kill(proc.pid if target == "agent" else _worker_pid(proc.pid, 1), signal.SIGUSR1)
    assert proc.wait(timeout=120) != 0  # the agent reports its workers' exit 75
    err = proc.stderr.read().decode()
    assert "SIGUSR1: stopped after step" in err, err[-3000:]
    if target == "rank 1":  # rank 0 got no signal: it stopped on the all-reduced flag
        assert "another rank's stop signal: stopped after step" in err, err[-3000:]
    logged = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert [s for s, _ in store.list_checkpoints(run)] == [logged[-1]]
    assert logged[-1] < 2 * N and logged[-1] % 2 == 0
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    got = _weights(run / paths.CKPT_DIR / paths.checkpoint_name(2 * N))
    assert _max_diff(got["model"], _weights(reference)["model"]) <= 1e-6


@pytest.mark.parametrize("start, stop", [(3, 11), (0, 1), (5, 5), (7, 2)])
def test_a_loader_over_steps_yields_as_many_batches_as_its_length(start, stop):
    """A DataLoader over StepBatchSampler(start, stop): one batch per step, its len() the
    number of batches it yields (0 for an empty or reversed stretch), each the step's indices."""
    order = DataOrder(num_items=40, global_batch=8, world_size=1, rank=0, seed=3)
    loader = torch.utils.data.DataLoader(
        range(40), batch_sampler=StepBatchSampler(order, start, stop), collate_fn=list
    )
    batches = list(loader)
    assert len(loader) == len(batches) == max(stop - start, 0)
    assert batches == [order.local_indices(step) for step in range(start, stop)]


def test_global_batch_split_is_rank_independent():
    one = DataOrder(num_items=40, global_batch=8, world_size=1, rank=0, seed=3)
    halves = [
        DataOrder(num_items=40, global_batch=8, world_size=2, rank=r, seed=3) for r in range(2)
    ]
    for step in (0, 4, 5, 11):  # 5 batches per epoch: crosses epoch boundaries
        assert one.local_indices(step) == halves[0].local_indices(step) + halves[1].local_indices(
            step
        )
    assert one.position(11) == {"epoch": 2, "index": 1, "batches_per_epoch": 5}
    kw = {
        "seed": 0,
        "step": 7,
        "shape": (3, 4, 4),
        "num_timesteps": 1000,
        "num_embedders": 3,
        "drop_prob": 0.1,
        "latent": True,
        "flip_prob": 0.5,
    }
    whole = draw_samples(offset=0, count=8, **kw)
    parts = [draw_samples(offset=o, count=4, **kw) for o in (0, 4)]
    for name in ("noise", "t", "latent_noise", "label_drop", "flip"):
        assert torch.equal(getattr(whole, name), torch.cat([getattr(p, name) for p in parts]))
    assert not torch.equal(
        whole.noise[0], draw_samples(offset=0, count=1, **{**kw, "step": 8}).noise[0]
    )
    with pytest.raises(ValueError, match="not divisible by world size"):
        DataOrder(num_items=40, global_batch=9, world_size=2, rank=0, seed=0)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("DiT-S/2", TINY_KW),
        ("U-DiT-S", TINY_UDIT_KW),
        ("U-DiT-S", {**TINY_UDIT_KW, "shared_label_drop": True}),  # one coin for all
    ],
)  # fmt: skip
def test_label_dropout_follows_trainer_mask(name, kw):
    """The trainer's per-sample coins decide which labels every LabelEmbedder drops (DiT passes
    force_drop by keyword-less default, the U-shaped model positionally)."""
    torch.manual_seed(0)
    model = create_model(name, input_size=8, in_channels=3, num_classes=NUM_CLASSES, **kw)
    with torch.no_grad():  # adaLN-Zero starts as the identity: perturb so labels matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    control = LabelDropControl(model)
    embedders = [m for m in model.modules() if type(m).__name__ == "LabelEmbedder"]
    assert len(control) == (1 if kw.get("shared_label_drop") else len(embedders))
    x, t, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 200, 500, 900]), torch.tensor([0, 1, 2, 3])
    drop = torch.tensor([True, False, True, False])
    control.masks = drop[:, None].expand(4, len(control))
    model.train()
    got = model(x, t, y)
    model.eval()
    want = model(x, t, torch.where(drop, NUM_CLASSES, y))  # null class where the coin says drop
    torch.testing.assert_close(got, want)
    assert not torch.allclose(want, model(x, t, y))  # the labels do change the output


def _force_drops_seen(model, control) -> list[torch.Tensor]:
    """The force_drop each of the model's LabelEmbedders receives in one training forward."""
    seen = []

    def capture(module, args, kwargs):
        seen.append(args[1] if len(args) >= 2 else kwargs.get("force_drop"))

    for k in control.embedders:  # after the control's hooks: sees what they passed on
        k.register_forward_pre_hook(capture, with_kwargs=True)
    x, t, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 200, 500, 900]), torch.tensor([0, 1, 2, 3])
    model.train()
    model(x, t, y)
    return seen


def test_each_label_embedder_drops_by_its_own_column_of_coins():
    """The official U-shaped model drops labels independently at each width: embedder k takes
    column k of the trainer's coins (shared_label_drop: column 0 for all)."""
    model = create_model("U-DiT-S", input_size=8, in_channels=3, num_classes=4, **TINY_UDIT_KW)
    control = LabelDropControl(model)
    assert len(control) == len(control.embedders) == 3 and control.drop_prob == 0.1
    control.masks = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    seen = _force_drops_seen(model, control)
    assert [m.tolist() for m in seen] == [control.masks[:, k].tolist() for k in range(3)]


def test_a_model_without_label_dropout_has_no_coins():
    """class_dropout_prob 0 (no guidance training): no embedder to control, probability 0, and
    training forwards leave the labels alone."""
    model = create_model(
        "DiT-S/2", input_size=8, in_channels=3, num_classes=4, class_dropout_prob=0.0, **TINY_KW
    )
    control = LabelDropControl(model)
    assert (len(control), control.drop_prob, control.embedders) == (0, 0.0, [])


def test_label_embedders_that_disagree_on_the_probability_are_refused():
    model = create_model("U-DiT-S", input_size=8, in_channels=3, num_classes=4, **TINY_UDIT_KW)
    model.y_embedder_2.dropout = 0.2
    with pytest.raises(ValueError) as err:
        LabelDropControl(model)
    assert str(err.value) == "label embedders disagree on dropout probability: [0.1, 0.2]"


# ----------------------------------------------------------------------------- EMA


def test_ema_starts_as_exact_copy_and_follows_decay():
    torch.manual_seed(0)
    model = create_model("DiT-S/2", input_size=8, in_channels=3, num_classes=NUM_CLASSES, **TINY_KW)
    ema = make_ema(model)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    assert _max_diff(ema.state_dict(), model.state_dict()) == 0.0
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    decay = 0.9
    update_ema(ema, model, decay)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ema.state_dict()[name], decay * before[name] + (1 - decay) * p)


# ----------------------------------------------------------------------------- checkpoint store


def test_rotation_keeps_last_k_and_milestones(tmp_path):
    for step in range(1, 11):
        store.save_checkpoint(
            {"step": step, "w": torch.full((2,), float(step))},
            run_dir=tmp_path,
            step=step,
            keep_last=2,
            milestones=(4, 7),
        )
    assert [s for s, _ in store.list_checkpoints(tmp_path)] == [4, 7, 9, 10]
    leftovers = {p.name for p in (tmp_path / paths.CKPT_DIR).iterdir()}
    assert leftovers == {
        paths.checkpoint_name(s) + suffix
        for s in (4, 7, 9, 10)
        for suffix in ("", store.SIDECAR_SUFFIX)
    }  # no temp files, no orphans


def test_corrupt_checkpoint_is_skipped(tmp_path):
    for step in (1, 2, 3):
        store.save_checkpoint(
            {"step": step, "w": torch.randn(64)}, run_dir=tmp_path, step=step, keep_last=5
        )
    newest = tmp_path / paths.CKPT_DIR / paths.checkpoint_name(3)
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated after the sidecar was written
    middle = tmp_path / paths.CKPT_DIR / paths.checkpoint_name(2)
    data = bytearray(middle.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit: torch.load might not notice, the hash does
    middle.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step, path = store.find_latest(tmp_path)
    assert step == 1 and store.load_checkpoint_state(path)["step"] == 1
    assert sum("skipping invalid checkpoint" in str(w.message) for w in caught) == 2


def test_a_checkpoint_without_its_sidecar_is_trusted_if_it_loads(tmp_path):
    """A job killed between the checkpoint and its .sha256 sidecar leaves a whole file with no
    digest: it is used if torch.load reads it, skipped (naming why) if it is torn."""
    for step in (1, 2):
        store.save_checkpoint({"step": step}, run_dir=tmp_path, step=step, keep_last=5)
    ckpts = tmp_path / paths.CKPT_DIR
    for step in (1, 2):
        (ckpts / (paths.checkpoint_name(step) + store.SIDECAR_SUFFIX)).unlink()
    assert store.verify_checkpoint(ckpts / paths.checkpoint_name(2)) is None
    assert store.find_latest(tmp_path) == (2, ckpts / paths.checkpoint_name(2))
    torn = ckpts / paths.checkpoint_name(2)
    torn.write_bytes(torn.read_bytes()[:-10])
    assert store.verify_checkpoint(torn).startswith("no sidecar and torch.load failed: ")


class MkdirOnLoad:
    """Unpickled without weights_only, it creates `marker`: code a file runs when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_sidecar_less_checkpoint_is_checked_without_running_its_pickle(tmp_path):
    """The sidecar-less check loads the file to see it is whole: with weights_only, so a file
    that would run code when unpickled is refused, and nothing runs."""
    marker = tmp_path / "ran"
    store.save_checkpoint({"step": 2, "x": MkdirOnLoad(marker)}, run_dir=tmp_path, step=2,
                          keep_last=5)  # fmt: skip
    ckpt = tmp_path / paths.CKPT_DIR / paths.checkpoint_name(2)
    (ckpt.parent / (ckpt.name + store.SIDECAR_SUFFIX)).unlink()
    problem = store.verify_checkpoint(ckpt)
    assert problem.startswith("no sidecar and torch.load failed: ")
    assert not marker.exists()


def test_a_latent_cache_inside_the_run_dir_is_refused_by_its_flag(tmp_path):
    """Training checks its own inputs by flag: a latent cache inside --run-dir (rotation or a
    fresh run could delete it) is refused before anything is written."""
    from udit.outputs import OutputClashError

    run = tmp_path / "run"
    run.mkdir()
    (run / "latents").mkdir()
    (run / "latents" / "manifest.json").write_text("{}")  # refused before it is read
    opts = _options(
        run, None, images=None, pixel=False, latents=str(run / "latents"), total_steps=1
    )
    with pytest.raises(OutputClashError) as err:
        train(opts)
    assert str(err.value).startswith(f"--run-dir {run} holds the input --latents {run / 'latents'}")
    assert sorted(p.name for p in run.iterdir()) == ["latents"]


# ----------------------------------------------------------------------------- CLI


def test_cli_validates_and_dry_runs(toy, tmp_path, capsys):
    assert main(_cli_args(tmp_path / "r", toy, total_steps=5) + ["--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (
        printed["model_kw"] == TINY_KW and printed["lr"] == 1e-4 and printed["ema_decay"] == 0.9999
    )
    assert main(_cli_args(tmp_path / "r", toy, total_steps=5, stop_at=9)) == 2
    assert "--stop-at 9" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_options(tmp_path / "r", toy, total_steps=1, global_batch=64))


def test_a_dag_node_drops_later_checkpoints_once_and_train_ends_it(toy, tmp_path, capsys):
    """train.smk's node: `udit begin-node` on the first attempt drops checkpoint files past the
    node's start (a --forcerun retrains that stretch), a requeued attempt (marker left) keeps
    them, and `udit train` reaching --stop-at removes the marker."""
    from udit.training import node, store

    run = tmp_path / "run"
    ckpts = run / paths.CKPT_DIR
    ckpts.mkdir(parents=True)
    names = [paths.checkpoint_name(s) for s in (2, 4, 6)]
    for name in names:
        for suffix in ("", store.SIDECAR_SUFFIX, store.CORRUPT_SUFFIX):
            (ckpts / (name + suffix)).write_bytes(b"x")
    (ckpts / "notes.txt").write_text("kept")
    assert node.main(["--run-dir", str(run), "--step", "6", "--from", "2"]) == 0
    left = sorted(p.name for p in ckpts.iterdir())
    assert left == sorted(["notes.txt", *(names[0] + s for s in ("", ".sha256", ".corrupt"))])
    assert node.node_marker(run, 6).exists()
    gone = sorted(name + s for name in names[1:] for s in ("", ".sha256", ".corrupt"))
    said = capsys.readouterr().err.splitlines()  # one line per removed file, naming it
    assert said == [f"removed {ckpts / g} (past step 2: this node retrains it)" for g in gone]
    (ckpts / names[2]).write_bytes(b"x")  # the interrupted attempt got this far
    assert node.main(["--run-dir", str(run), "--step", "6", "--from", "2"]) == 0  # requeue
    assert (ckpts / names[2]).exists()
    assert node.main(["--run-dir", str(run), "--step", "2", "--from", "2"]) == 2
    assert "--from 2 must be below --step 2" in capsys.readouterr().err

    fresh = tmp_path / "fresh"
    assert node.main(["--run-dir", str(fresh), "--step", str(N), "--from", "0"]) == 0
    assert node.node_marker(fresh, N).exists()
    assert main(_cli_args(fresh, toy, total_steps=2 * N, ckpt_every=100, stop_at=N)) == 0
    assert not node.node_marker(fresh, N).exists()
    assert paths.checkpoint_name(N) in os.listdir(fresh / paths.CKPT_DIR)


def test_resuming_with_other_model_options_is_refused_naming_them(toy, tmp_path, capsys):
    """--resume PATH, a checkpoint of another run, with other model options: refused before any
    step, naming each option as trained and as asked, even where the weights would load (the
    label dropout changes no shape); a checkpoint of another model is refused the same way."""
    assert main(_cli_args(tmp_path / "a", toy, total_steps=2, ckpt_every=2)) == 0
    ckpt = tmp_path / "a" / paths.CKPT_DIR / paths.checkpoint_name(2)
    capsys.readouterr()
    other = _cli_args(tmp_path / "b", toy, total_steps=4, resume=ckpt)
    other.insert(other.index("--model-kw") + 1, "class_dropout_prob=0.2")
    assert main(other) == 2
    err = capsys.readouterr().err.strip()
    asked = {"class_dropout_prob": 0.2, **TINY_KW}
    assert err.endswith(
        f"--resume {ckpt}: trained with other model options (model_kw: {TINY_KW!r} there, "
        f"{asked!r} here); resume it with those options or use another checkpoint"
    ), err
    args = _cli_args(tmp_path / "c", toy, total_steps=4, resume=ckpt)
    args[args.index("DiT-S/2")] = "DiT-S/4"
    assert main(args) == 2
    assert "(model: 'DiT-S/2' there, 'DiT-S/4' here)" in capsys.readouterr().err
    assert not list((tmp_path / "b").rglob("ckpt-*")) and not list((tmp_path / "c").rglob("ckpt-*"))


def test_a_checkpoint_of_another_world_size_reseeds_the_global_rngs(capsys):
    """Resumed on as many ranks as saved, each rank gets its own global RNG state back; on
    another number of ranks they are left re-seeded and the main rank says so."""
    from types import SimpleNamespace

    from udit.training import determinism, store

    torch.manual_seed(1)
    saved = [determinism.capture_rng(), determinism.capture_rng()]
    want = torch.rand(3)  # rank 0 of 2 draws this after resuming
    torch.manual_seed(2)
    saved[1]["torch"] = torch.get_rng_state()
    store._restore_rank_rngs(saved, SimpleNamespace(world_size=2, rank=0, is_main=True))
    assert torch.equal(torch.rand(3), want) and capsys.readouterr().err == ""
    torch.manual_seed(5)
    other = torch.rand(3)
    torch.manual_seed(5)
    store._restore_rank_rngs(saved, SimpleNamespace(world_size=1, rank=0, is_main=True))
    assert torch.equal(torch.rand(3), other)  # left as it was
    assert capsys.readouterr().err == (
        "note: checkpoint from 2 ranks, now 1: global RNGs re-seeded (per-sample noise and data "
        "order unaffected)\n"
    )
    store._restore_rank_rngs(saved, SimpleNamespace(world_size=4, rank=3, is_main=False))
    assert capsys.readouterr().err == ""  # said once, by the main rank


def test_a_checkpoint_without_its_options_that_does_not_fit_names_the_weights(
    toy, tmp_path, capsys
):
    """A checkpoint recording no model options (older or foreign): the options cannot be
    compared, so the weights that do not fit are named, with the options it does record."""
    from udit.training import store

    assert main(_cli_args(tmp_path / "a", toy, total_steps=2, ckpt_every=2)) == 0
    state = store.load_checkpoint_state(tmp_path / "a" / paths.CKPT_DIR / paths.checkpoint_name(2))
    del state["args"]["model_kw"], state["args"]["model"]
    ckpt = store.save_checkpoint(state, run_dir=tmp_path / "old", step=2, keep_last=1)
    capsys.readouterr()
    args = _cli_args(tmp_path / "b", toy, total_steps=4, resume=ckpt)
    args[args.index("hidden_size=32")] = "hidden_size=48"
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    trained = {k: v for k, v in state["args"].items() if k in store.RESUME_SHOWN}
    assert f"--resume {ckpt}: its weights do not fit this run's model (" in err
    assert err.endswith(
        f"); it was trained with {trained}; resume it with those options or use another checkpoint"
    )
    assert "size mismatch" in err and "Error(s) in loading" not in err  # torch's last line


def test_a_run_folder_refuses_other_options_once_it_holds_a_checkpoint(toy, tmp_path, capsys):
    """Re-running a command resumes its folder: with a checkpoint there, other trajectory
    options are refused naming each change; a folder left before its first checkpoint starts
    afresh with the new options."""
    run = tmp_path / "run"
    assert main(_cli_args(run, toy, total_steps=2, ckpt_every=2)) == 0
    capsys.readouterr()
    other = _cli_args(run, toy, total_steps=4, seed=7)
    assert main(other) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"{run} holds a run with different options (seed: 0 -> 7); use another --run-dir or "
            "the original options"
        )
    )
    for path in (run / paths.CKPT_DIR).iterdir():  # as if killed before its first checkpoint
        path.unlink()
    assert main(_cli_args(run, toy, total_steps=2, ckpt_every=2, seed=7)) == 0


def _terms(loss: float, mse: float, vb: float) -> dict:
    """Per-sample loss terms of one step (mean = the given values)."""
    return {
        k: torch.tensor([v - 1.0, v + 1.0]) for k, v in (("loss", loss), ("mse", mse), ("vb", vb))
    }


ONE_PROCESS = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_a_log_line_holds_the_means_of_its_window(tmp_path, monkeypatch):
    """The training curve's numbers: each JSONL line is the mean of each loss term over the
    steps since the previous line, the window starts over after it, and the throughput is
    steps x global batch over the window's seconds."""
    from udit.training.loop import LossWindow

    clock = iter([100.0, 104.0, 104.0, 110.0, 110.0])  # window 1: 4 s, window 2: 6 s
    monkeypatch.setattr("udit.training.loop.time.perf_counter", lambda: next(clock))
    info = ONE_PROCESS
    window = LossWindow(torch.device("cpu"))
    for step, (loss, mse, vb) in enumerate([(1.0, 0.5, 0.25), (3.0, 1.5, 0.75)], start=1):
        window.add(_terms(loss, mse, vb), done=step)
        window.check_finite(info, last_path=None)
    kw = {"grad_norm": torch.tensor(0.5), "lr": 1e-4, "global_batch": 8, "run_dir": tmp_path}
    assert window.log(info, done=2, **kw) == 2.0
    window.add(_terms(5.0, 2.5, 1.25), done=3)
    assert window.log(info, done=3, **kw) == 5.0
    lines = [json.loads(x) for x in (tmp_path / paths.TRAIN_LOG).read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k != "time"} for line in lines] == [
        {"step": 2, "loss": 2.0, "mse": 1.0, "vb": 0.5, "grad_norm": 0.5, "lr": 1e-4,
         "images_per_sec": 2 * 8 / 4.0},
        {"step": 3, "loss": 5.0, "mse": 2.5, "vb": 1.25, "grad_norm": 0.5, "lr": 1e-4,
         "images_per_sec": 1 * 8 / 6.0},
    ]  # fmt: skip


def test_the_first_non_finite_step_is_the_one_reported(tmp_path):
    from udit.training.loop import LossWindow

    info = ONE_PROCESS
    window = LossWindow(torch.device("cpu"))
    window.add(_terms(1.0, 0.5, 0.25), done=1)
    window.check_finite(info, last_path=None)  # finite: nothing said
    window.add(_terms(float("nan"), 0.5, 0.25), done=2)
    window.add(_terms(2.0, float("inf"), 0.25), done=3)  # a later one does not replace it
    with pytest.raises(NonFiniteLossError) as err:
        window.check_finite(info, last_path=tmp_path / "ckpt-0000001.pt")
    assert str(err.value) == (
        "non-finite loss at step 2 (loss=nan, mse=0.5, vb=0.25); stopped before logging or "
        f"saving anything after it; the newest checkpoint is {tmp_path / 'ckpt-0000001.pt'} "
        "(re-running resumes from it)"
    )
    with pytest.raises(NonFiniteLossError, match="; no checkpoint was written \\(re-running"):
        window.check_finite(info, last_path=None)


def test_each_resume_mode_and_what_it_says(toy, tmp_path, capsys):
    """--resume auto (newest valid checkpoint, said on stderr; none valid: a warning and a fresh
    start), never (a fresh start whose log replaces the old one), PATH (must exist and verify;
    its data position must be this run's)."""
    run = tmp_path / "run"
    assert main(_cli_args(run, toy, total_steps=2, ckpt_every=2, log_every=1)) == 0
    ckpt = run / paths.CKPT_DIR / paths.checkpoint_name(2)
    capsys.readouterr()
    assert main(_cli_args(run, toy, total_steps=4, ckpt_every=2, log_every=1)) == 0
    assert f"resumed from {ckpt} at step 2" in capsys.readouterr().err
    steps = [json.loads(x)["step"] for x in (run / paths.TRAIN_LOG).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    never = _cli_args(run, toy, total_steps=2, ckpt_every=2, resume="never", log_every=1)
    assert main(never) == 0
    assert "resumed from" not in capsys.readouterr().err
    steps = [json.loads(x)["step"] for x in (run / paths.TRAIN_LOG).read_text().splitlines()]
    assert steps == [1, 2]  # the old lines went with the fresh start

    for path in (run / paths.CKPT_DIR).glob("ckpt-*.pt"):
        path.write_bytes(b"torn")  # every checkpoint invalid
    with pytest.warns(UserWarning, match="skipping invalid checkpoint"):
        assert main(_cli_args(run, toy, total_steps=2, ckpt_every=2)) == 0
    assert (
        f"warning: no valid checkpoint in {run}; starting from scratch" in capsys.readouterr().err
    )

    missing = tmp_path / "nope.pt"
    assert main(_cli_args(tmp_path / "b", toy, total_steps=4, resume=missing)) == 2
    assert f"--resume {missing}: not a usable checkpoint (missing)" in capsys.readouterr().err
    other = _cli_args(tmp_path / "c", toy, total_steps=4, resume=ckpt, global_batch=4)
    assert main(other) == 2
    assert "(dataset or batch size changed)" in capsys.readouterr().err


def test_a_finished_run_has_nothing_to_do(toy, tmp_path, capsys):
    run = tmp_path / "run"
    first = train(_options(run, toy, total_steps=2, ckpt_every=2))
    capsys.readouterr()
    again = train(_options(run, toy, total_steps=2, ckpt_every=2))
    assert again == {"step": 2, "kind": "pixels", "checkpoint": first["checkpoint"]}
    assert capsys.readouterr().err.strip().endswith("nothing to do: at step 2, stop at 2")


def test_each_sample_draw_depends_on_the_seed_the_step_and_the_sample():
    """Per-sample draws are a function of (seed, step, global sample index): changing any one
    changes the noise and the timestep (here all four samples' at once)."""
    kw = {"seed": 0, "step": 7, "offset": 0, "count": 4, "shape": (3, 4, 4), "num_timesteps": 1000,
          "num_embedders": 0, "drop_prob": 0.1, "latent": False, "flip_prob": 0.5}  # fmt: skip
    base = draw_samples(**kw)
    assert base.label_drop.shape == (4, 0) and base.latent_noise is None
    for change in ({"seed": 1}, {"step": 8}, {"offset": 4}):
        other = draw_samples(**{**kw, **change})
        assert not torch.equal(other.noise, base.noise), change
        assert not torch.equal(other.t, base.t), change


def test_stale_temp_cleanup_names_at_most_four_files(tmp_path, capsys):
    """A killed job's temp files are deleted and the message lists four of them, then ' ...'."""
    ckpts = tmp_path / paths.CKPT_DIR
    ckpts.mkdir()
    for n in (4, 5):
        for p in ckpts.glob("*"):
            p.unlink()
        names = [f".ckpt-{i}.pt.{i:04d}.tmp" for i in range(n)]
        for name in names:
            (ckpts / name).write_bytes(b"x")
        capsys.readouterr()
        assert [p.name for p in store.remove_stale_temp(tmp_path)] == names
        listed = ", ".join(names[:4]) + (" ..." if n > 4 else "")
        assert capsys.readouterr().err == (
            f"removed {n} temp file(s) a killed job left in {tmp_path}: {listed}\n"
        )
        assert not list(ckpts.iterdir())


def test_run_options_are_written_with_sorted_keys(tmp_path):
    """options.json is compared and read by people: keys in order, whatever the dict's order."""
    store.write_json_atomic(tmp_path / "o.json", {"seed": 1, "lr": 2, "model": "x"})
    assert list(json.loads((tmp_path / "o.json").read_text())) == ["lr", "model", "seed"]
