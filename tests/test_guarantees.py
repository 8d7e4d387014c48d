"""The guarantees every command gives (issue 19), each tested as a kind, not as one case:
outputs never clobber inputs or finished results, one writer per output, OS faults and Ctrl-C
end in one line, values out of range fail at parsing with the flag named, messages stay short.

Generated cases (Hypothesis) spell the same file many ways (relative, `..`, symlink, hard link)
and feed values at and past every bound; fault tests use a real tmpfs (root) and real signals.
"""

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_inputs_faults import (
    assert_refused,
    snapshot,
    train_argv,
    write_ckpt,
)
from test_bad_inputs_faults import sample_argv as tiny_sample_argv

from udit import argtypes, distributed, errors, outputs, stop
from udit.data.toy import generate_toy_data
from udit.metrics import evaluate
from udit.sampling.cli import main as sample_main
from udit.training.loop import main as train_main

ROOT = Path(__file__).resolve().parents[1]
FEW = settings()  # the suite's Hypothesis profile (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def spell(target: Path, how: str, scratch: Path) -> Path:
    """Another path that names the file `target`."""
    if how == "same":
        return target
    if how == "dotdot":
        return target.parent / "sub" / ".." / target.name
    if how == "dot":
        return target.parent / "." / target.name
    link = scratch / f"{how}-{target.name}"
    link.unlink(missing_ok=True)
    if how == "symlink":
        link.symlink_to(target)
    else:  # hard link: another name, the same inode
        os.link(target, link)
    return link


SPELLINGS = st.sampled_from(["same", "dotdot", "dot", "symlink", "hardlink"])


# ----------------------------------------------------------------------------- outputs vs inputs


@FEW
@given(role=st.sampled_from(["--samples", "--reference", "--inception-weights"]), how=SPELLINGS)
def test_evaluate_refuses_an_out_that_is_one_of_its_inputs(tmp_path, capsys, role, how):
    d = tmp_path / f"{role.strip('-')}-{how}"
    (d / "sub").mkdir(parents=True, exist_ok=True)
    files = {
        "--samples": d / "s.npz",
        "--reference": d / "r.npz",
        "--inception-weights": d / "w.pth",
    }
    for i, path in enumerate(files.values()):
        path.write_bytes(f"input {i}".encode())
    before = snapshot(d)
    argv = [x for flag, path in files.items() for x in (flag, str(path))]
    argv += ["--out", str(spell(files[role], how, d / "sub")), "--device", "cpu"]
    before = snapshot(d)
    err = assert_refused(evaluate.main(argv), capsys, "--out", role, "would destroy")
    assert len(err.strip().splitlines()) == 1
    assert snapshot(d) == before


@FEW
@given(how=SPELLINGS, which=st.sampled_from(["--grid", "--out"]))
def test_sample_refuses_outputs_that_alias_the_checkpoint(tmp_path, capsys, how, which):
    d = tmp_path / f"{which.strip('-')}-{how}"
    (d / "sub").mkdir(parents=True, exist_ok=True)
    ckpt = write_ckpt(d / "ckpt.pt")
    alias = spell(ckpt, how, d / "sub")
    out = alias if which == "--out" else d / "s.npz"
    argv = tiny_sample_argv(ckpt, out, *(["--grid", str(alias)] if which == "--grid" else []))
    before = snapshot(d)
    code = sample_main(argv)
    if which == "--out" and alias.suffix != ".npz":  # the suffix rule speaks first: also fine
        assert_refused(code, capsys, ".npz")
    else:
        assert_refused(code, capsys, which, "--checkpoint")
    assert snapshot(d) == before


def test_sample_refuses_a_grid_equal_to_its_out(tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "ckpt.pt")
    out = tmp_path / "s.npz"
    code = sample_main(tiny_sample_argv(ckpt, out, "--grid", str(out)))
    assert_refused(code, capsys, "--out and --grid are the same file")
    assert not out.exists()


def test_check_refuses_an_output_in_an_unwritable_or_missing_place(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(outputs.OutputClashError, match="is a folder"):
        outputs.check(inputs={}, outputs={"--out": tmp_path})
    with pytest.raises(outputs.OutputClashError, match="is a file; name a folder"):
        outputs.check(inputs={}, outputs={"--run-dir": tmp_path / "file"}, folders=("--run-dir",))
    with pytest.raises(outputs.OutputClashError, match="holds the input --latents"):
        outputs.check(
            inputs={"--latents": tmp_path / "run" / "lat"},
            outputs={"--run-dir": tmp_path / "run"},
            folders=("--run-dir",),
        )


# ----------------------------------------------------------------------------- finished results


@pytest.fixture
def finished(tmp_path):
    """A finished tiny samples file (seed 0) and its checkpoint."""
    ckpt = write_ckpt(tmp_path / "ckpt.pt")
    out = tmp_path / "s.npz"
    assert sample_main(tiny_sample_argv(ckpt, out)) == 0
    return ckpt, out


def test_sample_over_a_finished_result_with_other_options_is_refused_naming_them(finished, capsys):
    ckpt, out = finished
    before = snapshot(out.parent)
    capsys.readouterr()
    code = sample_main(tiny_sample_argv(ckpt, out, "--seed", "7"))
    err = assert_refused(code, capsys, str(out), "seed", "--overwrite")
    assert "0 -> 7" in err
    assert snapshot(out.parent) == before
    # the same options: a no-op; --overwrite: replaced by the seed-7 samples
    assert sample_main(tiny_sample_argv(ckpt, out)) == 0
    assert snapshot(out.parent) == before
    assert sample_main(tiny_sample_argv(ckpt, out, "--seed", "7", "--overwrite")) == 0
    assert json.loads(Path(f"{out}.json").read_text())["config"]["seed"] == 7


@pytest.mark.parametrize("foreign", ["npz", "text"])
def test_sample_never_replaces_a_file_it_did_not_make(tmp_path, capsys, foreign):
    ckpt = write_ckpt(tmp_path / "ckpt.pt")
    out = tmp_path / "ref.npz"
    if foreign == "npz":
        np.savez(out, arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=np.zeros(4))
    else:
        out.write_text("precious")
    before = snapshot(tmp_path)
    assert_refused(sample_main(tiny_sample_argv(ckpt, out)), capsys, str(out), "not a result")
    assert snapshot(tmp_path) == before


def test_evaluate_refuses_to_replace_a_file_that_is_not_its_metrics(tmp_path, capsys):
    files = {"--samples": "s.npz", "--reference": "r.npz", "--inception-weights": "w.pth"}
    argv = []
    for flag, name in files.items():
        (tmp_path / name).write_bytes(name.encode())
        argv += [flag, str(tmp_path / name)]
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    before = snapshot(tmp_path)
    code = evaluate.main([*argv, "--out", str(tmp_path / "notes.json"), "--device", "cpu"])
    assert_refused(code, capsys, "notes.json", "not a result")
    assert snapshot(tmp_path) == before


def test_replace_result_compares_options_by_value_nan_included(tmp_path):
    path = tmp_path / "r"
    path.write_text("x")
    same = {"cfg": float("nan"), "kw": {"a": 1e-6, "b": None}}
    assert outputs.replace_result(
        path, flag="--out", options=same, recorded=lambda p: dict(same), overwrite=False
    )
    with pytest.raises(outputs.OutputClashError, match="kw"):
        outputs.replace_result(
            path,
            flag="--out",
            options={**same, "kw": {"a": 1e-5}},
            recorded=lambda p: dict(same),
            overwrite=False,
        )


# ----------------------------------------------------------------------------- one writer


HOLD = """
import sys, time
from udit.outputs import locked
with locked(sys.argv[1], flag="--out"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_lock(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_never_blocks(
    tmp_path, capsys
):
    toy = tmp_path / "toy"
    generate_toy_data(out=str(toy), num_classes=4, per_class=2, size=16, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    holder = hold_lock(run)
    try:
        code = train_main(train_argv(run, toy, total_steps=1))
        assert_refused(code, capsys, "--run-dir", str(run), f"PID {holder.pid}")
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died holding the lock (SIGKILL): its lock file may remain, and must not block
    outputs.lock_file(run).write_text("PID 1 on host gone\n")
    assert train_main(train_argv(run, toy, total_steps=1)) == 0
    assert not outputs.lock_file(run).exists()


def test_lock_is_exclusive_across_processes_and_released_on_exit(tmp_path):
    target = tmp_path / "out.npz"
    holder = hold_lock(target)
    try:
        with (
            pytest.raises(outputs.LockedError, match=f"PID {holder.pid} on host"),
            outputs.locked(target),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with outputs.locked(target) as lock:
        assert lock.exists()
    assert not lock.exists()


# ----------------------------------------------------------------------------- values in range


def cli_parsers():
    from udit.metrics.evaluate import main as _  # noqa: F401  (imports the parsers' modules)
    from udit.sampling.cli import build_parser as sample_parser
    from udit.training.loop import build_parser as train_parser

    base_train = ["--model", "DiT-S/2", "--run-dir", "r", "--latents", "l", "--total-steps", "4"]
    return {
        "train": (train_parser(), base_train),
        "sample": (sample_parser(), ["--checkpoint", "c.pt", "--out", "o.npz"]),
    }


BOUNDED_FLAGS = {
    "train": {
        "--lr": ["0", "-1e-4", "nan", "inf", "2", "x"],
        "--ema-decay": ["1", "2", "-0.1", "nan", "1.0000001"],
        "--weight-decay": ["-1", "nan", "-inf"],
        "--total-steps": ["0", "-1", "1.5", "1e9999", "100000001"],
        "--global-batch": ["0", "-8"],
        "--num-classes": ["0", "100001"],
        "--image-size": ["0", "4097"],
        "--checkpoint-minutes": ["-1", "nan"],
        "--num-workers": ["-1", "257"],
        "--seed": ["-1"],
    },
    "sample": {
        "--cfg-scale": ["nan", "inf", "-1", "0.5"],
        "--num-samples": ["0", "1000000000000", "-5"],
        "--steps": ["0", "1001"],
        "--batch-size": ["0"],
        "--eta": ["-0.5", "nan"],
        "--seed": ["-3", "abc"],
    },
}


@FEW
@given(data=st.data())
def test_every_out_of_range_value_fails_at_parsing_naming_its_flag(capsys, data):
    command = data.draw(st.sampled_from(sorted(BOUNDED_FLAGS)))
    flag = data.draw(st.sampled_from(sorted(BOUNDED_FLAGS[command])))
    value = data.draw(st.sampled_from(BOUNDED_FLAGS[command][flag]))
    parser, base = cli_parsers()[command]
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*base, f"{flag}={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and "Traceback" not in err


@FEW
@given(lr=st.floats(min_value=1e-8, max_value=1.0), decay=st.floats(0, 0.999999))
def test_in_range_values_parse_to_themselves(lr, decay):
    parser, base = cli_parsers()["train"]
    args = parser.parse_args([*base, "--lr", repr(lr), "--ema-decay", repr(decay)])
    assert (args.lr, args.ema_decay) == (lr, decay)


# ----------------------------------------------------------------------------- messages, OS faults


@FEW
@given(
    code=st.sampled_from(sorted(errors.OS_FAULT_FIXES)),
    name=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=40,
    ),
)
def test_an_os_fault_on_any_path_is_one_line_naming_the_path(capsys, code, name):
    @errors.command_main("udit probe")
    def main(argv):
        raise OSError(code, os.strerror(code), name)

    assert main([]) == errors.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("udit probe: error: ") and "Traceback" not in err
    assert err.count("\n") == 1 and errors.shown(name) in err  # escaped if unprintable


@FEW
@given(lines=st.integers(0, 5000), width=st.integers(1, 3000))
def test_no_error_message_is_longer_than_a_screen(capsys, lines, width):
    @errors.command_main("udit probe")
    def main(argv):
        raise errors.BadValueError("\n".join(["x" * width] * max(lines, 1)))

    assert main([]) == 2
    err = capsys.readouterr().err
    assert len(err) <= errors.MAX_MESSAGE_CHARS + 100
    assert err.count("\n") <= errors.MAX_MESSAGE_LINES + 1


def test_an_unknown_os_error_is_still_a_bug_with_its_traceback():
    @errors.command_main("udit probe")
    def main(argv):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError):
        main([])


def test_run_dir_through_a_symlink_loop_is_one_line(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    toy = tmp_path / "toy"
    generate_toy_data(out=str(toy), num_classes=4, per_class=2, size=16, seed=0)
    code = train_main(train_argv(tmp_path / "a" / "run", toy, total_steps=1))
    assert_refused(code, capsys, "symbolic links")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root only; CI runs as root and sets UDIT_REQUIRE_MOUNT=1)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=False)
    if proc.returncode:
        if os.environ.get("UDIT_REQUIRE_MOUNT") == "1":
            pytest.fail("UDIT_REQUIRE_MOUNT=1 but a tmpfs could not be mounted (needs root)")
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_checkpoint_is_refused_before_writing_naming_both_sizes(
    small_disk, tmp_path, capsys
):
    toy = tmp_path / "toy"
    generate_toy_data(out=str(toy), num_classes=4, per_class=2, size=16, seed=0)
    run = small_disk / "run"
    code = train_main(train_argv(run, toy, total_steps=2, ckpt_every=1))
    err = assert_refused(code, capsys, "not enough free space", "needed", "free")
    assert len([ln for ln in err.splitlines() if "udit train: error" in ln]) == 1
    assert not list((run / "checkpoints").glob("*.tmp")) if (run / "checkpoints").exists() else True


def test_read_only_output_folder_fails_before_any_work(small_disk, tmp_path, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    files = {"--samples": "s.npz", "--reference": "r.npz", "--inception-weights": "w.pth"}
    argv = []
    for flag, name in files.items():
        (tmp_path / name).write_bytes(name.encode())
        argv += [flag, str(tmp_path / name)]
    code = evaluate.main([*argv, "--out", str(small_disk / "m.json"), "--device", "cpu"])
    assert_refused(code, capsys, str(small_disk), "read-only or no permission")


# ----------------------------------------------------------------------------- interrupts


def test_ctrl_c_in_train_checkpoints_the_step_and_exits_75(tmp_path):
    toy = tmp_path / "toy"
    generate_toy_data(out=str(toy), num_classes=4, per_class=2, size=16, seed=0)
    run = tmp_path / "run"
    argv = train_argv(run, toy, total_steps=500, ckpt_every=1000, pause_after_step=0.3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "udit.cli", "train", *argv],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not (run / "log.jsonl").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == stop.EXIT_STOPPED, err
    assert "SIGINT received" in err and "Traceback" not in err
    saved = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    assert saved, err  # the steps done so far were kept, not thrown away


def test_ctrl_c_elsewhere_is_one_line_exit_130_and_nothing_partial(tmp_path, capsys):
    target = tmp_path / "m.json"
    target.write_text("old")

    @errors.command_main("udit probe")
    def main(argv):
        from udit.io import atomic_open

        with atomic_open(target, "w") as f:
            f.write("half")
            raise KeyboardInterrupt

    assert main([]) == errors.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.strip() == "udit probe: interrupted (Ctrl-C); no partial output was kept"
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["m.json"]


def test_ddp_stop_poll_synchronises_once_every_poll_every_steps(monkeypatch):
    calls = []

    def fake_all_reduce_max(tensor, info):
        calls.append(1)
        return tensor

    monkeypatch.setattr(distributed, "all_reduce_max", fake_all_reduce_max)
    info = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    flag = stop.StopFlag(poll_every=10)
    flag.signal = signal.SIGUSR1  # a signal arrived: it is acted on at the next poll step only
    results = [flag.poll(info, step) for step in range(1, 101)]
    assert len(calls) == 10  # 100 steps, one all-reduce per 10
    assert [s for s, (stop_now, _) in enumerate(results, 1) if stop_now] == list(range(10, 101, 10))
    single = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert flag.poll(single, 3) == (True, False)  # one process: every step, no communication


@pytest.mark.parametrize("finished", [True, False])
def test_launch_exits_0_when_the_command_finished_before_a_late_stop_signal(tmp_path, finished):
    """A job whose work ends inside its last stop_lead_s: the timer's SIGUSR1 reaches the
    processes on their way out (torchrun agents then exit 1). The command had marked its work
    done (udit.stop.mark_done), so launch.sh reports 0; without the mark the failure stands."""
    fake_python = tmp_path / "python"
    touch = 'echo "$$" > "$UDIT_DONE_FILE"; ' if finished else ""
    fake_python.write_text(f"#!/usr/bin/env bash\n{touch}kill -USR1 $$; exit 1\n")
    fake_python.chmod(0o755)
    launch = ROOT / "workflow" / "scripts" / "launch.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        ["bash", str(launch), "1", "0", "1", "0", str(fake_python), "train"],
        capture_output=True,
        check=False,
        text=True,
        env={**env, "TMPDIR": str(tmp_path)},
        timeout=60,
    )
    assert proc.returncode == (0 if finished else 138), proc.stderr
    assert not list(tmp_path.glob("udit-done.*"))  # the launcher cleans up its mark


def test_mark_done_writes_the_launchers_file_and_ignores_late_stop_signals(tmp_path):
    done = tmp_path / "done"
    code = (
        "import os, signal; from udit.stop import mark_done; mark_done(); "
        "os.kill(os.getpid(), signal.SIGUSR1); os.kill(os.getpid(), signal.SIGTERM)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env={**os.environ, "UDIT_DONE_FILE": str(done), "RANK": "0"},
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0 and done.read_text().strip().isdigit()


# ----------------------------------------------------------------------------- new kinds


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_an_input_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, capsys, kind):
    """A pipe would block the hash forever, /dev/zero never ends: refused by kind."""
    if kind == "fifo":
        odd = tmp_path / "odd.pt"
        os.mkfifo(odd)
    elif kind == "device":
        odd = Path("/dev/zero")
    else:
        odd = tmp_path / "odd.pt"
        odd.mkdir()
    ckpt = write_ckpt(tmp_path / "ckpt.pt")
    assert_refused(sample_main(tiny_sample_argv(odd, tmp_path / "s.npz")), capsys, str(odd))
    (tmp_path / "r.npz").write_bytes(b"r")
    argv = ["--samples", str(odd), "--reference", str(tmp_path / "r.npz")]
    argv += ["--inception-weights", str(ckpt), "--out", str(tmp_path / "m.json")]
    if kind != "folder":  # a folder is the npz loader's to name ("is a folder")
        assert_refused(evaluate.main(argv), capsys, str(odd), "not a regular file")


def test_a_run_dir_inside_the_image_tree_is_refused(tmp_path, capsys):
    toy = tmp_path / "toy"
    generate_toy_data(out=str(toy), num_classes=4, per_class=2, size=16, seed=0)
    before = snapshot(toy)
    code = train_main(train_argv(toy / "run", toy, total_steps=1))
    assert_refused(code, capsys, "--run-dir", "inside the input folder --images")
    assert snapshot(toy) == before


@FEW
@given(
    key=st.sampled_from(["depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio"]),
    value=st.sampled_from([0, -1, -32, 10**6, 10**12]),
)
def test_model_sizes_out_of_range_are_refused_before_anything_is_built(key, value):
    from udit.models import check_model_options

    with pytest.raises(errors.BadValueError, match=f"--model-kw {key}="):
        check_model_options("DiT-S/2", {key: value})


@FEW
@given(stage=st.integers(0, 4), value=st.sampled_from([-1, -32, 1025, 10**9]))
def test_a_per_stage_list_is_checked_item_by_item(stage, value):
    """`depths` is a list (one count per U-Net stage): each item has the bounds of a count, so
    one bad stage among good ones is refused naming the whole list."""
    from udit.models import check_model_options

    depths = [2, 5, 8, 5, 2]
    check_model_options("U-DiT-B", {"depths": depths})
    depths[stage] = value
    with pytest.raises(errors.BadValueError) as err:
        check_model_options("U-DiT-B", {"depths": depths})
    assert str(err.value).startswith(f"--model-kw depths={depths!r}: ")


def test_a_model_that_cannot_fit_in_memory_is_refused_with_both_sizes(monkeypatch, tmp_path):
    from udit import models

    tiny = {"input_size": 8, "in_channels": 3, "num_classes": 4}
    count = models.parameter_count("DiT-S/2", **tiny)

    def check():
        cpu = torch.device("cpu")
        return models.check_fits_memory(
            "DiT-S/2", device=cpu, bytes_per_param=20, what="training", **tiny
        )

    assert models.parameter_count("DiT-S/2", **tiny, depth=2) < count  # the options count
    monkeypatch.setattr(models, "memory_bytes", lambda device: 20 * count - 1)
    with pytest.raises(errors.BadValueError) as err:
        check()
    assert str(err.value) == (
        f"model DiT-S/2 with {{'num_classes': 4}} has {count / 1e6:,.0f}M parameters: training "
        f"needs at least {20 * count / 2**30:,.1f} GiB, cpu has {(20 * count - 1) / 2**30:,.1f} "
        "GiB; choose smaller model_kw or a device with more memory"
    )
    monkeypatch.setattr(models, "memory_bytes", lambda device: 20 * count)
    assert check() == count


@pytest.mark.parametrize("kw", ["hidden_size=30 num_heads=4", "hidden_size=32 patch_size=3"])
def test_a_model_its_constructor_refuses_is_one_line(tmp_path, capsys, kw):
    toy = tmp_path / "toy"
    generate_toy_data(out=str(toy), num_classes=4, per_class=2, size=16, seed=0)
    argv = train_argv(tmp_path / "run", toy, total_steps=1)
    argv += ["--model-kw", *kw.split()]  # the last --model-kw wins
    assert_refused(train_main(argv), capsys, "cannot be built", "--model-kw")


def test_a_bad_test_hook_in_the_environment_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UDIT_PAUSE_AFTER_STEP", "abc")
    code = train_main(train_argv(tmp_path / "run", tmp_path, total_steps=1))
    assert_refused(code, capsys, "UDIT_PAUSE_AFTER_STEP", "abc")


def test_an_error_raised_in_a_dataloader_worker_is_its_own_one_line(capsys):
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise errors.BadValueError(f"img/{i}.png: not a readable image")

    @errors.command_main("udit probe")
    def main(argv):
        for _ in torch.utils.data.DataLoader(Broken(), num_workers=1):
            pass

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == "udit probe: error: img/0.png: not a readable image\n"


# ------------------------------------------------------------------ every flag, every command


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each `udit` command's parser (and speed.py's), caught as its main() parses `--help`."""
    import importlib

    from udit.cli import COMMANDS

    mains = {name: importlib.import_module(module).main for name, (module, _) in COMMANDS.items()}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        mains["speed.py"] = importlib.import_module("speed").main
    finally:
        sys.path.pop(0)
    parsers = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        parsers[name] = self
        raise SystemExit(0)

    for name, main in mains.items():
        argparse.ArgumentParser.parse_args = capture
        try:
            main(["--help"])
        except SystemExit:
            pass
        finally:
            argparse.ArgumentParser.parse_args = original
    return parsers


PARSERS = command_parsers()


def numeric_actions():
    for command, parser in sorted(PARSERS.items()):
        for action in parser._actions:
            if isinstance(action.type, argtypes.Range):
                yield command, action


def test_every_command_was_found_and_no_numeric_flag_escapes_the_ranges():
    """A new flag with type=int or float (no range) fails here, whatever command it is in."""
    from udit.cli import COMMANDS

    assert set(PARSERS) == {*COMMANDS, "speed.py"}
    loose = [
        f"{command} {action.option_strings[0]}"
        for command, parser in PARSERS.items()
        for action in parser._actions
        if action.type in (int, float)
    ]
    assert not loose, f"numeric flags without an argtypes range: {loose}"
    assert len(list(numeric_actions())) > 40


# Commands whose work is cheap enough that a dry run would print what --help already says.
WITHOUT_DRY_RUN = {"plan", "report", "toy-data", "tiny-vae"}


def test_every_command_that_does_expensive_work_has_dry_run():
    """edm2's --dry-run: validate, print the options, exit 0, before any work (issue 21)."""
    missing = sorted(
        command
        for command, parser in PARSERS.items()
        if command not in WITHOUT_DRY_RUN
        and not any("--dry-run" in action.option_strings for action in parser._actions)
    )
    assert not missing, f"commands without --dry-run: {missing}"


def past_bounds(allowed: argtypes.Range) -> list[str]:
    """Values just past each bound, plus the non-numbers every range refuses."""
    step = 1 if allowed.kind == "int" else 1e-9
    bad = ["nan", "inf", "-inf", "", "1x", "0x10"]
    if allowed.low is not None:
        bad.append(repr(allowed.low if allowed.low_open else allowed.low - step))
    if allowed.high is not None:
        bad.append(repr(allowed.high if allowed.high_open else allowed.high + step))
    if allowed.kind == "int":
        bad += ["1.5", "1e3"]
    return bad


@FEW
@given(data=st.data())
def test_any_command_refuses_any_value_past_any_flags_range_at_parsing(capsys, data):
    command, action = data.draw(st.sampled_from(list(numeric_actions())))
    value = data.draw(st.sampled_from(past_bounds(action.type)))
    flag = action.option_strings[0]
    with pytest.raises(SystemExit) as exit_:
        PARSERS[command].parse_args([f"{flag}={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err
