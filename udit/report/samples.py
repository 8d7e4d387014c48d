"""Samples over training (the paper's figures 9 and 10), cut from the grids `udit sample`
already writes: no extra sampling node, so it costs nothing in the smoke run.

Every evaluation of a run samples index i with the same seed and class (per-index seeds and
labels, udit.sampling), so the first row of each milestone's grid shows the same noise and
classes at every milestone: one strip row per milestone.
"""

import math
from pathlib import Path

import numpy as np
from PIL import Image

from udit import paths
from udit.errors import BadValueError
from udit.report import figures
from udit.sampling.shards import GRID_MAX

STRIP_MODELS = ("U-DiT-B", "U-DiT-L")  # the runs of figs. 9-10
FINAL_GRID_MODEL = "U-DiT-L"  # its longest run's last milestone: the paper's 1M grid
STRIP_CFG = 1.0


def step_label(step: int) -> str:
    """400000 -> '400K', 1000000 -> '1M', 8 -> '8' (toy steps stay plain)."""
    for unit, size in (("M", 1_000_000), ("K", 1_000)):
        if step >= size and step % size == 0:
            return f"{step // size}{unit}"
    return str(step)


class InvalidGridError(BadValueError):
    """A sample grid PNG that cannot be decoded (truncated, not a PNG, a decompression bomb)."""


# what PIL raises for a broken, foreign or oversized image (UnidentifiedImageError is an OSError)
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def first_row(grid_png: Path, num_samples: int) -> np.ndarray:
    """(side, cols * side, 3) uint8: the first grid row (samples 0..cols-1) of a grid that
    udit.sampling.shards.image_grid laid out from min(num_samples, GRID_MAX) samples. A grid that
    does not decode raises InvalidGridError naming the file."""
    try:
        with Image.open(grid_png) as img:
            grid = np.asarray(img.convert("RGB"))
    except IMAGE_ERRORS as err:
        raise InvalidGridError(f"{grid_png}: not a readable PNG grid ({err})") from None
    cols = math.ceil(math.sqrt(min(num_samples, GRID_MAX)))
    side = grid.shape[1] // cols
    if side == 0:
        raise InvalidGridError(f"{grid_png}: {grid.shape[1]} px wide, too small for {cols} columns")
    return grid[:side, : side * cols]


def first_labels(samples_npz: Path, count: int) -> list[int] | None:
    """The first `count` class labels of a sample file (arr_1 only is read), or None."""
    if not Path(samples_npz).is_file():
        return None
    try:
        with np.load(samples_npz) as data:
            return [int(v) for v in data["arr_1"][:count]]
    except (OSError, KeyError, ValueError):
        return None


def strip_evaluations(exp) -> list:
    """The cfg-1.0 evaluations of a run (first sampling seed), one per milestone, in order."""
    by_step = {e.step: e for e in exp.evaluations if e.cfg == STRIP_CFG and not e.draw}
    return [by_step[s] for s in sorted(by_step)]


def strips(experiments: dict, *, results: Path, out_dir: Path, invalid: list) -> list[dict]:
    """One strip figure per U-DiT-B/L run evaluated at two or more milestones; a milestone
    without a grid yet is listed as pending, one whose grid does not decode is appended to
    `invalid` (the report's list of broken inputs) and left out of the strip."""
    made = []
    for eid, exp in experiments.items():
        evals = strip_evaluations(exp)
        if exp.model not in STRIP_MODELS or len(evals) < 2:
            continue
        rows, pending = [], []
        for e in evals:
            grid = Path(paths.grid(results, eid, e.tag))
            if not grid.is_file():
                pending.append(step_label(e.step))
                continue
            try:
                strip = first_row(grid, e.fid_samples)
            except InvalidGridError as err:
                why = str(err).removeprefix(f"{grid}: ")
                file = grid.relative_to(results).as_posix()
                invalid.append(
                    {"node": f"{eid}/{e.tag}", "path": str(grid), "file": file, "why": why}
                )
                continue
            labels = first_labels(
                Path(paths.samples(results, eid, e.tag)), strip.shape[1] // strip.shape[0]
            )
            rows.append((step_label(e.step), strip, labels))
        if not rows:
            continue
        title = f"{eid} ({exp.title}): the same seeds and classes at each milestone"
        name = figures.sample_strip(rows, title=title, out_dir=out_dir, name=f"strip-{eid}")
        made.append({"src": f"figures/{name}", "experiment": eid, "pending": pending})
    return made


def final_grid(experiments: dict) -> tuple[str, object] | None:
    """(experiment id, evaluation) of the longest U-DiT-L run's last cfg-1.0 milestone."""
    runs = [
        (exp.iterations, eid, exp)
        for eid, exp in experiments.items()
        if exp.model == FINAL_GRID_MODEL and strip_evaluations(exp)
    ]
    if not runs:
        return None
    _, eid, exp = max(runs, key=lambda r: r[0])
    return eid, strip_evaluations(exp)[-1]
