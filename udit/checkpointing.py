"""Atomic checkpoint store for training runs: write, verify, rotate, find the newest valid one,
and the save / resume of a full training state (model, EMA, optimiser, RNGs, data position).

Layout inside a run directory:

    checkpoints/ckpt-0050000.pt          torch.save of the training state (see udit.train)
    checkpoints/ckpt-0050000.pt.sha256   sidecar: SHA-256 of the .pt file, written after it

A file is written to a temporary name in the same directory, flushed, fsync'ed and moved
into place with os.replace, so a killed job leaves either the old state or the new one,
never half a file under the final name. The sidecar lets `find_latest` reject a file that
was truncated or corrupted later (disk full, partial copy between clusters) without
unpickling it; a file with no sidecar (job killed between the two writes) is accepted
only if torch.load reads it.
"""

import json
import re
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from udit.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, sha256_file
from udit.train_state import capture_rng, restore_rng

CKPT_DIR = "checkpoints"
LOG_NAME = "log.jsonl"  # one JSON object per logged step
OPTIONS_NAME = "options.json"  # the resolved options of the run
CKPT_PATTERN = re.compile(r"^ckpt-(\d{7,})\.pt$")
SIDECAR_SUFFIX = ".sha256"


def ckpt_name(step: int) -> str:
    """Zero-padded like the official repos' 0400000.pt, so names sort by step."""
    return f"ckpt-{step:07d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in the run, oldest first (validity not checked)."""
    directory = Path(run_dir) / CKPT_DIR
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CKPT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def verify_checkpoint(path: Path) -> str | None:
    """None if `path` is a usable checkpoint, else the reason it is not."""
    path = Path(path)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar.exists():
        expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
        actual = sha256_file(path)
        if actual != expected:
            return (
                f"SHA-256 mismatch (file {actual[:12]}..., sidecar {expected[:12] or 'empty'}...)"
            )
        return None
    try:  # no sidecar: the job died between the two writes; trust the file only if it loads
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means unusable
        return f"no sidecar and torch.load failed: {type(err).__name__}: {err}"
    return None


def find_latest(run_dir: Path) -> tuple[int, Path] | None:
    """Newest checkpoint that passes `verify_checkpoint`; invalid ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return step, path
        warnings.warn(f"skipping invalid checkpoint {path}: {problem}", stacklevel=2)
    return None


def save_checkpoint(
    state: dict,
    *,
    run_dir: Path,
    step: int,
    keep_last: int,
    milestones: tuple[int, ...] = (),
) -> Path:
    """Write ckpt-<step>.pt (+ sidecar) atomically, then rotate: keep the newest `keep_last`
    ordinary checkpoints and every milestone step forever. Returns the written path."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    directory = Path(run_dir) / CKPT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ckpt_name(step)
    digest = atomic_torch_save(state, path)
    atomic_write_bytes(
        path.with_name(path.name + SIDECAR_SUFFIX), f"{digest}  {path.name}\n".encode()
    )
    rotate(run_dir=run_dir, keep_last=keep_last, milestones=milestones)
    return path


def rotate(*, run_dir: Path, keep_last: int, milestones: tuple[int, ...] = ()) -> list[Path]:
    """Delete ordinary checkpoints older than the newest `keep_last`; milestones are never deleted."""
    keep = set(milestones)
    ordinary = [(s, p) for s, p in list_checkpoints(run_dir) if s not in keep]
    removed = []
    for _, path in ordinary[: max(len(ordinary) - keep_last, 0)]:
        path.unlink(missing_ok=True)
        path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
        removed.append(path)
    return removed


def load_checkpoint_state(path: Path, map_location="cpu") -> dict:
    """Load a training state written by `save_checkpoint` (plain tensors and containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ----------------------------------------------------------------------------- run folder


def write_json_atomic(path: Path, obj) -> None:
    atomic_write_json(path, obj, sort_keys=True)


def check_same_run(run_dir: Path, *, options: dict, identity_fields: tuple[str, ...]) -> None:
    """Refuse to continue a run whose checkpoints were made with other trajectory options."""
    path = Path(run_dir) / OPTIONS_NAME
    if not path.exists() or not list_checkpoints(run_dir):
        return
    old, new = json.loads(path.read_text()), json.loads(json.dumps(options))
    diff = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in identity_fields
        if old.get(k) != new.get(k)
    ]
    if diff:
        raise ValueError(
            f"{run_dir} holds a run with different options ({'; '.join(diff)}); "
            f"use another --run-dir or the original options"
        )


def truncate_log(path: Path, *, step: int) -> None:
    """Drop JSONL lines past `step`: a killed job may have logged beyond its last checkpoint."""
    path = Path(path)
    if not path.exists():
        return
    lines = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
    ]
    atomic_write_bytes(path, "".join(ln + "\n" for ln in lines).encode())


# ----------------------------------------------------------------------------- training state


def resume_training_state(
    *, run_dir: Path, resume: str, info, model, ema, opt, order
) -> tuple[int, Path | None]:
    """Load the checkpoint `resume` names ('auto': newest valid one, 'never', or a path) into
    model / EMA / optimiser / RNGs; -> (step, path or None). `order` is the run's DataOrder."""
    run_dir, ckpt = Path(run_dir), None
    if resume == "auto":
        found = find_latest(run_dir)
        ckpt = found[1] if found else None
        if ckpt is None and list_checkpoints(run_dir) and info.is_main:
            print(
                f"warning: no valid checkpoint in {run_dir}; starting from scratch", file=sys.stderr
            )
    elif resume != "never":
        ckpt = Path(resume)
        problem = verify_checkpoint(ckpt) if ckpt.is_file() else "missing"
        if problem:
            raise ValueError(f"--resume {ckpt}: not a usable checkpoint ({problem})")
    if ckpt is None:
        if info.is_main:  # fresh start: lines of an earlier, checkpoint-less attempt go
            truncate_log(run_dir / LOG_NAME, step=0)
        return 0, None
    state = load_checkpoint_state(ckpt, map_location=info.device)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    step = int(state["step"])
    if state["data"] != order.state(step):
        raise ValueError(
            f"{ckpt}: data position {state['data']} does not match this run's "
            f"{order.state(step)} (dataset or batch size changed)"
        )
    ranks = state["rng"]["ranks"]
    if len(ranks) == info.world_size:
        restore_rng(ranks[info.rank])
    elif info.is_main:  # the global RNGs drive nothing in the loop; per-sample draws stay exact
        print(
            f"note: checkpoint from {len(ranks)} ranks, now {info.world_size}: global RNGs "
            f"re-seeded (per-sample noise and data order unaffected)",
            file=sys.stderr,
        )
    if info.is_main:  # a killed job may have logged past its last checkpoint
        truncate_log(run_dir / LOG_NAME, step=step)
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    return step, ckpt


def save_training_state(
    *,
    run_dir: Path,
    info,
    model,
    ema,
    opt,
    order,
    step: int,
    args: dict,
    keep_last: int,
    milestones: tuple[int, ...],
) -> Path | None:
    """Rank 0 writes {"model","ema","opt","step","args","rng","data"} with every rank's RNGs;
    every rank must call it (it gathers RNG states and ends on a barrier)."""
    rng = [None] * info.world_size
    if info.enabled:
        dist.all_gather_object(rng, capture_rng())
    else:
        rng[0] = capture_rng()
    path = None
    if info.is_main:
        state = {
            "model": model.state_dict(),  # unwrapped: no 'module.' / '_orig_mod.' (official keys)
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "args": json.loads(json.dumps(args)),
            "rng": {"ranks": rng, "per_sample": "SeedSequence([seed, step, global_index])"},
            "data": order.state(step),
        }
        path = save_checkpoint(
            state, run_dir=Path(run_dir), step=step, keep_last=keep_last, milestones=milestones
        )
    if info.enabled:
        dist.barrier()
    return path
