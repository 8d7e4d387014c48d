"""`udit toy-data`: a seeded, procedural, class-conditional image set in ImageFolder layout.

The toy set stands in for ImageNet in the embedded default workflow and the tests, and goes
through the same code path (ImageFolder -> centre crop -> VAE or pixels). Each class is one
structure (circle, stripes, checker, ...) with random colours, position, size and angle, so
a class-conditional model has something to learn, and a few thousand 32 px images are made
in seconds with numpy + PIL alone.

    root/00_circle/00_circle_00000.png, root/01_square/..., root/toy_data.json

Every image has its own RNG, seeded by (seed, class, index): the bytes do not depend on
the order of generation, so an interrupted run is completed, never duplicated.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from udit import argtypes, outputs
from udit.errors import BadValueError, command_main
from udit.io import atomic_write_json, read_json

MANIFEST = "toy_data.json"
GENERATOR_VERSION = 1  # bump when the pictures change, so old folders are not silently mixed
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges, like photos have
MIN_SIZE = 16
MAX_SIZE = 1024  # drawn at SUPERSAMPLE x: a 4096 px mask per image, 16 MB


# --- class structures: each draws a white-on-black mask (mode "L") of side n -----------------


def _polygon(draw, *, cx, cy, radius, sides, angle):
    theta = angle + 2 * np.pi * np.arange(sides) / sides
    draw.polygon([(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in theta], fill=255)


def _circle(rng, n):
    image = Image.new("L", (n, n), 0)
    cx, cy, r = rng.uniform(0.35, 0.65) * n, rng.uniform(0.35, 0.65) * n, rng.uniform(0.15, 0.3) * n
    ImageDraw.Draw(image).ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return image


def _square(rng, n):
    image = Image.new("L", (n, n), 0)
    angle = np.pi / 4 + rng.uniform(-0.25, 0.25)  # axis-aligned, +- 15 degrees
    _polygon(
        ImageDraw.Draw(image),
        cx=rng.uniform(0.35, 0.65) * n,
        cy=rng.uniform(0.35, 0.65) * n,
        radius=rng.uniform(0.2, 0.38) * n,
        sides=4,
        angle=angle,
    )
    return image


def _triangle(rng, n):
    image = Image.new("L", (n, n), 0)
    _polygon(
        ImageDraw.Draw(image),
        cx=rng.uniform(0.35, 0.65) * n,
        cy=rng.uniform(0.35, 0.65) * n,
        radius=rng.uniform(0.2, 0.38) * n,
        sides=3,
        angle=rng.uniform(0, 2 * np.pi),
    )
    return image


def _ring(rng, n):
    image = Image.new("L", (n, n), 0)
    cx, cy, r = rng.uniform(0.35, 0.65) * n, rng.uniform(0.35, 0.65) * n, rng.uniform(0.2, 0.35) * n
    width = max(1, round(r * rng.uniform(0.25, 0.4)))
    ImageDraw.Draw(image).ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=width)
    return image


def _cross(rng, n):
    image = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(image)
    cx, cy = rng.uniform(0.4, 0.6) * n, rng.uniform(0.4, 0.6) * n
    arm, half = rng.uniform(0.25, 0.4) * n, rng.uniform(0.06, 0.1) * n
    draw.rectangle([cx - arm, cy - half, cx + arm, cy + half], fill=255)
    draw.rectangle([cx - half, cy - arm, cx + half, cy + arm], fill=255)
    return image.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR, center=(cx, cy))


def _diamond(rng, n):
    image = Image.new("L", (n, n), 0)
    angle = rng.uniform(-0.25, 0.25)  # a vertex points right: 45 degrees away from _square
    _polygon(
        ImageDraw.Draw(image),
        cx=rng.uniform(0.35, 0.65) * n,
        cy=rng.uniform(0.35, 0.65) * n,
        radius=rng.uniform(0.22, 0.4) * n,
        sides=4,
        angle=angle,
    )
    return image


def _stripes(rng, n, *, base_angle):
    y, x = np.mgrid[0:n, 0:n] / n
    angle = base_angle + rng.uniform(-0.2, 0.2)
    period = rng.uniform(1 / 8, 1 / 4)
    u = x * np.cos(angle) + y * np.sin(angle) + rng.uniform(0, period)
    return Image.fromarray(np.where((u / period) % 1 < 0.5, 255, 0).astype(np.uint8))


def _hstripes(rng, n):
    return _stripes(rng, n, base_angle=np.pi / 2)


def _dstripes(rng, n):
    return _stripes(rng, n, base_angle=np.pi / 4)


def _checker(rng, n):
    y, x = np.mgrid[0:n, 0:n] / n
    period = rng.uniform(1 / 6, 1 / 3)
    ox, oy = rng.uniform(0, period, size=2)
    cells = np.floor((x + ox) / (period / 2)) + np.floor((y + oy) / (period / 2))
    return Image.fromarray(np.where(cells % 2 == 0, 255, 0).astype(np.uint8))


def _dots(rng, n):
    image = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(image)
    period = rng.uniform(0.18, 0.28) * n
    r = period * rng.uniform(0.18, 0.3)
    ox, oy = rng.uniform(0, period, size=2)
    for cy in np.arange(oy - period, n + period, period):
        for cx in np.arange(ox - period, n + period, period):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return image


CLASSES = {  # name -> mask drawer; the folder prefix keeps ImageFolder's sorted order = this order
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "ring": _ring,
    "cross": _cross,
    "diamond": _diamond,
    "hstripes": _hstripes,
    "dstripes": _dstripes,
    "checker": _checker,
    "dots": _dots,
}
CLASS_NAMES = list(CLASSES)
TOY_CLASSES = argtypes.Range("int", 1, len(CLASS_NAMES))
TOY_SIZE = argtypes.Range("int", MIN_SIZE, MAX_SIZE)


def class_folder(index: int) -> str:
    return f"{index:02d}_{CLASS_NAMES[index]}"


def make_image(*, class_index: int, image_index: int, size: int, seed: int) -> Image.Image:
    """One RGB image of class `class_index`; a pure function of its arguments."""
    rng = np.random.default_rng([seed, class_index, image_index])
    mask = CLASSES[CLASS_NAMES[class_index]](rng, size * SUPERSAMPLE)
    alpha = (
        np.asarray(mask.resize((size, size), resample=Image.BOX), dtype=np.float32)[..., None] / 255
    )
    background = rng.integers(0, 256, size=3)
    foreground = (
        background + rng.integers(80, 176, size=3)
    ) % 256  # >= 80 levels apart per channel
    pixels = alpha * foreground + (1 - alpha) * background
    pixels += rng.normal(0.0, 4.0, size=pixels.shape)  # faint sensor-like noise
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def generate_toy_data(
    *, out: str, num_classes: int = 10, per_class: int = 300, size: int = 32, seed: int = 0
) -> dict:
    """Write (or complete) the toy set under `out`; returns counts {written, skipped, total}."""
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise BadValueError(f"--num-classes must be in 1..{len(CLASS_NAMES)}, got {num_classes}")
    if per_class < 1:
        raise BadValueError(f"--per-class must be >= 1, got {per_class}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise BadValueError(f"--image-size must be in {MIN_SIZE}..{MAX_SIZE} px, got {size}")
    settings = {
        "generator_version": GENERATOR_VERSION,
        "num_classes": num_classes,
        "per_class": per_class,
        "size": size,
        "seed": seed,
        "classes": [class_folder(c) for c in range(num_classes)],
    }
    os.makedirs(out, exist_ok=True)
    with outputs.locked(out, flag="--out"):  # one writer: a second process refuses at once
        _claim_folder(out, settings)
        written = sum(
            _write_class(out, c, per_class=per_class, size=size, seed=seed)
            for c in range(num_classes)
        )
    total = num_classes * per_class
    return {"written": written, "skipped": total - written, "total": total}


def _claim_folder(out: str, settings: dict) -> None:
    """Record the settings first, so a partial folder says what it is; refuse other ones."""
    manifest = os.path.join(out, MANIFEST)
    if not os.path.exists(manifest):
        atomic_write_json(manifest, settings, sort_keys=True)
        return
    previous = read_json(manifest, what="toy-set manifest", hint="delete the folder")
    if previous != settings:
        raise BadValueError(
            f"{out!r} holds a toy set made with other settings ({previous}); "
            f"use another --out or delete it"
        )


def _write_class(out: str, c: int, *, per_class: int, size: int, seed: int) -> int:
    """Write the missing images of class `c`; -> how many were written."""
    folder = os.path.join(out, class_folder(c))
    os.makedirs(folder, exist_ok=True)
    written = 0
    for i in range(per_class):
        path = os.path.join(folder, f"{class_folder(c)}_{i:05d}.png")
        if os.path.exists(path):  # complete: it was renamed into place after writing
            continue
        tmp = path + ".tmp"  # not an image extension: ImageFolder never lists it
        try:
            make_image(class_index=c, image_index=i, size=size, seed=seed).save(tmp, format="PNG")
            os.replace(tmp, path)
        except BaseException:  # Ctrl-C or a full disk: no half-written file stays behind
            Path(tmp).unlink(missing_ok=True)
            raise
        written += 1
    return written


@command_main("udit toy-data")
def main(argv: list[str] | None = None) -> int:
    """`udit toy-data`: write a seeded procedural ImageFolder of coloured shapes and textures."""
    parser = argparse.ArgumentParser(prog="udit toy-data", description=main.__doc__)
    parser.add_argument("--out", required=True, help="root folder (root/<class>/<image>.png)")
    parser.add_argument(
        "--num-classes", type=TOY_CLASSES, default=10, help=f"1..{len(CLASS_NAMES)}"
    )
    parser.add_argument("--per-class", type=argtypes.SAMPLES, default=300, help="images per class")
    parser.add_argument("--image-size", type=TOY_SIZE, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=argtypes.SEED, default=0)
    args = parser.parse_args(argv)
    outputs.check(inputs={}, outputs={"--out": args.out}, folders=("--out",))
    start = time.perf_counter()
    counts = generate_toy_data(
        out=args.out,
        num_classes=args.num_classes,
        per_class=args.per_class,
        size=args.image_size,
        seed=args.seed,
    )
    print(
        f"toy data in {args.out}: {counts['written']} written, {counts['skipped']} already there, "
        f"{counts['total']} images, {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
