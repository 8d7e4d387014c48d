"""`udit make-standin-inception`: a seeded random-weight Inception-V3 for offline runs.

    udit make-standin-inception --out W --seed S --calibration-images DIR \
        [--num-calibration N] [--image-size PX]

Offline there is no official FID Inception (weights-inception-2015-12-05-6726825d.pth, a
download). This writes a state dict with exactly its keys and shapes (torch-fidelity's
FeatureExtractorInceptionV3), so it goes through the real `--inception-weights` path of
`udit build-reference` and `udit evaluate`. Every metric computed with it is meaningless as
a quality number and is flagged `uncalibrated: true` (its SHA-256 is not the official one,
see provenance.is_official_weights); it only lets the pipeline run end to end.

Why not PyTorch's default init: activations vanish through the 94 conv+BN layers (pool_3
std ~1e-8), so every metric is trivially 0. Instead (shared notes, environment.md):
  - convs: Kaiming-normal (fan_in, ReLU gain), so the signal keeps its scale per layer;
  - BatchNorm: gamma 1, beta 0, running mean/var set by one train-mode pass over a batch
    of real images (momentum None = plain average, so one batch sets them exactly);
  - fc (logits, IS): normal with std 1/sqrt(2048), bias 0 (unit-scale logits).
Everything draws from one seeded generator; the same seed, images and thread count give
the same tensors.
"""

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from torch_fidelity import FeatureExtractorInceptionV3
from torchvision.datasets import ImageFolder

import udit.io
from udit import argtypes, outputs
from udit.cli import add_dry_run, dry_run
from udit.data.imagenet import CenterCrop, read_rgb_image  # as build-reference and training
from udit.errors import UserError, command_main
from udit.metrics import provenance
from udit.metrics.inception import POOL
from udit.metrics.reference import IMAGE_SIZE

NUM_CALIBRATION = (
    32  # one batch: ~3 GB peak on CPU at 299x299; 32*8*8 = 2048 values per channel at Mixed_7c
)
MIN_CALIBRATION = 2  # batch statistics of one image are too noisy to stand for a dataset
FC_IN = 2048  # pool_3 width = fan-in of the logits layer
WEIGHTS_MODE = 0o644
MIN_POOL_STD = 1e-3  # below this the features have vanished (default init gives ~1e-8)
# one batch at 299x299 takes ~0.1 GB per image on CPU (32: ~3 GB): 256 bounds it near 25 GB
CALIBRATION_IMAGES = argtypes.Range("int", MIN_CALIBRATION, 256)


class _UninitialisedInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's layers without its weight load, which we replace by a seeded init.

    FeatureExtractorInceptionV3.__init__ builds every layer and then passes the torch.load of
    its weights path to self.load_state_dict (strict). We give it an in-memory empty dict and
    keep the freshly built layers; the file we write is later checked with the parent class's
    own strict load.
    """

    def __init__(self):
        empty = io.BytesIO()
        torch.save({}, empty)
        empty.seek(0)
        super().__init__("standin", [POOL, "logits"], feature_extractor_weights_path=empty)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        if state_dict:
            raise ValueError(
                "this class only builds the architecture; load weights with the parent"
            )
        # nothing to load: keep the new layers (torch-fidelity ignores the return value)


def initialise(model: torch.nn.Module, *, generator: torch.Generator) -> None:
    """Kaiming convs, identity BatchNorm ready to average one batch, small fc; see module doc."""
    for module in model.modules():  # fixed registration order: same draws for the same seed
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.reset_parameters()  # running stats 0/1, counter 0, gamma 1, beta 0
            module.momentum = None  # cumulative average: one batch sets the running stats
    torch.nn.init.normal_(model.fc.weight, std=FC_IN**-0.5, generator=generator)
    torch.nn.init.zeros_(model.fc.bias)


def load_calibration_images(
    folder: Path,  # ImageFolder tree: folder/<class>/<image>
    *,
    num_images: int,  # seeded subset of this size
    image_size: int,  # ADM centre-crop size
    seed: int,
) -> torch.Tensor:
    """uint8 (num_images, 3, image_size, image_size), a seeded subset, ADM centre-cropped."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--calibration-images: not a directory: {folder}")
    if num_images < MIN_CALIBRATION:
        raise ValueError(f"--num-calibration {num_images}: needs at least {MIN_CALIBRATION}")
    if image_size <= 0:
        raise ValueError(f"--image-size {image_size}: must be positive")
    try:
        dataset = ImageFolder(str(folder), transform=CenterCrop(image_size), loader=read_rgb_image)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"--calibration-images {folder}: not an ImageFolder tree (DIR/<class>/<image>): {err}"
        ) from err
    if len(dataset) < num_images:
        raise ValueError(
            f"--num-calibration {num_images}: {folder} holds only {len(dataset)} images"
        )
    chosen = np.random.default_rng(seed).choice(len(dataset), size=num_images, replace=False)
    images = [np.asarray(dataset[int(i)][0].convert("RGB")) for i in sorted(chosen)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


def standin_state_dict(
    *,
    calibration: torch.Tensor,  # uint8 (N, 3, H, W) real images
    seed: int,  # seeds every random draw
) -> tuple[dict[str, torch.Tensor], float]:
    """The stand-in weights and the pool_3 feature std on the calibration batch."""
    generator = torch.Generator().manual_seed(seed)
    model = _UninitialisedInceptionV3()
    initialise(model, generator=generator)
    model.train()  # BatchNorm uses and records the batch statistics
    with torch.no_grad():
        pool, _ = model(calibration)  # (N, 2048), (N, 1008); runs every BatchNorm once
    pool_std = float(pool.std())
    if not pool_std > MIN_POOL_STD:
        raise RuntimeError(
            f"calibrated pool_3 std {pool_std:.2e} <= {MIN_POOL_STD}: features vanished"
        )
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, pool_std


def atomic_torch_save(state_dict: dict, path: Path) -> None:
    """Temp file beside `path`, checked by torch-fidelity's own strict load, then os.replace."""

    def strict_load(tmp: Path) -> None:
        # the exact code path of --inception-weights: raises on any missing key or shape
        FeatureExtractorInceptionV3("check", [POOL], feature_extractor_weights_path=str(tmp))

    # WEIGHTS_MODE: mkstemp makes it owner-only; other jobs read this file
    udit.io.atomic_torch_save(state_dict, path, check=strict_load, file_mode=WEIGHTS_MODE)


def make_standin_inception(
    *,
    out: Path,  # weights file to write (torch state dict, ~96 MB)
    seed: int,
    calibration_images: Path,  # ImageFolder of real images
    num_calibration: int = NUM_CALIBRATION,
    image_size: int = IMAGE_SIZE,
    overwrite: bool = False,  # replace an existing --out holding other weights
) -> dict:
    """Write the stand-in weights atomically; returns what was done (for the log). An existing
    `out` holding exactly these weights is kept (a no-op); other bytes there are refused
    unless `overwrite`."""
    calibration = load_calibration_images(
        calibration_images, num_images=num_calibration, image_size=image_size, seed=seed
    )
    state_dict, pool_std = standin_state_dict(calibration=calibration, seed=seed)
    same = outputs.replace_result(
        out,
        flag="--out",
        options={"sha256": _saved_sha256(state_dict)},  # torch.save's bytes are deterministic
        recorded=lambda path: {"sha256": provenance.sha256_file(path)},
        overwrite=overwrite,
    )
    if not same:
        atomic_torch_save(state_dict, out)
    sha256 = provenance.sha256_file(out)
    assert not provenance.is_official_weights(sha256)  # evaluate must flag it uncalibrated
    return {
        "sha256": sha256,
        "pool_std": pool_std,
        "num_calibration": len(calibration),
        "kept": same,
    }


def _saved_sha256(state_dict: dict) -> str:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


@command_main("udit make-standin-inception")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="udit make-standin-inception", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pth)")
    parser.add_argument(
        "--seed", type=argtypes.SEED, required=True, help="seeds weights and image subset"
    )
    parser.add_argument(
        "--calibration-images", type=Path, required=True, help="ImageFolder of real images"
    )
    parser.add_argument(
        "--num-calibration",
        type=CALIBRATION_IMAGES,
        default=NUM_CALIBRATION,
        help=f"images in the BatchNorm calibration batch (default {NUM_CALIBRATION})",
    )
    parser.add_argument(
        "--image-size",
        type=argtypes.IMAGE_SIZE,
        default=IMAGE_SIZE,
        help="ADM centre-crop size before Inception",
    )
    outputs.add_overwrite(parser)
    add_dry_run(parser)
    args = parser.parse_args(argv)
    outputs.check(
        inputs={"--calibration-images": args.calibration_images}, outputs={"--out": args.out}
    )
    if dry_run(args):
        return 0
    with outputs.locked(args.out, flag="--out"):  # one writer: a second process refuses at once
        try:
            done = make_standin_inception(
                out=args.out,
                seed=args.seed,
                calibration_images=args.calibration_images,
                num_calibration=args.num_calibration,
                image_size=args.image_size,
                overwrite=args.overwrite,
            )
        except UserError:
            raise  # its own one-line message (an unreadable image, an existing --out)
        except (FileNotFoundError, ValueError) as err:
            parser.error(str(err))  # exit 2 with the message, no traceback
    if done["kept"]:
        print(f"{args.out} already holds these stand-in weights; nothing to do")
        return 0
    print(
        f"wrote {args.out} (sha256 {done['sha256']}): a STAND-IN Inception-V3, seeded random "
        f"weights (seed {args.seed}), BatchNorm calibrated on {done['num_calibration']} images "
        f"from {args.calibration_images} at {args.image_size}px; pool_3 std on that batch "
        f"{done['pool_std']:.3g}.\nThese are NOT the official FID weights: every metric "
        "computed with them is flagged uncalibrated and is no measure of image quality."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
