"""OUT.parts/: the shards of an unfinished `udit sample` run, and their assembly into OUT.

    OUT.npz.parts/config.json                      the options every shard was made with
    OUT.npz.parts/shard-<first index>-<count>.npz  indices (B,), images (B, H, W, 3), labels (B,)

Each batch becomes a shard, written atomically, so a killed run loses at most the batch in
flight; a re-run of the same command computes only the indices no shard holds, then assembles
OUT in index order. Shards of other options are refused, never mixed.
"""

import math
import shutil
import sys
from pathlib import Path

import numpy as np

from udit import distributed
from udit.errors import BadValueError
from udit.io import atomic_open, atomic_savez, read_json
from udit.sampling.batches import Batch
from udit.training.store import remove_stale_temp, write_json_atomic

PARTS_SUFFIX = ".parts"  # OUT.npz -> OUT.npz.parts/
SHARD_GLOB = "shard-*.npz"
CONFIG_NAME = "config.json"
STALE_TEMP_GLOBS = {".": (".*.tmp",)}  # udit.io.atomic_open's temp files of a killed run
GRID_MAX = 64  # the grid shows at most the first 8 x 8 samples


def parts_dir(out: Path) -> Path:
    return Path(str(out) + PARTS_SUFFIX)


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Uncompressed npz (the ADM evaluator streams arr_0 out of the zip), written atomically."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}  # C order: fortran_order False
    atomic_savez(path, **arrays)


def write_shard(parts: Path, batch: Batch) -> None:
    write_npz(
        parts / f"shard-{batch.indices[0]:08d}-{len(batch.indices):05d}.npz",
        indices=np.asarray(batch.indices, dtype=np.int64),
        images=batch.images,
        labels=batch.labels,
    )


def finished_indices(parts: Path, *, delete_unreadable: bool = False) -> dict[int, Path]:
    """Sample index -> shard file, for every readable shard; an unreadable one is redone."""
    found = {}
    for shard in sorted(parts.glob(SHARD_GLOB)):
        try:
            with np.load(shard) as data:
                indices = data["indices"]
        except Exception as err:  # noqa: BLE001 - a damaged shard is recomputed, not fatal
            print(f"warning: unreadable shard {shard.name} will be redone: {err}", file=sys.stderr)
            if delete_unreadable:
                shard.unlink(missing_ok=True)
            continue
        found.update({int(i): shard for i in indices})
    return found


def claim(
    *, parts: Path, config: dict, num_samples: int, info, fresh: bool = False
) -> tuple[list[int], int]:
    """(indices this rank computes, how many are missing in all), once OUT.parts/ is known to
    hold only shards made with `config` (`fresh`: its old shards go first). The missing indices
    are dealt out i = rank, rank + W, ..., as DiT's sample_ddp.py deals its samples."""
    if info.is_main:
        if fresh and parts.is_dir():
            shutil.rmtree(parts)  # --overwrite: shards of other options would be refused below
        parts.mkdir(parents=True, exist_ok=True)
        remove_stale_temp(parts, globs=STALE_TEMP_GLOBS)
        # assemble() must not meet unreadable shards later
        if not finished_indices(parts, delete_unreadable=True):
            # no shard yet, so nothing to mix: the options of an earlier attempt that failed
            # before its first shard (bad weights, NaN samples) give way to these
            write_json_atomic(parts / CONFIG_NAME, config)
    distributed.barrier(info)
    _check_config(parts, config)
    done = finished_indices(parts)
    distributed.barrier(info)  # every rank has scanned before any rank adds a shard
    todo = np.ones(num_samples, dtype=bool)  # bounded: num_samples <= argtypes.MAX_SAMPLES
    todo[[i for i in done if i < num_samples]] = False
    missing = np.flatnonzero(todo)
    return missing[info.rank :: info.world_size].tolist(), len(missing)


def _check_config(parts: Path, config: dict) -> None:
    if not (parts / CONFIG_NAME).is_file():
        raise BadValueError(
            f"{parts} holds shards but no {CONFIG_NAME}, so their options are unknown; "
            f"delete it or choose another --out"
        )
    saved = read_json(parts / CONFIG_NAME, what="sample shard options", hint=f"delete {parts}")
    if saved != config:
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise BadValueError(
            f"{parts} holds samples made with other options ({', '.join(changed)} differ); "
            f"delete it or choose another --out"
        )


def assemble(*, parts: Path, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """All shards -> (images (N, H, W, 3) uint8, labels (N,) int64), ordered by sample index."""
    images = labels = None
    seen = np.zeros(num_samples, dtype=bool)
    for shard in sorted(parts.glob(SHARD_GLOB)):
        with np.load(shard) as data:
            idx, imgs, ys = data["indices"], data["images"], data["labels"]
        keep = idx < num_samples  # a previous run may have asked for more samples
        idx, imgs, ys = idx[keep], imgs[keep], ys[keep]
        if images is None:
            images = np.empty((num_samples, *imgs.shape[1:]), dtype=np.uint8)
            labels = np.empty(num_samples, dtype=np.int64)
        images[idx], labels[idx], seen[idx] = imgs, ys, True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise RuntimeError(
            f"{len(missing)} of {num_samples} samples have no shard in {parts} "
            f"(first missing index {missing[0]}); re-run the same command to finish them"
        )
    return images, labels


def image_grid(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> one row-major (rows*H, cols*W, 3) image of ceil(sqrt(B)) columns,
    empty cells black (torchvision's make_grid with padding 0, without importing torchvision,
    which pulls in torch._dynamo: ~2 s of every sample job's start-up)."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows, cols, h, w, c), dtype=images.dtype)
    grid.reshape(rows * cols, h, w, c)[:n] = images
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")


def write_outputs(
    *, parts: Path, out: Path, grid: Path, summary: dict, num_samples: int, keep_parts: bool
) -> None:
    """Shards -> OUT.npz, its grid PNG and OUT.npz.json (the summary, written last: its presence
    marks a finished file); then OUT.parts/ goes unless kept."""
    arr_0, arr_1 = assemble(parts=parts, num_samples=num_samples)
    write_npz(out, arr_0=arr_0, arr_1=arr_1)
    write_png(grid, image_grid(arr_0[:GRID_MAX]))
    summary.update(shape=list(arr_0.shape), grid=grid.name)
    write_json_atomic(Path(str(out) + ".json"), summary)
    if not keep_parts:
        shutil.rmtree(parts)
    print(
        f"wrote {out} arr_0 {arr_0.shape} uint8, arr_1 {arr_1.shape} int64; grid {grid}",
        file=sys.stderr,
    )
