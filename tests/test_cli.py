"""`udit` dispatches every registered command to an importable module's main()."""

import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from udit.cli import COMMANDS, main
from udit.errors import UserError


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_fails_clearly(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_module_has_main(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.main)


def test_console_script_installed():
    # The `udit` entry point is what the README and the DAG call.
    proc = subprocess.run(
        [sys.executable, "-m", "udit.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "flops" in proc.stdout


def _speed_main(argv):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("speed", path)
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed.main(argv)


@pytest.mark.parametrize(
    "command", ["train", "sample", "evaluate", "build-reference", "extract-latents", "speed.py"]
)
def test_every_computing_command_takes_one_device_convention(command, capsys):
    """--device auto|cpu|cuda|cuda:N, default auto, on every command that computes; anything
    else is refused at parsing, naming the flag (in process: argparse exits before any work)."""
    run = _speed_main if command == "speed.py" else lambda argv: main([command, *argv])
    with pytest.raises(SystemExit) as shown:
        run(["--help"])
    assert shown.value.code == 0
    assert "auto (CUDA when available)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as bad:
        run(["--device", "gpu"])
    assert bad.value.code == 2
    assert "--device: must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_pick_device_reads_the_convention():
    import torch

    from udit.distributed import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    auto = pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda:1: CUDA is not available"):
            pick_device("cuda:1")


def test_sample_flags_default_to_the_options_dataclass(capsys):
    """`udit sample` with only its required flags gives SampleOptions' own defaults: the flags
    state none of their own (a flag's `default=` could drift, e.g. DDIM's eta to 1.0, and only
    a run with `--sampler ddim` and no `--eta` would see it)."""
    from udit.cli import options_of, parse_args
    from udit.sampling.cli import build_parser
    from udit.sampling.options import SampleOptions

    args = parse_args(build_parser(), ["--checkpoint", "c.pt", "--out", "o.npz"], SampleOptions)
    assert options_of(args, SampleOptions) == SampleOptions(checkpoint="c.pt", out="o.npz")
    # each field's flag is spelled as the field ('--vae' for vae): --options keys and the DAG's
    # JSON (udit.dag) reach a field only through the flag of its name
    flags = {o: a.dest for a in build_parser()._actions for o in a.option_strings}
    for field in dataclasses.fields(SampleOptions):  # every option is a flag
        assert flags.get(f"--{field.name.replace('_', '-')}") == field.name, field.name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "DDIM eta (0: deterministic) (default: 0.0)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("flag", ["--sampler", "--labels", "--weights", "--precision"])
def test_sample_refuses_an_unknown_choice_before_loading_anything(flag, capsys):
    from udit.sampling.cli import main as sample_main

    with pytest.raises(SystemExit) as exit_info:
        sample_main(["--checkpoint", "missing.pt", "--out", "o.npz", flag, "bogus"])
    assert exit_info.value.code == 2
    assert (
        f"udit sample: error: argument {flag}: invalid choice: 'bogus'" in capsys.readouterr().err
    )


def test_train_flags_default_to_the_options_dataclass():
    """The same for `udit train` (its flags read TrainOptions' defaults as `d.*`)."""
    from udit.cli import options_of, parse_args
    from udit.training.loop import TrainOptions, build_parser

    argv = ["--model", "DiT-S/2", "--run-dir", "r", "--total-steps", "5", "--latents", "l"]
    args = parse_args(build_parser(), argv, TrainOptions)
    want = TrainOptions(model="DiT-S/2", run_dir="r", total_steps=5, latents="l")
    assert options_of(args, TrainOptions) == want


def test_train_milestones_flag_reads_a_comma_list(capsys):
    """`udit train --milestones`: steps in any order, blanks and float spellings allowed,
    sorted to ints; anything else stops at parsing naming what was given."""
    from udit.cli import parse_args
    from udit.training.loop import TrainOptions, build_parser

    argv = ["--model", "DiT-S/2", "--run-dir", "r", "--total-steps", "9", "--latents", "l"]
    args = parse_args(build_parser(), [*argv, "--milestones", " 8, 2,,4e0 "], TrainOptions)
    assert args.milestones == (2, 4, 8)
    with pytest.raises(SystemExit) as stop:
        parse_args(build_parser(), [*argv, "--milestones", "4,x"], TrainOptions)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--milestones: expected comma-separated steps like 400000,1000000, got '4,x'" in err


# Every TrainOptions field at a value other than its default, as a user would type it
TRAIN_VALUES = {
    "model": "DiT-S/2", "run_dir": "r", "total_steps": 9, "latents": None, "images": "i",
    "pixel": True, "vae": "v", "global_batch": 16, "grad_accum": 2, "lr": 5e-05,
    "weight_decay": 0.01, "ema_decay": 0.99, "seed": 3, "num_classes": 7, "image_size": 64,
    "model_kw": {"depth": 2, "ffn": "rep"}, "ckpt_every": 5, "keep_last": 3,
    "checkpoint_minutes": 7.5, "stop_poll_every": 11, "milestones": (3, 6), "stop_at": 6,
    "resume": "never", "precision": "bf16", "compile": True, "log_every": 4, "num_workers": 1,
    "device": "cpu", "pause_after_ckpt": 0.5, "pause_after_step": 0.25, "inject_nan_at": 2,
}  # fmt: skip


def _typed(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is True:
        return [flag]
    if name == "model_kw":
        return [flag, *(f"{k}={v}" for k, v in value.items())]
    if name == "milestones":
        return [flag, ",".join(map(str, value))]
    return [] if value is None else [flag, str(value)]


def test_every_train_flag_carries_its_value_typed_into_the_options():
    """Each `udit train` flag, given a non-default value, lands in its TrainOptions field with
    the field's type: a renamed flag, a dropped type= or a value read into another field shows."""
    from udit.cli import options_of, parse_args
    from udit.training.loop import TrainOptions, build_parser

    assert set(TRAIN_VALUES) == {f.name for f in dataclasses.fields(TrainOptions)}
    defaults = TrainOptions(model="", run_dir="", total_steps=1)
    for name, value in TRAIN_VALUES.items():
        if name not in ("model", "run_dir", "total_steps", "latents"):
            assert getattr(defaults, name) != value, name  # a default would prove nothing
    argv = [word for name, value in TRAIN_VALUES.items() for word in _typed(name, value)]
    got = options_of(parse_args(build_parser(), argv, TrainOptions), TrainOptions)
    assert got == TrainOptions(**TRAIN_VALUES)
    for f in dataclasses.fields(TrainOptions):
        assert type(getattr(got, f.name)) is type(TRAIN_VALUES[f.name]), f.name


@pytest.mark.parametrize("dropped", ["model", "run_dir", "total_steps", "images"])
def test_train_refuses_a_command_without_a_required_flag(dropped, capsys):
    from udit.cli import parse_args
    from udit.training.loop import TrainOptions, build_parser

    values = {k: TRAIN_VALUES[k] for k in ("model", "run_dir", "total_steps", "images")}
    argv = [w for name, v in values.items() if name != dropped for w in _typed(name, v)]
    with pytest.raises(SystemExit) as stop:
        parse_args(build_parser(), argv, TrainOptions)
    assert stop.value.code == 2
    flags = ["--latents", "--images"] if dropped == "images" else ["--" + dropped.replace("_", "-")]
    err = capsys.readouterr().err
    assert "required" in err and all(flag in err for flag in flags), err


def test_model_kw_words_read_as_json_then_yaml():
    """--model-kw KEY=VALUE words: JSON values as typed, YAML bare words as strings, the first
    '=' splits, blanks around the key go; a value that is neither is refused naming it."""
    from udit.models.spec import parse_model_kw

    words = ["a=1", "b=rep", "c=[1, 2]", "d=true", "e=null", "f=x=y", " g = 2.5", "h=2e-4"]
    assert parse_model_kw(words) == {
        "a": 1, "b": "rep", "c": [1, 2], "d": True, "e": None, "f": "x=y", "g": 2.5, "h": 2e-4
    }  # fmt: skip
    for bad, said in (("k=[1,", "neither JSON nor YAML"), ("=1", "expects key=value")):
        with pytest.raises(UserError) as err:
            parse_model_kw([bad])
        assert repr(bad) in str(err.value) and said in str(err.value)


@pytest.mark.parametrize(
    "field, value, said",
    [("lr", -1.0, "--lr "), ("ema_decay", 1.5, "--ema-decay "),
     ("num_workers", -2, "--num-workers "), ("stop_poll_every", 0, "--stop-poll-every ")],
)  # fmt: skip
def test_options_out_of_range_are_refused_by_validate_naming_the_flag(tmp_path, field, value, said):
    """TrainOptions from `--options` JSON or the Python API skip argparse's ranges:
    validate() checks them, naming the flag a user would fix; --pixel needs --images."""
    from udit.training.loop import TrainOptions

    base = {"model": "DiT-S/2", "run_dir": "r", "total_steps": 4, "images": str(tmp_path)}
    TrainOptions(**base).validate()  # in range: fine
    with pytest.raises(UserError) as err:
        TrainOptions(**base, **{field: value}).validate()
    assert str(err.value).startswith(said), str(err.value)
    (tmp_path / "manifest.json").write_text("{}")
    latents = {**base, "images": None, "latents": str(tmp_path), "pixel": True}
    with pytest.raises(UserError, match="^--pixel trains on images: it needs --images DIR, not"):
        TrainOptions(**latents).validate()


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`udit plan | head -1`: the reader closes the pipe before the plan is printed. The command
    exits 141 (a shell's code for SIGPIPE) and prints nothing on stderr, not a BrokenPipeError
    traceback, and not one from the interpreter's last flush."""
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "udit.plan", "--configfile", "config/paper.yaml"],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the plan is ready (~2 s): its first write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""


SHORT_OUTPUT = """
import sys
from udit.errors import command_main

@command_main("short")
def main(argv):
    print("one line, still in stdout's buffer when main returns")
    return 0

sys.exit(main([]))
"""


def test_a_closed_pipe_met_at_the_last_flush_is_quiet_too():
    """Short output sits in stdout's buffer until the flush: the closed pipe shows then, and the
    interpreter's own flush at exit must not report it either."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a buffer, as usual
    proc = subprocess.Popen(
        [sys.executable, "-c", SHORT_OUTPUT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert stderr == ""
