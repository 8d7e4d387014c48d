"""`udit sample`: class-conditional samples into an ADM-compatible .npz, resumable, DDP-ready.

    udit sample --checkpoint runs/x/checkpoints/ckpt-0400000.pt --num-samples 50000 --out s.npz
    torchrun --nproc_per_node 8 -m udit.sampling --checkpoint DiT-XL-2-256x256.pt --model DiT-XL/2

A training checkpoint names its model (its "args"); --model and the other model flags are for a
raw state dict such as a released checkpoint, which does not.
"""

import argparse
import sys

from udit import argtypes, outputs
from udit.cli import (
    add_device,
    add_dry_run,
    add_options,
    dry_run,
    options_of,
    parse_args,
    set_field_defaults,
)
from udit.errors import command_main
from udit.models.spec import add_model_kw
from udit.precision import PRECISIONS
from udit.sampling.generate import generate
from udit.sampling.options import LABEL_MODES, RANGES, SAMPLERS, WEIGHTS, SampleOptions
from udit.stop import mark_done


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="udit sample",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, help="training checkpoint or released state dict (.pt)"
    )
    p.add_argument(
        "--out", required=True, help="SAMPLES.npz (ADM format); shards go to SAMPLES.npz.parts/"
    )
    _add_sampling_flags(p)
    _add_model_flags(
        p.add_argument_group(
            "model of a raw state dict",
            "a training checkpoint records these; given with one, each must equal its value",
        )
    )
    _add_run_flags(p)
    outputs.add_overwrite(p)
    add_options(p)  # what a DAG job gets (udit.dag): SampleOptions fields as one JSON object
    add_dry_run(p)
    set_field_defaults(p, SampleOptions)  # the flags' defaults are the dataclass's, stated once
    return p


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """What the samples depend on (with the checkpoint): SampleOptions.config."""
    p.add_argument("--num-samples", type=RANGES["num_samples"], help="FID-50K as the paper")
    p.add_argument("--seed", type=RANGES["seed"], help="sample i depends only on (seed, i)")
    p.add_argument(
        "--cfg-scale", type=RANGES["cfg_scale"], help="1.0: no guidance (the paper's T2); T4: 1.5"
    )
    p.add_argument("--guidance-channels", help="eps channels guided: 3 as DiT/U-DiT, or 'all'")
    p.add_argument("--steps", type=RANGES["steps"], help="respaced sampling steps")
    p.add_argument("--sampler", choices=SAMPLERS, help="ancestral DDPM as the paper, or DDIM")
    p.add_argument("--eta", type=RANGES["eta"], help="DDIM eta (0: deterministic)")
    p.add_argument(
        "--labels",
        choices=LABEL_MODES,
        help="random: uniform draw per sample (DiT sample_ddp.py); uniform: i %% num_classes",
    )
    p.add_argument("--weights", choices=WEIGHTS, help="which weights of a training ckpt")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="tf32 as the official sample_ddp.py, bf16 autocast (a deviation) or strict fp32",
    )


def _add_model_flags(group) -> None:
    """MODEL_FIELDS: a training checkpoint's own; required only by a raw state dict."""
    group.add_argument("--model", help="registry name; required for a raw state dict")
    add_model_kw(group, help="model constructor overrides, as the weights were trained with")
    group.add_argument(
        "--vae", help="VAE hub id or local dir; default: the checkpoint's, else sd-vae-ft-ema"
    )
    group.add_argument(
        "--pixel", action="store_true", default=None, help="pixel-space model: no VAE"
    )
    group.add_argument(
        "--num-classes", type=RANGES["num_classes"], help="default: the checkpoint's, else 1000"
    )
    group.add_argument(
        "--image-size",
        type=RANGES["image_size"],
        help="pixels; default: the checkpoint's, else 256",
    )


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """How the run goes; the samples do not depend on these."""
    p.add_argument(
        "--batch-size", type=RANGES["batch_size"], help="samples per forward on each process"
    )
    p.add_argument("--grid", help="PNG of the first 64 samples; default: OUT with .png")
    add_device(p)
    p.add_argument("--keep-parts", action="store_true", help="keep OUT.parts/ after assembling OUT")
    p.add_argument("--pause-after-shard", type=argtypes.NONNEG, help=argparse.SUPPRESS)  # kills


@command_main("udit sample")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv, SampleOptions)
    del args.options  # merged into args by parse_args
    if dry_run(args):
        return 0
    generate(options_of(args, SampleOptions))
    mark_done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
