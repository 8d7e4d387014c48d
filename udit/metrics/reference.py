"""`udit build-reference`: an ADM-format reference batch from a folder of real images.

Output npz (uncompressed, written atomically), readable by ADM's evaluator and `udit evaluate`:
    arr_0   uint8 (N, S, S, 3)  the centre-cropped reference images (P/R needs their features)
    mu, sigma                   pool_3 Gaussian fit, float64 (FID)
    mu_s, sigma_s               mixed_6/conv[..., :7] Gaussian fit, float64 (sFID)
Extra keys, ignored by ADM's evaluator:
    pool_3            float32 (N, 2048) features of arr_0, so `evaluate` need not recompute them
    inception_sha256  SHA-256 of the Inception weights those features and statistics came from
    provenance_json   how the file was built (command options, versions, hashes)

The official VIRTUAL_imagenet256_labeled.npz (ADM) has arr_0 (10,000 random ImageNet train
images), mu, sigma, mu_s, sigma_s computed with TF; `evaluate` accepts it as is.
"""

import argparse
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from udit import argtypes, distributed, outputs
from udit.cli import add_device, add_dry_run, dry_run
from udit.data.imagenet import center_crop_arr, read_rgb_image  # shared with training data
from udit.errors import BadValueError, command_main
from udit.io import atomic_savez
from udit.metrics import inception, provenance, scores
from udit.metrics.npz import ArrayImages, NpzImages, npz_keys, open_npz_array

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ADM_REFERENCE_KEYS = ("arr_0", "mu", "sigma", "mu_s", "sigma_s")
IMAGE_SIZE = 256  # ImageNet 256x256 (paper section 4)


def list_images(folder: Path, *, num_images: int | None, seed: int) -> list[Path]:
    """Image files under `folder` (recursive, sorted); a seeded random subset if num_images is
    set."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images: not a directory: {folder}")
    paths = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not paths:
        raise BadValueError(
            f"--images: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}"
        )
    if num_images is None:
        return paths
    if not 0 < num_images <= len(paths):
        raise BadValueError(f"--num-images {num_images}: folder {folder} holds {len(paths)} images")
    chosen = np.random.default_rng(seed).choice(len(paths), size=num_images, replace=False)
    return [paths[i] for i in sorted(chosen)]


class CroppedImages(Dataset):
    def __init__(self, paths: list[Path], image_size: int):
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        cropped = center_crop_arr(read_rgb_image(self.paths[index]), self.image_size)
        return torch.from_numpy(np.array(cropped))  # (S, S, 3) uint8


def load_cropped(paths: list[Path], *, image_size: int, num_workers: int) -> np.ndarray:
    loader = DataLoader(CroppedImages(paths, image_size), batch_size=64, num_workers=num_workers)
    return torch.cat(list(loader)).numpy()  # (N, S, S, 3) uint8


def build_reference(
    *,
    images: np.ndarray,  # uint8 (N, H, W, 3)
    weights: Path,  # Inception weights file (resolved)
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, np.ndarray]:
    """ADM reference arrays (+ cached pool_3 features) from images, one Inception pass."""
    extractor = inception.load_extractor(
        weights=weights, features=(inception.POOL, inception.SPATIAL), device=device
    )
    feats = inception.extract_features(
        ArrayImages(images), extractor=extractor, batch_size=batch_size, num_workers=num_workers
    )
    pool, spatial = (
        scores.gaussian_stats(feats[inception.POOL]),
        scores.gaussian_stats(feats[inception.SPATIAL]),
    )
    return {
        "arr_0": images,
        "mu": pool["mu"],
        "sigma": pool["sigma"],
        "mu_s": spatial["mu"],
        "sigma_s": spatial["sigma"],
        "pool_3": feats[inception.POOL],
        "inception_sha256": np.array(provenance.sha256_file(weights)),
    }


def load_reference(path: Path) -> dict:
    """Statistics of a reference npz (ours or ADM's) plus a lazy dataset over its images."""
    keys = set(npz_keys(path))
    missing = [k for k in ADM_REFERENCE_KEYS if k not in keys]
    if missing:
        raise BadValueError(
            f"--reference {path}: not an ADM reference batch, missing {missing} "
            f"(needs {list(ADM_REFERENCE_KEYS)})"
        )
    ref = {k: np.array(open_npz_array(path, k)) for k in ("mu", "sigma", "mu_s", "sigma_s")}
    ref["images"] = NpzImages(path)
    ref["pool_3"], ref["inception_sha256"] = None, None
    if {"pool_3", "inception_sha256"} <= keys:
        ref["pool_3"] = np.array(open_npz_array(path, "pool_3"))  # writable copy for torch
        ref["inception_sha256"] = str(open_npz_array(path, "inception_sha256"))
    return ref


@command_main("udit build-reference")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="udit build-reference", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--images", type=Path, required=True, help="folder of real images (searched recursively)"
    )
    parser.add_argument("--out", type=Path, required=True, help="reference npz to write")
    inception.add_weights_argument(parser)
    parser.add_argument(
        "--num-images",
        type=argtypes.SAMPLES,
        default=None,
        help="seeded random subset size (default: all)",
    )
    parser.add_argument(
        "--seed", type=argtypes.SEED, default=0, help="seed of the --num-images subset"
    )
    parser.add_argument(
        "--image-size", type=argtypes.IMAGE_SIZE, default=IMAGE_SIZE, help="ADM centre-crop size"
    )
    parser.add_argument("--batch-size", type=argtypes.BATCH, default=64)
    parser.add_argument(
        "--num-workers",
        type=argtypes.WORKERS,
        default=0,
        help="DataLoader workers (decode and Inception)",
    )
    add_device(parser)
    outputs.add_overwrite(parser)
    add_dry_run(parser)
    args = parser.parse_args(argv)
    if dry_run(args):
        return 0

    weights = inception.weights_from_args(parser, args)
    outputs.check(
        inputs={"--images": args.images, "--inception-weights": weights},
        outputs={"--out": args.out},
    )
    paths = list_images(args.images, num_images=args.num_images, seed=args.seed)
    options = reference_options(args, paths=paths, weights=weights)
    with outputs.locked(args.out, flag="--out"):  # one writer: a second process refuses at once
        if outputs.replace_result(
            args.out,
            flag="--out",
            options=options,
            recorded=recorded_options,
            overwrite=args.overwrite,
        ):
            print(f"{args.out} already holds this reference batch; nothing to do")
            return 0
        return _write_reference(args, paths=paths, weights=weights, options=options)


def _write_reference(args, *, paths: list[Path], weights: Path, options: dict) -> int:
    device = distributed.pick_device(args.device)
    images = load_cropped(paths, image_size=args.image_size, num_workers=args.num_workers)
    arrays = build_reference(
        images=images,
        weights=weights,
        device=device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    prov = provenance.collect(device=device, weights=weights, files={})
    recorded = {k: v for k, v in options.items() if k != "inception_sha256"}  # a key of its own
    arrays["provenance_json"] = np.array(json.dumps({"options": recorded, "provenance": prov}))
    atomic_savez(args.out, **arrays)
    official = (
        "official"
        if prov["inception_weights"]["official"]
        else "UNCALIBRATED (not the official weights)"
    )
    print(
        f"wrote {args.out}: {len(paths)} images at {args.image_size}px, "
        f"Inception weights {official}"
    )
    return 0


def reference_options(args, *, paths: list[Path], weights: Path) -> dict:
    """What a reference batch depends on; an existing --out made otherwise is refused."""
    listing = [(str(p.relative_to(args.images)), p.stat().st_size) for p in paths]
    return {
        "num_images": len(paths),
        "seed": args.seed if args.num_images else None,
        "image_size": args.image_size,
        "crop": "ADM center_crop_arr (box halving, bicubic, centre)",
        "images_sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest(),
        "inception_sha256": provenance.sha256_file(weights),
    }


def recorded_options(path: Path) -> dict | None:
    """The options an existing reference npz was built with (None: not one of ours)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            record = json.loads(str(npz["provenance_json"]))["options"]
            return {**record, "inception_sha256": str(npz["inception_sha256"])}
    except (KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
