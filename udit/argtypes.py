"""Values in range, in one place: the argument types of every CLI and the bounds of the config.

Each `Range` is both an argparse `type=` (a bad value fails at parsing, exit 2, with the flag
named: `argument --ema-decay: must be in [0, 1), got 2.0`) and the JSON-schema fragment the
config schema must carry for the same key (tests/test_argtypes.py checks
udit/schemas/config.schema.yaml against CONFIG_KEYS, so the two cannot drift apart).

    p.add_argument("--ema-decay", type=DECAY, default=0.9999)
"""

import argparse
import math
from dataclasses import dataclass

# Bounded work: counts a command may be asked for, far above any paper setting (FID-50K,
# 1000 classes, 7M steps) yet small enough that sizing arrays from them cannot exhaust memory.
MAX_SAMPLES = 10_000_000
MAX_STEPS = 100_000_000
MAX_CLASSES = 100_000
MAX_IMAGE_SIZE = 4096
MAX_BATCH = 1_000_000
MAX_WORKERS = 256


def _as_float(value) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class Range:
    """A number of `kind` ('int' or 'float') in [low, high] (or (low, high) where exclusive);
    None leaves a side open. Floats must be finite."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        lo = "-inf" if self.low is None else self._number(self.low)
        hi = "inf" if self.high is None else self._number(self.high)
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        what = "an integer" if self.kind == "int" else "a finite number"
        return f"{what} in {left}{lo}, {hi}{right}"

    def _number(self, bound: float) -> str:
        return str(int(bound)) if self.kind == "int" else f"{bound:g}"

    def check(self, value) -> str | None:
        """-> why `value` is out of range, or None."""
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return f"must be {self.describe()}, got {value!r}"
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be {self.describe()}, got {value!r}"
            if not math.isfinite(_as_float(value)):  # an int past float range counts as inf
                return f"must be {self.describe()}, got {value}"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        return f"must be {self.describe()}, got {value}" if below or above else None

    def __call__(self, text: str):
        """argparse type: parse `text` and check it; argparse names the flag in the error."""
        try:
            value = int(text) if self.kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        why = self.check(value)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value

    @property
    def __name__(self) -> str:  # argparse names the type in "invalid <type> value" messages
        return self.kind

    def schema(self) -> dict:
        """The JSON-schema fragment that states this range."""
        out = {"type": "integer" if self.kind == "int" else "number"}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return out


POSITIVE_INT = Range("int", 1)
NONNEG_INT = Range("int", 0)
SEED = Range("int", 0, 2**63 - 1)
STEPS = Range("int", 1, MAX_STEPS)
STEPS_OR_ZERO = Range("int", 0, MAX_STEPS)  # a step a run starts from: 0 is from scratch
SAMPLES = Range("int", 1, MAX_SAMPLES)
CLASSES = Range("int", 1, MAX_CLASSES)
REPLICATES = Range("int", 1, 100)  # training seeds per experiment
SAMPLE_SEEDS = Range("int", 1, 100)  # sampling seeds per evaluation
IMAGE_SIZE = Range("int", 1, MAX_IMAGE_SIZE)
BATCH = Range("int", 1, MAX_BATCH)
WORKERS = Range("int", 0, MAX_WORKERS)
FINITE = Range("float")
POSITIVE = Range("float", 0, low_open=True)
NONNEG = Range("float", 0)
PROBABILITY = Range("float", 0, 1)
DECAY = Range("float", 0, 1, high_open=True)  # EMA decay: 1 would never move, > 1 diverges
GUIDANCE = Range("float", 1)  # classifier-free guidance scale: 1 is none (the paper's range)
LEARNING_RATE = Range("float", 0, 1, low_open=True)

# Config keys (their leaf name under defaults / experiments / sampling) -> the range that both
# the schema and the CLI flag they become enforce.
CONFIG_KEYS = {
    "iterations": STEPS,
    "ckpt_every": STEPS,
    "log_every": STEPS,
    "global_batch": BATCH,
    "grad_accum": BATCH,
    "lr": LEARNING_RATE,
    "ema_decay": DECAY,
    "cfg": GUIDANCE,
    "fid_samples": SAMPLES,
    "sampling_steps": Range("int", 1, 1000),
    "num_classes": CLASSES,
    "image_size": IMAGE_SIZE,
    "checkpoint_minutes": NONNEG,
    "replicates": REPLICATES,
    "sample_seeds": SAMPLE_SEEDS,
}
