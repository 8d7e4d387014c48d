"""Where every DAG output lives: one scheme for the Snakefile, the trainer and the report.

    {results}/flops/flops.json                                    udit flops
    {results}/speed/speed.json                                    benchmarks/speed.py --json
    {results}/{experiment}/train/checkpoints/ckpt-{step}.pt       udit train (step: 7 digits)
    {results}/{experiment}/train/log.jsonl                        udit train
    {results}/{experiment}/samples/{step}-cfg{cfg}.npz | .png     udit sample
    {results}/{experiment}/metrics/{step}-cfg{cfg}.json           udit evaluate

`{step}-cfg{cfg}` is an evaluation tag ('0400000-cfg1.5'; 'released-cfg1.5' for an official
checkpoint). Every function returns a plain string so the Snakefile can pass wildcard
placeholders through: `samples(R, "{experiment}", "{step}-cfg{cfg}")`.
"""

import re

STEP_DIGITS = 7  # zero-padded like the official repos' 0400000.pt, so names sort by step
RELEASED_STEP = "released"  # step tag of an official checkpoint (no training node)
CKPT_DIR = "checkpoints"
CKPT_PATTERN = re.compile(rf"^ckpt-(\d{{{STEP_DIGITS},}})\.pt$")
TRAIN_LOG = "log.jsonl"  # one JSON object per logged step


def step_tag(step: int | str) -> str:
    """400000 -> '0400000'; a string (a wildcard such as '{step}', or 'released') passes through."""
    return step if isinstance(step, str) else f"{int(step):0{STEP_DIGITS}d}"


def cfg_tag(cfg: float) -> str:
    """One spelling per guidance scale: 1 -> '1.0', 1.5 -> '1.5'."""
    return str(float(cfg))


def eval_tag(step: int | str, cfg: float) -> str:
    """'0400000-cfg1.5': the file stem of one evaluation node's samples and metrics."""
    return f"{step_tag(step)}-cfg{cfg_tag(cfg)}"


def parse_eval_tag(tag: str) -> tuple[str, float]:
    """'0400000-cfg1.5' -> ('0400000', 1.5)."""
    match = re.fullmatch(rf"(\d{{{STEP_DIGITS}}}|{RELEASED_STEP})-cfg([0-9.]+)", tag)
    if not match:
        raise ValueError(f"not an evaluation tag: {tag!r}")
    return match.group(1), float(match.group(2))


def checkpoint_name(step: int | str) -> str:
    return f"ckpt-{step_tag(step)}.pt"


def train_dir(results, experiment: str) -> str:
    """The run folder `udit train --run-dir` writes (checkpoints, log, options)."""
    return f"{results}/{experiment}/train"


def checkpoint(results, experiment: str, step: int | str) -> str:
    return f"{train_dir(results, experiment)}/{CKPT_DIR}/{checkpoint_name(step)}"


def train_log(results, experiment: str) -> str:
    return f"{train_dir(results, experiment)}/{TRAIN_LOG}"


def samples(results, experiment: str, tag: str) -> str:
    return f"{results}/{experiment}/samples/{tag}.npz"


def grid(results, experiment: str, tag: str) -> str:
    return f"{results}/{experiment}/samples/{tag}.png"


def metrics(results, experiment: str, tag: str) -> str:
    return f"{results}/{experiment}/metrics/{tag}.json"


def flops(results) -> str:
    return f"{results}/flops/flops.json"


def speed(results) -> str:
    """Training/sampling speed measurement (benchmarks/speed.py --json): the report's Table 11."""
    return f"{results}/speed/speed.json"
