"""`udit <command> ...`: dispatch to the module that owns each command.

Every command module is also importable and exposes `main(argv) -> int`, so scripts,
tests and Snakemake rules can call the same code (edm2 style).
"""

import argparse
import dataclasses
import importlib
import json
import re
import sys
import types
import typing

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
        "udit.sampling.cli",
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


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_name(text: str) -> str:
    """argparse type of --device: 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_device(parser: argparse.ArgumentParser) -> None:
    """One --device for every command that computes (udit.distributed.pick_device reads it)."""
    parser.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto (CUDA when available), cpu, cuda or cuda:N; under torchrun each rank "
        "takes the GPU of its LOCAL_RANK",
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    """One --options for the commands a DAG job runs (train, sample): every option as one JSON
    object, typed as the config wrote it (edm2's options object), instead of a flag list."""
    parser.add_argument(
        "--options",
        metavar="JSON",
        help="options as one JSON object keyed by the flags' names (model_kw, cfg_scale, ...), "
        "as --dry-run prints them; a flag given as well overrides its key",
    )


def parse_args(parser: argparse.ArgumentParser, argv, fields_of: type) -> argparse.Namespace:
    """`parser.parse_args(argv)`, where `--options JSON` supplies the defaults: each key must be
    a field of the dataclass `fields_of` and a flag of the parser, with a value of the field's
    type (an int where a float is expected is widened; a list becomes a tuple field). Values
    keep their JSON types, so 1e-06, null, lists and nested objects arrive as written."""
    known, _ = _OPTIONS_ONLY.parse_known_args(argv)
    if known.options is not None:
        values = typed_options(known.options, fields_of, flags=_dests(parser))
        parser.set_defaults(**values)
        for action in parser._actions:  # a value from --options satisfies a required flag
            action.required = action.required and action.dest not in values
        for group in parser._mutually_exclusive_groups:
            group.required = group.required and not any(
                a.dest in values for a in group._group_actions
            )
    return parser.parse_args(argv)


def set_field_defaults(parser: argparse.ArgumentParser, cls: type) -> None:
    """Every flag whose name is a field of the dataclass `cls` defaults to the field's default:
    the dataclass states each default once (a flag's own default= drifted from it, unseen)."""
    dests = _dests(parser)
    parser.set_defaults(
        **{
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.name in dests and f.default is not dataclasses.MISSING
        }
    )


def options_of(args: argparse.Namespace, cls: type):
    """The options dataclass `cls` from parsed `args`: its fields (other flags, such as
    --dry-run and --options itself, are left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def typed_options(text: str, fields_of: type, *, flags: set[str]) -> dict:
    """The JSON object `text` checked against the fields of dataclass `fields_of`."""
    from udit.errors import BadValueError

    try:
        values = json.loads(text)
    except ValueError as err:
        raise BadValueError(f"--options is not JSON ({err}): {text[:200]!r}") from None
    if not isinstance(values, dict):
        raise BadValueError(f"--options must be a JSON object, got {type(values).__name__}")
    hints = typing.get_type_hints(fields_of)
    known = {f.name for f in dataclasses.fields(fields_of)} & flags
    out = {}
    for key, value in values.items():
        if key not in known:
            raise BadValueError(
                f"--options: unknown option {key!r}; known: {', '.join(sorted(known))}"
            )
        ok, out[key] = _as_type(value, hints[key])
        if not ok:
            raise BadValueError(
                f"--options: {key} must be {_type_name(hints[key])}, got {json.dumps(value)}"
            )
    return out


def _as_type(value, hint) -> tuple[bool, object]:
    """-> (whether `value` has type `hint`, the value as that type)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, typed = _as_type(value, arg)
            if ok:
                return True, typed
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return True, float(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        items = [_as_type(v, args[0]) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    base = origin or hint
    if base is int and isinstance(value, bool):
        return False, value
    return isinstance(value, base), value


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest != "help"}


_OPTIONS_ONLY = argparse.ArgumentParser(add_help=False)
_OPTIONS_ONLY.add_argument("--options")


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
