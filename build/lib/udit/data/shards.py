"""The one reader that checks a latent cache: its manifest and every shard, where they are read.

A latent cache (udit.data.latents: `udit extract-latents`, `udit import-features`) is a
manifest.json plus shards `shard_NNNNN.safetensors` holding

    moments  (count, 2 flips, 2C, h, w)  float32 or float16 (the manifest's dtype) = [mean; logvar]
    labels   (count,)                    int64, each in [0, len(manifest classes))

`read_manifest` checks every manifest field the trainer uses (type, range, shard names and
counts); `check_shard` checks one shard's bytes (size, and sha256 unless verify="size"), its
tensors' dtype and shape against the manifest, every label's range and the finiteness of
every moment. A failure names the file, the field and the value, and raises CorruptCacheError
(one line, exit 2) before any training step. The content checks are vectorised numpy over
memory-mapped slices of CHECK_IMAGES images at a time: about 0.03-0.05 s per 67 MB shard
(1024 ImageNet-256 images) on one CPU core, less than the 0.08 s its sha256 takes, so a
1.28M-image cache costs under a minute more than its checksums (page-cached; cold, the
disk read dominates both).
"""

import math
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from udit.errors import UserError, shown
from udit.io import read_json, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FLIPS = (False, True)  # index 0: as cropped, 1: horizontally flipped (DiT's RandomHorizontalFlip)
STORED_DTYPES = {"float32": "F32", "float16": "F16"}  # manifest dtype -> safetensors dtype
LABEL_DTYPE = "I64"
# diffusers' DiagonalGaussianDistribution clamps logvar to [-30, 20]; imported features store
# -inf (std 0, udit.data.features). NaN or anything above 20 did not come from either.
LOGVAR_MAX = 20.0
CHECK_IMAGES = 256  # images per vectorised finiteness check (bounded memory per step)
HINT = "re-run `udit extract-latents` (or `udit import-features`) with the same --out"
# a shard whose checksum matches but whose content is wrong would be kept by a re-run
REMAKE = "delete the cache and make it again (`udit extract-latents` or `udit import-features`)"


class CorruptCacheError(RuntimeError, UserError):
    """A latent cache whose manifest or shard is missing, corrupt or contradicts the other."""


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad_field(path, field: str, value, expected: str) -> CorruptCacheError:
    return CorruptCacheError(
        f"{shown(path)}: field {field} is {_shown(value)}, expected {expected}; {REMAKE}"
    )


def _int_field(record: dict, path, key: str, *, low: int, field: str | None = None) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad_field(path, field or key, value, f"an integer >= {low}")
    return value


def read_manifest(cache_dir: str | Path) -> dict:
    """The manifest of the cache at `cache_dir`, every field the reader uses checked."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no latent cache at {str(cache_dir)!r} (missing {MANIFEST}); "
            f"make one with `udit extract-latents --images DIR --out {cache_dir}`"
        )
    manifest = read_json(path, what="latent cache manifest", hint=REMAKE)
    if not isinstance(manifest, dict):
        raise CorruptCacheError(
            f"{shown(path)}: holds a JSON {type(manifest).__name__}, not an object"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version")
        raise _bad_field(path, "format_version", version, f"{FORMAT_VERSION}; re-extract")
    _check_settings(manifest, path)
    _check_shard_entries(manifest, path)
    return manifest


def _check_settings(manifest: dict, path: Path) -> None:
    for field in ("shard_size", "num_images", "image_size"):
        _int_field(manifest, path, field, low=1)
    if manifest.get("dtype") not in STORED_DTYPES:
        raise _bad_field(path, "dtype", manifest.get("dtype"), f"one of {list(STORED_DTYPES)}")
    shape = manifest.get("moments_shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
        and shape[0] % 2 == 0
    ):
        raise _bad_field(path, "moments_shape", shape, "[2C, h, w] of positive ints, 2C even")
    classes = manifest.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise _bad_field(path, "classes", classes, "a non-empty list of class names")


def _check_shard_entries(manifest: dict, path: Path) -> None:
    """Shard i is shard_name(i) (so no path in the manifest reaches outside its folder), starts
    at i * shard_size and holds shard_size images (the last one the rest): item lookup relies
    on it."""
    shard_size, num_images = manifest["shard_size"], manifest["num_images"]
    shards = manifest.get("shards")
    expected = math.ceil(num_images / shard_size)
    if not isinstance(shards, list) or len(shards) != expected:
        found = len(shards) if isinstance(shards, list) else _shown(shards)
        raise CorruptCacheError(
            f"latent cache {shown(path.parent)} is incomplete ({found} of {expected} shards "
            f"in {shown(path)}); {HINT} to finish it"
        )
    for i, entry in enumerate(shards):
        start = i * shard_size
        want = {"file": shard_name(i), "start": start, "count": min(shard_size, num_images - start)}
        if not isinstance(entry, dict):
            raise _bad_field(path, f"shards[{i}]", entry, "an object")
        for key, value in want.items():
            if entry.get(key) != value:
                raise _bad_field(path, f"shards[{i}].{key}", entry.get(key), _shown(value))
        _int_field(entry, path, "bytes", low=0, field=f"shards[{i}].bytes")
        if not isinstance(entry.get("sha256"), str):
            raise _bad_field(path, f"shards[{i}].sha256", entry.get("sha256"), "a hex string")


def check_shard(cache_dir: str | Path, entry: dict, *, manifest: dict, verify: str) -> np.ndarray:
    """Check the shard of manifest entry `entry` (module docstring); -> its labels (count,)."""
    path = Path(cache_dir) / entry["file"]
    _check_bytes(path, entry, verify=verify)
    try:
        with safe_open(str(path), framework="np") as f:
            _check_layout(path, f, count=entry["count"], manifest=manifest)
            labels = f.get_tensor("labels")
            check_labels(path, labels, start=entry["start"], classes=len(manifest["classes"]))
            _check_moments(path, f.get_slice("moments"), start=entry["start"])
    except SafetensorError as err:
        raise CorruptCacheError(
            f"latent shard {shown(path)}: not a readable safetensors file ({err}); {REMAKE}"
        ) from None
    return labels


def _check_bytes(path: Path, entry: dict, *, verify: str) -> None:
    if not path.is_file():
        raise CorruptCacheError(f"latent shard {shown(path)} is missing; {HINT} to re-encode it")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise CorruptCacheError(
            f"latent shard {shown(path)} has {size} bytes, manifest says {entry['bytes']}; {HINT}"
        )
    if verify == "sha256" and sha256_file(path) != entry["sha256"]:
        raise CorruptCacheError(f"latent shard {shown(path)} fails its sha256 checksum; {HINT}")


def _check_layout(path: Path, f, *, count: int, manifest: dict) -> None:
    """Each tensor's dtype and shape against the manifest."""
    names = set(f.keys())
    if not {"moments", "labels"} <= names:
        raise CorruptCacheError(
            f"latent shard {shown(path)}: tensors {sorted(names)}, expected moments and "
            f"labels; {REMAKE}"
        )
    dtype = STORED_DTYPES[manifest["dtype"]]
    want = {
        "moments": (dtype, [count, len(FLIPS), *manifest["moments_shape"]]),
        "labels": (LABEL_DTYPE, [count]),
    }
    for name, (want_dtype, want_shape) in want.items():
        tensor = f.get_slice(name)
        got_dtype, got_shape = tensor.get_dtype(), list(tensor.get_shape())
        if (got_dtype, got_shape) != (want_dtype, want_shape):
            raise CorruptCacheError(
                f"latent shard {shown(path)}: {name} is {got_dtype} {got_shape}, but the manifest "
                f"({MANIFEST}: dtype {manifest['dtype']}, moments_shape "
                f"{manifest['moments_shape']}, count {count}) says {want_dtype} {want_shape}; "
                f"{REMAKE}"
            )


def check_labels(path: Path, labels: np.ndarray, *, start: int, classes: int) -> None:
    outside = np.flatnonzero((labels < 0) | (labels >= classes))
    if outside.size:
        i = int(outside[0])
        raise CorruptCacheError(
            f"latent shard {shown(path)}: labels[{i}] = {int(labels[i])} (image {start + i} of the "
            f"cache; {outside.size} bad in this shard) is outside [0, {classes}), the "
            f"{classes} classes of its {MANIFEST}; {REMAKE}"
        )


def _check_moments(path: Path, moments, *, start: int) -> None:
    """Mean finite; logvar NaN-free and <= LOGVAR_MAX (-inf allowed: std 0). `moments` is a
    safetensors slice (count, 2, 2C, h, w), read CHECK_IMAGES images at a time; the per-image
    search runs only in a block that fails."""
    count, channels = moments.get_shape()[0], moments.get_shape()[2] // 2
    for first in range(0, count, CHECK_IMAGES):
        block = moments[first : min(first + CHECK_IMAGES, count)]  # (k, 2, 2C, h, w)
        mean, logvar = block[:, :, :channels], block[:, :, channels:]
        # `<=` is False for NaN: one comparison covers NaN and too large
        if np.isfinite(mean).all() and (logvar <= LOGVAR_MAX).all():
            continue
        bad_mean = ~np.isfinite(mean).reshape(len(block), -1).all(axis=1)
        bad_logvar = ~(logvar <= LOGVAR_MAX).reshape(len(block), -1).all(axis=1)
        k = int(np.flatnonzero(bad_mean | bad_logvar)[0])
        field, values = ("mean", mean[k]) if bad_mean[k] else ("logvar", logvar[k])
        found = _first_bad_value(values, logvar=field == "logvar")
        raise CorruptCacheError(
            f"latent shard {shown(path)}: moments of image {first + k} (image "
            f"{start + first + k} of the cache) hold a {field} of {found} (mean must be finite, "
            f"logvar NaN-free and <= {LOGVAR_MAX:g}); {REMAKE}"
        )


def _first_bad_value(values: np.ndarray, *, logvar: bool) -> str:
    flat = values.reshape(-1)
    bad = ~(flat <= LOGVAR_MAX) if logvar else ~np.isfinite(flat)
    return str(float(flat[np.flatnonzero(bad)[0]]))
