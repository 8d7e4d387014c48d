"""`udit import-features`: the official pre-extracted ImageNet VAE features -> a latent cache.

The U-DiT README offers ImageNet-256 as VAE features in fast-DiT's layout, read by the official
utils/fastdit_kit.py CustomDataset:

    imagenet_feature/
        imagenet256_features/{n}_{rank}.npy   (1, 4, 32, 32) float32 = posterior SAMPLE x 0.18215
        imagenet256_labels/{n}_{rank}.npy     (1,) int64 class index

The official train.py feeds a feature to the model as is (no VAE, no scale, no flip), so each
image has ONE latent: drawn once from the posterior of a randomly flipped crop at extraction.
CustomDataset sorts files by n * 8 + rank and drops the last one (its count must then be
1,281,167: we read the one extra file as the DistributedSampler's padding of 1,281,167 images
over 8 ranks); --keep-last keeps it.

Into udit.data.latents' format (moments (n, 2 flips, 2C, h, w) = [mean; logvar]): mean =
feature / 0.18215 and logvar = -inf (std 0), so sample_latent returns the stored feature for
every noise draw, and both flip slots hold the same latent. Training then sees exactly the
official data, which differs from `udit extract-latents`: no fresh posterior sample per step
and one fixed flip per image instead of a random one of both (README).
"""

import argparse
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from udit import argtypes, outputs
from udit.cli import add_dry_run, dry_run
from udit.errors import BadValueError, command_main
from udit.io import atomic_write_bytes, atomic_write_json, sha256_file
from udit.paper import recipe

OFFICIAL_NAME = re.compile(r"^(\d+)_(\d)\.npy$")  # '{n}_{rank}.npy', one-digit rank


def _official_key(name: str):
    match = OFFICIAL_NAME.match(name)
    return (0, int(match.group(1)) * 8 + int(match.group(2)), name) if match else (1, 0, name)


def feature_files(root: str | Path, *, keep_last: bool = False) -> list[tuple[Path, Path]]:
    """(feature, label) file pairs in the official order (same file name in both folders)."""
    root = Path(root)
    if not root.is_dir():
        raise BadValueError(
            f"--features {root}: no such folder (the U-DiT README's imagenet_feature/ download, "
            "holding imagenet256_features/ and imagenet256_labels/)"
        )
    dirs = {p.name.rsplit("_", 1)[-1]: p for p in root.iterdir() if p.is_dir() and "_" in p.name}
    if "features" not in dirs or "labels" not in dirs:
        raise BadValueError(
            f"{root}: expected a *_features and a *_labels folder (fast-DiT layout, e.g. "
            f"imagenet256_features/ and imagenet256_labels/), found {sorted(os.listdir(root))}"
        )
    feats = {p.name for p in dirs["features"].glob("*.npy")}
    labels = {p.name for p in dirs["labels"].glob("*.npy")}
    if feats != labels or not feats:
        odd = sorted(feats ^ labels)[:5]
        raise BadValueError(
            f"{root}: feature and label files must pair by name ({len(feats)} features, "
            f"{len(labels)} labels; unpaired: {odd})"
        )
    names = sorted(feats, key=_official_key)
    names = names if keep_last else names[:-1]  # as the official CustomDataset
    return [(dirs["features"] / n, dirs["labels"] / n) for n in names]


def _read_npy(path: Path) -> np.ndarray:
    """One .npy array; a file numpy cannot read as a plain array is refused naming it."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as err:  # pickled, truncated or not .npy at all
        raise BadValueError(f"{path}: not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise BadValueError(f"{path}: holds a {type(array).__name__}, not one .npy array")
    return array


def _load(path: Path, *, side: int) -> np.ndarray:
    feature = _read_npy(path)
    if not (np.issubdtype(feature.dtype, np.integer) or np.issubdtype(feature.dtype, np.floating)):
        raise BadValueError(f"{path}: feature of dtype {feature.dtype}, expected float32")
    feature = feature[0] if feature.ndim == 4 and feature.shape[0] == 1 else feature
    if feature.shape != (4, side, side) or not np.isfinite(feature).all():
        raise BadValueError(
            f"{path}: feature of shape {feature.shape} (finite: {np.isfinite(feature).all()}), "
            f"expected finite (1, 4, {side}, {side})"
        )
    return feature.astype(np.float32)  # (4, side, side)


def _load_label(path: Path, *, num_classes: int) -> int:
    label = _read_npy(path).reshape(-1)
    if label.size != 1 or not np.issubdtype(label.dtype, np.integer):
        raise BadValueError(f"{path}: expected one integer label, got {label!r}")
    if not 0 <= label[0] < num_classes:
        raise BadValueError(
            f"{path}: label {int(label[0])} is outside [0, {num_classes}); fix the file or "
            f"pass the right --num-classes"
        )
    return int(label[0])


def import_features(
    *,
    features: str,
    out: str,
    image_size: int = recipe().image_size,
    vae: str = recipe().vae,
    shard_size: int = 1024,
    keep_last: bool = False,
    num_classes: int | None = None,  # labels must lie in [0, num_classes); None: max label + 1
) -> dict:
    from udit.data import latents as lt
    from udit.data.vae import LATENT_SCALE

    if shard_size < 1:
        raise BadValueError(f"--shard-size must be >= 1, got {shard_size}")
    pairs = feature_files(features, keep_last=keep_last)
    if not pairs:
        raise BadValueError(
            f"{features}: no feature left after dropping the last one (--keep-last)"
        )
    side = image_size // 8  # sd-vae-ft-ema
    settings = {  # what the shards depend on: udit.data.latents refuses to mix other ones
        "format_version": lt.FORMAT_VERSION,
        "vae": {"name": vae, "imported": True},
        "image_size": image_size,
        "num_images": len(pairs),
        "dataset_sha256": None,
        "flips": list(lt.FLIPS),
        "shard_size": shard_size,
        "dtype": "float32",
        "moments_shape": [8, side, side],
        "latent_scale": LATENT_SCALE,
        "source": {
            "features": str(features),
            "format": "fast-DiT features (posterior sample x latent_scale, one flip per image)",
            "dropped_last": not keep_last,
        },
    }
    os.makedirs(out, exist_ok=True)
    with outputs.locked(out, flag="--out"):  # one writer: a second process refuses at once
        labels, shards = _write_shards(
            pairs, out=out, settings=settings, num_classes=num_classes or argtypes.MAX_CLASSES
        )
        manifest = {
            **settings,
            "classes": [str(c) for c in range(num_classes or max(labels) + 1)],
            "shards": shards,
        }
        atomic_write_json(os.path.join(out, lt.MANIFEST), manifest)
    return manifest


def _write_shards(pairs, *, out: str, settings: dict, num_classes: int) -> tuple[list, list]:
    """Write the shards an earlier import did not finish; -> (every label, shard entries)."""
    from udit.data import latents as lt

    manifest_path = os.path.join(out, lt.MANIFEST)
    # Resume as extract-latents does: shards of an interrupted import whose bytes still match
    # the manifest are kept; the manifest is rewritten after every new shard.
    shards = lt.previous_shards(manifest_path, settings=settings, out=out)
    shard_size = settings["shard_size"]
    num_shards = math.ceil(len(pairs) / shard_size)
    all_labels = []
    # closed on an error too: the error message starts a line of its own
    with tqdm(total=len(pairs), unit="img", desc="import features", file=sys.stderr) as bar:
        for s in range(num_shards):
            labels = _keep_or_write_shard(
                s, pairs, out=out, shards=shards, settings=settings, num_classes=num_classes
            )
            all_labels += list(map(int, labels))
            bar.update(len(labels))
    return all_labels, [shards[lt.shard_name(s)] for s in range(num_shards)]


def _keep_or_write_shard(s: int, pairs, *, out: str, shards: dict, settings: dict, num_classes):
    """Shard `s`: kept when an earlier import finished it (its labels checked against
    num_classes), else read from its files and written; -> its labels."""
    from safetensors import safe_open

    from udit.data import latents as lt
    from udit.data.shards import check_labels

    shard_size = settings["shard_size"]
    chunk, name = pairs[s * shard_size : (s + 1) * shard_size], lt.shard_name(s)
    path = os.path.join(out, name)
    if lt.shard_is_intact(out, shards.get(name)):
        with safe_open(path, framework="np") as f:
            labels = f.get_tensor("labels")
        check_labels(Path(path), labels, start=s * shard_size, classes=num_classes)
        return labels
    side = settings["moments_shape"][-1]
    labels = _import_shard(chunk, path=path, side=side, num_classes=num_classes)
    shards[name] = {
        "file": name,
        "start": s * shard_size,
        "count": len(chunk),
        "bytes": os.path.getsize(path),
        "sha256": sha256_file(path),
    }
    manifest_path = os.path.join(out, lt.MANIFEST)
    atomic_write_json(manifest_path, {**settings, "shards": [shards[k] for k in sorted(shards)]})
    return labels


def _import_shard(chunk, *, path: str, side: int, num_classes: int) -> list[int]:
    """Read one shard's (feature, label) files and write the shard; -> its labels."""
    import torch
    from safetensors.torch import save

    from udit.data.vae import LATENT_SCALE

    labels = [_load_label(label_path, num_classes=num_classes) for _, label_path in chunk]
    means = [_load(f, side=side) / LATENT_SCALE for f, _ in chunk]  # sample_latent: x scale
    mean = torch.from_numpy(np.stack(means))  # (n, 4, h, w)
    logvar = torch.full_like(mean, -math.inf)  # std 0: the draw is the stored sample
    moments = torch.cat([mean, logvar], dim=1)  # (n, 8, h, w)
    tensors = {
        "moments": torch.stack([moments, moments], dim=1).contiguous(),  # both flips
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    atomic_write_bytes(path, save(tensors))
    return labels


@command_main("udit import-features")
def main(argv: list[str] | None = None) -> int:
    """`udit import-features`: the official pre-extracted VAE features into a latent cache."""
    parser = argparse.ArgumentParser(prog="udit import-features", description=main.__doc__)
    parser.add_argument("--features", required=True, help="folder with *_features/, *_labels/")
    parser.add_argument(
        "--out", required=True, help="latent cache, e.g. results/data/imagenet256/latents"
    )
    parser.add_argument("--image-size", type=argtypes.IMAGE_SIZE, default=recipe().image_size)
    parser.add_argument("--vae", default=recipe().vae, help="VAE to record")
    parser.add_argument("--shard-size", type=argtypes.BATCH, default=1024)
    parser.add_argument(
        "--num-classes",
        type=argtypes.CLASSES,
        default=None,
        help="labels must lie in [0, N) (ImageNet: 1000); default: the largest label + 1",
    )
    parser.add_argument(
        "--keep-last", action="store_true", help="keep the file the official loader drops"
    )
    add_dry_run(parser)
    args = parser.parse_args(argv)
    if dry_run(args):
        pairs = feature_files(args.features, keep_last=args.keep_last)
        print(f"{args.features}: {len(pairs)} feature/label pairs to import")
        return 0
    outputs.check(
        inputs={"--features": args.features}, outputs={"--out": args.out}, folders=("--out",)
    )
    manifest = import_features(
        features=args.features,
        out=args.out,
        image_size=args.image_size,
        vae=args.vae,
        shard_size=args.shard_size,
        keep_last=args.keep_last,
        num_classes=args.num_classes,
    )
    print(f"latent cache {args.out}: {manifest['num_images']} imported images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
