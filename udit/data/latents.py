"""`udit extract-latents`: encode an ImageFolder once into sharded VAE posterior moments.

DiT trains on `vae.encode(x).latent_dist.sample() * 0.18215` of a randomly flipped image
(DiT train.py). We cache, for every image and BOTH flips, the posterior's parameters
(mean and logvar of diffusers' DiagonalGaussianDistribution) rather than one sample, so the
trainer draws a fresh latent each step exactly as online encoding does (sample_latent).

Layout of `out/`:
    manifest.json                 settings + one entry per finished shard (sha256, bytes)
    shard_00000.safetensors       moments (n, 2 flips, 2C, h, w) [mean; logvar], labels (n,) int64

Precision: float32 by default, the VAE's own output, so a cached latent equals an online
one. ImageNet-256 costs 1,281,167 x 2 x 8 x 32 x 32 x 4 B = 84 GB; `--dtype float16` halves
that at a relative rounding of 2^-11 (4.9e-4) of the mean, below the smallest diffusion noise
(sqrt(beta_1) = 0.01 of the signal) but not bit-exact.

Resumable: each shard and the manifest are written to a temp file and renamed; a re-run
skips shards whose sha256 matches the manifest and re-encodes the rest.
"""

import argparse
import functools
import hashlib
import json
import math
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from udit import argtypes, distributed, outputs
from udit.cli import add_device, add_dry_run, dry_run
from udit.data.shards import (  # the read side: checks of the manifest and of every shard
    FLIPS,
    FORMAT_VERSION,
    MANIFEST,
    CorruptCacheError,  # noqa: F401 - raised by LatentDataset; callers catch it from here
    check_shard,
    read_manifest,
    shard_name,
)
from udit.data.vae import (
    DEFAULT_VAE,
    LATENT_SCALE,
    latent_shape,
    load_vae,
    vae_fingerprint,
)
from udit.errors import BadValueError, command_main
from udit.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from udit.paper import recipe

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _dataset_sha256(dataset) -> str:
    """Fingerprint of the image list (relative paths and labels): a resume must see the same set."""
    rel = [(os.path.relpath(path, dataset.root), label) for path, label in dataset.samples]
    return hashlib.sha256(json.dumps(rel).encode()).hexdigest()


def sample_latent(moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Draw latents from cached moments, as `latent_dist.sample() * LATENT_SCALE` does.

    moments: (..., 2C, h, w) = [mean; logvar]; noise: (..., C, h, w) standard normal from the
    caller's seeded generator (so a resumed run draws the same latents). Returns (..., C, h, w).
    """
    if moments.dim() < 3 or moments.shape[-3] % 2:
        shape = tuple(moments.shape)
        raise ValueError(f"moments must be (..., 2C, h, w) with an even channel count, got {shape}")
    mean, logvar = moments.chunk(2, dim=-3)  # (..., C, h, w) each
    if noise.shape != mean.shape:
        raise ValueError(
            f"noise shape {tuple(noise.shape)} must equal the mean's {tuple(mean.shape)}"
        )
    # std = exp(0.5 * logvar), as diffusers' DiagonalGaussianDistribution (logvar is cached
    # after its clamp to [-30, 20])
    return (mean + torch.exp(0.5 * logvar) * noise) * LATENT_SCALE


@torch.no_grad()
def _encode_shard(
    *,
    vae,
    dataset,
    start: int,
    stop: int,
    batch_size: int,
    num_workers: int,
    device,
    dtype: torch.dtype,
    progress,
) -> dict[str, torch.Tensor]:
    loader = DataLoader(
        Subset(dataset, range(start, stop)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    moments, labels = [], []
    for x, y in loader:
        x = x.to(device)  # (B, 3, H, W) in [-1, 1]
        per_flip = []
        for flip in FLIPS:
            dist = vae.encode(x.flip(-1) if flip else x).latent_dist
            per_flip.append(torch.cat([dist.mean, dist.logvar], dim=1))  # (B, 2C, h, w)
        moments.append(torch.stack(per_flip, dim=1).to("cpu", dtype))  # (B, 2, 2C, h, w)
        labels.append(y.to(torch.int64))
        progress.update(len(y))
    return {"moments": torch.cat(moments).contiguous(), "labels": torch.cat(labels).contiguous()}


def extract_latents(
    *,
    images: str,
    out: str,
    image_size: int = recipe().image_size,
    vae: str = DEFAULT_VAE,
    batch_size: int = 32,
    shard_size: int = 1024,
    device: str = "cpu",
    dtype: str = "float32",
    num_workers: int = 0,
    progress: bool = True,
) -> dict:
    """Encode every image of the ImageFolder `images` (both flips) into shards under `out`.

    Returns the final manifest. Raises ValueError when `out` holds a cache made with other
    settings, VaeNotAvailableError when the VAE cannot be loaded.
    """
    if batch_size < 1 or shard_size < 1:
        raise BadValueError(
            f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}"
        )
    if dtype not in DTYPES:
        raise BadValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    from udit.data.imagenet import build_image_dataset  # torchvision: extraction only

    dataset = build_image_dataset(images, image_size, flip=False)  # flips are both encoded below
    model = load_vae(vae, device=device)
    settings = _cache_settings(
        dataset=dataset,
        vae=model,
        vae_name=vae,
        image_size=image_size,
        shard_size=shard_size,
        dtype=dtype,
    )
    encode = functools.partial(
        _encode_shard,
        vae=model,
        dataset=dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        dtype=DTYPES[dtype],
    )
    os.makedirs(out, exist_ok=True)
    with outputs.locked(out, flag="--out"):  # one writer: a second process refuses at once
        return _write_missing_shards(out, settings=settings, encode=encode, progress=progress)


def _write_missing_shards(out: str, *, settings: dict, encode, progress: bool) -> dict:
    """Encode the shards an earlier run did not finish; the manifest after each one."""
    manifest_path = os.path.join(out, MANIFEST)
    shards = previous_shards(manifest_path, settings=settings, out=out)
    num_images, shard_size = settings["num_images"], settings["shard_size"]
    num_shards = math.ceil(num_images / shard_size)
    done = [s for s in range(num_shards) if shard_is_intact(out, shards.get(shard_name(s)))]
    bar = tqdm(
        total=num_images,
        initial=sum(shards[shard_name(s)]["count"] for s in done),
        unit="img",
        desc="extract-latents",
        disable=not progress,
    )
    with bar:  # closed on an error too: the error message starts a line of its own
        for s in range(num_shards):
            if s in done:
                continue
            start, stop = s * shard_size, min((s + 1) * shard_size, num_images)
            tensors = encode(start=start, stop=stop, progress=bar)
            path = os.path.join(out, shard_name(s))
            atomic_write_bytes(path, save(tensors))  # usual mode, not 0600: caches are shared
            shards[shard_name(s)] = {
                "file": shard_name(s),
                "start": start,
                "count": stop - start,
                "bytes": os.path.getsize(path),
                "sha256": sha256_file(path),
            }
            atomic_write_json(
                manifest_path, {**settings, "shards": [shards[k] for k in sorted(shards)]}
            )
    manifest = {**settings, "shards": [shards[shard_name(s)] for s in range(num_shards)]}
    atomic_write_json(manifest_path, manifest)
    return manifest


def _cache_settings(
    *, dataset, vae, vae_name: str, image_size: int, shard_size: int, dtype: str
) -> dict:
    """Everything the cached moments depend on: a re-run with other settings is refused."""
    channels, height, width = latent_shape(vae, image_size)
    return {
        "format_version": FORMAT_VERSION,
        "vae": {"name": vae_name, **vae_fingerprint(vae)},
        "image_size": image_size,
        "num_images": len(dataset),
        "classes": dataset.classes,
        "dataset_sha256": _dataset_sha256(dataset),
        "flips": list(FLIPS),
        "shard_size": shard_size,
        "dtype": dtype,
        "moments_shape": [2 * channels, height, width],  # mean and log-variance
        "latent_scale": LATENT_SCALE,
    }


# udit.io.atomic_open's temp names for a cache's files: a run killed mid-write leaves one
STALE_TEMP_GLOBS = {".": (".shard_*.tmp", f".{MANIFEST}.*.tmp")}


def previous_shards(manifest_path: str, *, settings: dict, out: str) -> dict[str, dict]:
    """Shard entries of an earlier (maybe interrupted) extraction into `out`, by file name; a
    cache made with other settings is refused rather than mixed with this one. Both writers
    (extract-latents, import-features) call it first, under the cache's lock, so it also
    deletes the temp files a killed run left."""
    from udit.training.store import remove_stale_temp

    remove_stale_temp(out, globs=STALE_TEMP_GLOBS)
    if not os.path.exists(manifest_path):
        return {}
    previous = read_json(manifest_path, what="latent cache manifest", hint=f"delete {out}")
    differ = sorted(k for k in settings if previous.get(k) != settings[k])
    if differ:
        raise BadValueError(
            f"{out!r} holds a latent cache made with other settings ({', '.join(differ)}); "
            f"use another --out or delete it"
        )
    return {entry["file"]: entry for entry in previous.get("shards", [])}


def shard_is_intact(out: str, entry: dict | None) -> bool:
    if entry is None:
        return False
    path = os.path.join(out, entry["file"])
    return (
        os.path.isfile(path)
        and os.path.getsize(path) == entry["bytes"]
        and sha256_file(path) == entry["sha256"]
    )


def cache_vae_name(cache_dir: str) -> str | None:
    """The VAE a latent cache was encoded with (its manifest's vae.name), or None when there is
    no manifest yet (LatentDataset then names what is missing)."""
    from udit.io import read_json

    path = os.path.join(cache_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    manifest = read_json(path, what="latent cache manifest", hint="re-run `udit extract-latents`")
    vae = manifest.get("vae") if isinstance(manifest, dict) else None
    return vae.get("name") if isinstance(vae, dict) else None


class LatentDataset(Dataset):
    """Cached moments: item i -> (moments float32 (2C, h, w) = [mean; logvar], label int).

    Item i is image i // 2 with flip i % 2, so len = images x 2 flips. Every shard is checked
    once here, before DataLoader workers fork (udit.data.shards: dtype, shape, labels in
    [0, classes), finite moments); verify="sha256" also hashes every shard, verify="size"
    only compares byte counts, for very large caches.
    """

    def __init__(self, cache_dir: str, *, verify: str = "sha256"):
        if verify not in ("sha256", "size"):
            raise ValueError(f"verify must be 'sha256' or 'size', got {verify!r}")
        self.manifest = read_manifest(cache_dir)
        self.cache_dir = cache_dir
        self.shard_size = self.manifest["shard_size"]
        self.num_images = self.manifest["num_images"]
        self.shards = self.manifest["shards"]
        labels = [
            check_shard(cache_dir, entry, manifest=self.manifest, verify=verify)
            for entry in self.shards
        ]
        self.labels = torch.from_numpy(np.concatenate(labels))  # (num_images,) int64
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def latent_channels(self) -> int:
        return self.manifest["moments_shape"][0] // 2

    @property
    def latent_size(self) -> int:
        return self.manifest["moments_shape"][-1]

    @property
    def image_size(self) -> int:
        return self.manifest["image_size"]

    def __len__(self) -> int:
        return self.num_images * len(FLIPS)

    def _shard(self, index: int):
        if os.getpid() != self._pid:  # a forked DataLoader worker opens its own maps
            self._handles, self._pid = {}, os.getpid()
        if index not in self._handles:
            path = os.path.join(self.cache_dir, self.shards[index]["file"])
            self._handles[index] = safe_open(path, framework="pt")
        return self._handles[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        image, flip = divmod(i % len(self), len(FLIPS))
        shard, local = divmod(image, self.shard_size)
        moments = self._shard(shard).get_slice("moments")[local : local + 1, flip]  # (1, 2C, h, w)
        return moments[0].float(), int(self.labels[image])


@command_main("udit extract-latents")
def main(argv: list[str] | None = None) -> int:
    """`udit extract-latents`: encode an ImageFolder (both flips) into a sharded latent cache."""
    parser = argparse.ArgumentParser(prog="udit extract-latents", description=main.__doc__)
    parser.add_argument("--images", required=True, help="ImageFolder root (root/<class>/<image>)")
    parser.add_argument("--out", required=True, help="cache directory (re-run to resume)")
    parser.add_argument(
        "--image-size",
        type=argtypes.IMAGE_SIZE,
        default=recipe().image_size,
        help="centre-crop side in pixels",
    )
    parser.add_argument(
        "--vae", default=DEFAULT_VAE, help="hub id or local AutoencoderKL directory"
    )
    parser.add_argument("--batch-size", type=argtypes.BATCH, default=32)
    parser.add_argument(
        "--shard-size", type=argtypes.BATCH, default=1024, help="images per shard (x2 flips)"
    )
    add_device(parser)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="stored precision")
    parser.add_argument(
        "--num-workers",
        type=argtypes.WORKERS,
        default=0,
        help="DataLoader workers for decoding images",
    )
    add_dry_run(parser)
    args = parser.parse_args(argv)
    if dry_run(args):
        return 0
    check_paths(images=args.images, vae=args.vae, out=args.out)
    manifest = extract_latents(
        images=args.images,
        out=args.out,
        image_size=args.image_size,
        vae=args.vae,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        device=str(distributed.pick_device(args.device)),
        dtype=args.dtype,
        num_workers=args.num_workers,
    )
    print(
        f"latent cache {args.out}: {manifest['num_images']} images x {len(FLIPS)} flips in "
        f"{len(manifest['shards'])} shards, moments {manifest['moments_shape']} {manifest['dtype']}"
    )
    return 0


def check_paths(*, images: str, vae: str | None, out: str) -> None:
    """--out is neither an input nor inside one (it would become a class folder of the image
    tree); a local --vae folder is an input too."""
    local_vae = vae if vae is not None and os.path.exists(vae) else None
    outputs.check(
        inputs={"--images": images, "--vae": local_vae}, outputs={"--out": out}, folders=("--out",)
    )


if __name__ == "__main__":
    sys.exit(main())
