"""Atomic checkpoint store for training runs: write, verify, rotate, find the newest valid one,
and the save / resume of a full training state (model, EMA, optimiser, RNGs, data position).

Layout inside a run directory:

    checkpoints/ckpt-0050000.pt          torch.save of the training state (see udit.training.loop)
    checkpoints/ckpt-0050000.pt.sha256   sidecar: SHA-256 of the .pt file, written after it

A file is written to a temporary name in the same directory, flushed, fsync'ed and moved
into place with os.replace, so a killed job leaves either the old state or the new one,
never half a file under the final name. The sidecar lets `find_latest` reject a file that
was truncated or corrupted later (disk full, partial copy between clusters) without
unpickling it; a file with no sidecar (job killed between the two writes) is accepted
only if torch.load reads it.

Rotation trusts only verified files: a checkpoint that fails `verify_checkpoint` is moved
aside (ckpt-N.pt.corrupt, named in a warning) and never counts as a kept one; the checkpoint
just written and the one this job resumed from are never deleted. Temp files a killed job
left (udit.io.atomic_open: .<name>.<random>.tmp) are removed when the next job starts.
"""

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from udit.errors import BadValueError, load_failure
from udit.io import atomic_torch_save, atomic_write_bytes, atomic_write_json, read_json, sha256_file
from udit.paths import CKPT_DIR, CKPT_PATTERN, TRAIN_LOG, checkpoint_name
from udit.training.determinism import capture_rng, restore_rng

OPTIONS_NAME = "options.json"  # the resolved options of the run
SIDECAR_SUFFIX = ".sha256"
CORRUPT_SUFFIX = ".corrupt"  # ckpt-N.pt -> ckpt-N.pt.corrupt: out of CKPT_PATTERN, kept for a look
# udit.io.atomic_open's temp names (.<target>.<random>.tmp) for the files a run writes
STALE_TEMP_GLOBS = {
    ".": (f".{OPTIONS_NAME}.*.tmp", f".{TRAIN_LOG}.*.tmp"),
    CKPT_DIR: (".ckpt-*.tmp",),
}


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


def sidecar_digest(path: Path, *, errors: str = "strict") -> str | None:
    """The SHA-256 the sidecar of checkpoint `path` records ('' for an empty sidecar), or None
    when there is no sidecar. `errors`: how undecodable bytes in it are read (str.decode)."""
    path = Path(path)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not sidecar.exists():
        return None
    words = sidecar.read_text(errors=errors).split()
    return words[0] if words else ""


def verify_checkpoint(path: Path) -> str | None:
    """None if `path` is a usable checkpoint, else the reason it is not."""
    path = Path(path)
    expected = sidecar_digest(path)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            return (
                f"SHA-256 mismatch (file {actual[:12]}..., sidecar {expected[:12] or 'empty'}...)"
            )
        return None
    try:  # no sidecar: the job died between the two writes; trust the file only if it loads
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means unusable
        return f"no sidecar and torch.load failed: {load_failure(err)}"
    return None


def find_latest(run_dir: Path) -> tuple[int, Path] | None:
    """Newest checkpoint that passes `verify_checkpoint`; invalid ones are skipped with a
    warning."""
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
    resumed: Path | None = None,
) -> Path:
    """Write ckpt-<step>.pt (+ sidecar) atomically, then rotate: keep the newest `keep_last`
    valid ordinary checkpoints, every milestone step, the written file and `resumed` (the
    checkpoint this job started from). Returns the written path."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    directory = Path(run_dir) / CKPT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(step)
    digest = atomic_torch_save(state, path)
    atomic_write_bytes(
        path.with_name(path.name + SIDECAR_SUFFIX), f"{digest}  {path.name}\n".encode()
    )
    rotate(run_dir=run_dir, keep_last=keep_last, milestones=milestones, protect=(path, resumed))
    return path


def rotate(
    *,
    run_dir: Path,
    keep_last: int,
    milestones: tuple[int, ...] = (),
    protect: tuple[Path | None, ...] = (),
) -> list[Path]:
    """Keep the newest `keep_last` valid ordinary checkpoints and every milestone; delete the
    older ordinary ones and return them. `protect` (the file just written, the one resumed
    from) is never deleted and counts as kept without re-hashing it; any other candidate for
    keeping is verified first, and a corrupt one is moved aside instead of counted (a stray
    corrupt ckpt-9999999.pt must not push the good files out)."""
    keep = set(milestones)
    protected = {Path(p).resolve() for p in protect if p is not None}
    ordinary = [(s, p) for s, p in list_checkpoints(run_dir) if s not in keep]
    kept, removed = 0, []
    for _, path in reversed(ordinary):  # newest first
        if path.resolve() in protected:
            kept += 1
        elif kept < keep_last:
            problem = verify_checkpoint(path)
            if problem is None:
                kept += 1
            else:
                move_aside(path, problem)
        else:
            path.unlink(missing_ok=True)
            path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
            removed.append(path)
    return removed


def move_aside(path: Path, problem: str) -> Path:
    """Rename a corrupt checkpoint (and its sidecar) to *.corrupt, out of every listing; the
    bytes stay for a post-mortem rather than being deleted."""
    target, n = path.with_name(path.name + CORRUPT_SUFFIX), 1
    while target.exists():  # an earlier corrupt file of the same step
        target, n = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{n}"), n + 1
    os.replace(path, target)
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar.exists():
        os.replace(sidecar, target.with_name(target.name + SIDECAR_SUFFIX))
    warnings.warn(
        f"moved corrupt checkpoint {path} aside to {target.name}: {problem}", stacklevel=3
    )
    return target


def remove_stale_temp(run_dir: Path, globs: dict = STALE_TEMP_GLOBS) -> list[Path]:
    """Delete the temp files a killed job left in the run folder (checkpoint temps are as big
    as a checkpoint); call before this job writes anything, on one process only. `globs`:
    sub-folder -> temp-name patterns (default: a training run's; `udit sample` passes its own)."""
    removed = []
    for sub, patterns in globs.items():
        directory = Path(run_dir) / sub
        for pattern in patterns:
            for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
                if path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    if removed:
        print(
            f"removed {len(removed)} temp file(s) a killed job left in {run_dir}: "
            + ", ".join(p.name for p in removed[:4])
            + (" ..." if len(removed) > 4 else ""),
            file=sys.stderr,
        )
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
    old, new = read_json(path, what="run options"), json.loads(json.dumps(options))
    diff = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in identity_fields
        if old.get(k) != new.get(k)
    ]
    if diff:
        raise BadValueError(
            f"{run_dir} holds a run with different options ({'; '.join(diff)}); "
            f"use another --run-dir or the original options"
        )


def truncate_log(path: Path, *, step: int) -> None:
    """Drop JSONL lines past `step` (a killed job may have logged beyond its last checkpoint)
    and lines that do not parse: a job killed mid-write leaves a torn last line, which the
    report's reader (udit.report.figures.read_log) skips too."""
    path = Path(path)
    if not path.exists():
        return
    lines, torn = [], 0
    for ln in path.read_text(errors="replace").splitlines():
        if not ln.strip():
            continue
        try:
            logged = json.loads(ln)["step"]
            if logged <= step:
                lines.append(ln)
        except (json.JSONDecodeError, TypeError, KeyError):  # torn or foreign: not a log record
            torn += 1
    if torn:
        print(f"note: dropped {torn} unreadable line(s) of {path} (torn write)", file=sys.stderr)
    atomic_write_bytes(path, "".join(ln + "\n" for ln in lines).encode())


# ----------------------------------------------------------------------------- training state


RESUME_SHOWN = ("model", "model_kw", "num_classes", "image_size", "pixel")  # in a misfit error


def resume_training_state(
    *, run_dir: Path, resume: str, info, model, ema, opt, order, expected: dict | None = None
) -> tuple[int, Path | None]:
    """Load the checkpoint `resume` names ('auto': newest valid one, 'never', or a path) into
    model / EMA / optimiser / RNGs; -> (step, path or None). `order` is the run's DataOrder;
    `expected` this run's options: a checkpoint trained with other RESUME_SHOWN is refused."""
    expected = json.loads(json.dumps(expected or {}))  # tuples -> lists, as the checkpoint has
    run_dir = Path(run_dir)
    ckpt = _checkpoint_to_resume(run_dir, resume, info)
    if ckpt is None:
        if info.is_main:  # fresh start: lines of an earlier, checkpoint-less attempt go
            truncate_log(run_dir / TRAIN_LOG, step=0)
        return 0, None
    state = load_checkpoint_state(ckpt, map_location=info.device)
    _check_trained_options(ckpt, trained=state.get("args") or {}, expected=expected)
    _load_weights(ckpt, state, model=model, ema=ema, opt=opt)
    step = int(state["step"])
    if state["data"] != order.state(step):
        raise BadValueError(
            f"{ckpt}: data position {state['data']} does not match this run's "
            f"{order.state(step)} (dataset or batch size changed)"
        )
    _restore_rank_rngs(state["rng"]["ranks"], info)
    if info.is_main:  # a killed job may have logged past its last checkpoint
        truncate_log(run_dir / TRAIN_LOG, step=step)
        print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    return step, ckpt


def _checkpoint_to_resume(run_dir: Path, resume: str, info) -> Path | None:
    """The checkpoint `resume` names: 'auto' the newest valid one (None, with a warning when
    only invalid ones are there), 'never' None, else the path, which must verify."""
    if resume == "auto":
        found = find_latest(run_dir)
        ckpt = found[1] if found else None
        if ckpt is None and list_checkpoints(run_dir) and info.is_main:
            print(
                f"warning: no valid checkpoint in {run_dir}; starting from scratch", file=sys.stderr
            )
        return ckpt
    if resume == "never":
        return None
    ckpt = Path(resume)
    problem = verify_checkpoint(ckpt) if ckpt.is_file() else "missing"
    if problem:
        raise BadValueError(f"--resume {ckpt}: not a usable checkpoint ({problem})")
    return ckpt


def _check_trained_options(ckpt: Path, *, trained: dict, expected: dict) -> None:
    """Refuse a checkpoint trained with other model options (RESUME_SHOWN) than this run's."""
    misfit = [
        k for k in RESUME_SHOWN if k in trained and k in expected and trained[k] != expected[k]
    ]
    if misfit:
        shown = "; ".join(f"{k}: {trained[k]!r} there, {expected[k]!r} here" for k in misfit)
        raise BadValueError(
            f"--resume {ckpt}: trained with other model options ({shown}); resume it with "
            f"those options or use another checkpoint"
        )


def _load_weights(ckpt: Path, state: dict, *, model, ema, opt) -> None:
    """Model, EMA and optimiser state into this run's; a misfit names the trained options."""
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
    except (RuntimeError, ValueError, KeyError) as err:  # another model, width or class count
        trained = {k: v for k, v in (state.get("args") or {}).items() if k in RESUME_SHOWN}
        first = str(err).strip().splitlines()[-1].strip()[:200]
        raise BadValueError(
            f"--resume {ckpt}: its weights do not fit this run's model ({first}); it was "
            f"trained with {trained}; resume it with those options or use another checkpoint"
        ) from None


def _restore_rank_rngs(ranks: list, info) -> None:
    """This rank's saved RNG states, when the checkpoint has as many ranks as this job."""
    if len(ranks) == info.world_size:
        restore_rng(ranks[info.rank])
    elif info.is_main:  # the global RNGs drive nothing in the loop; per-sample draws stay exact
        print(
            f"note: checkpoint from {len(ranks)} ranks, now {info.world_size}: global RNGs "
            f"re-seeded (per-sample noise and data order unaffected)",
            file=sys.stderr,
        )


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
    resumed: Path | None = None,
) -> Path | None:
    """Rank 0 writes {"model","ema","opt","step","args","rng","data"} with every rank's RNGs;
    every rank must call it (it gathers RNG states and ends on a barrier). `resumed`: the
    checkpoint this job started from, which rotation never deletes."""
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
            state,
            run_dir=Path(run_dir),
            step=step,
            keep_last=keep_last,
            milestones=milestones,
            resumed=resumed,
        )
    if info.enabled:
        dist.barrier()
    return path
