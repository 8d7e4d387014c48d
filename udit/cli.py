"""`udit <command> ...`: dispatch to the module that owns each command.

Every command module is also importable and exposes `main(argv) -> int`, so scripts,
tests and Snakemake rules can call the same code (edm2 style).
"""

import importlib
import json
import sys

# command -> module with a `main(argv: list[str] | None) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "flops": ("udit.flops", "count forward GFLOPs of every registry model with fvcore"),
    "toy-data": ("udit.data.toy", "write a seeded procedural toy ImageFolder"),
    "tiny-vae": ("udit.data.vae", "save a random-init tiny AutoencoderKL for toy runs"),
    "train": (
        "udit.training.loop",
        "train a registry model (DiT recipe; resumable, DDP under torchrun)",
    ),
    "begin-node": (
        "udit.training.node",
        "before a DAG training node: drop checkpoints past its start on its first attempt",
    ),
    "sample": (
        "udit.sample",
        "draw class-conditional samples into an ADM-format .npz (resumable, torchrun-ready)",
    ),
    "build-reference": (
        "udit.metrics.reference",
        "ADM-format reference npz (images, mu/sigma, mu_s/sigma_s) from an image folder",
    ),
    "evaluate": (
        "udit.metrics.evaluate",
        "FID, sFID, IS, precision/recall, KID of a samples npz vs a reference",
    ),
    "make-standin-inception": (
        "udit.metrics.standin",
        "seeded random-weight Inception for offline smoke runs (uncalibrated)",
    ),
    "plan": ("udit.plan", "compute and hours of every job of a config, before launch"),
    "download": ("udit.download", "fetch the reference batches, Inception, VAE, releases"),
    "import-features": ("udit.data.features", "official pre-extracted VAE features -> latents"),
    "report": ("udit.report", "paper vs reproduction tables, figures and HTML page"),
    "extract-latents": (
        "udit.data.latents",
        "encode an ImageFolder, both flips, into a sharded latent cache",
    ),
    "export": ("udit.export.cli", "a checkpoint -> a Hub-ready diffusers DiTPipeline folder"),
    "push": ("udit.export.push", "upload an export folder to the Hugging Face Hub"),
}


def add_dry_run(parser) -> None:
    """One --dry-run for every command that does expensive work (edm2 style)."""
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved options as JSON and exit"
    )


def dry_run(args) -> bool:
    """Print `args` as JSON if --dry-run was given; -> whether the command should stop here."""
    if getattr(args, "dry_run", False):
        options = {k: v for k, v in vars(args).items() if k != "dry_run"}
        print(json.dumps(options, indent=2, sort_keys=True, default=str))
        return True
    return False


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: udit <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`udit <command> --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"udit: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
