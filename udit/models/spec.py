"""What the registry stores per model: how to build it and what the paper says of it."""

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml
from torch import nn

from udit.errors import BadValueError


def slugify(name: str) -> str:
    """Path-safe slug of a paper name: 'DiT-S/4' -> 'dit-s-4',
    'DiT-UNet (Slim)' -> 'dit-unet-slim'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the paper's name, e.g. 'U-DiT-B'
    build: Callable[..., nn.Module]  # build(**overrides) -> nn.Module with forward(x, t, y)
    paper_gflops: float | None = None  # GFLOPs the paper reports at 256x256 (None: not reported)
    source: str = ""  # where paper_gflops comes from, e.g. 'T2', 'T9'
    note: str = ""  # reconstruction choices, inconsistencies in the paper
    extra: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return slugify(self.name)


def parse_model_kw(items: list[str]) -> dict:
    """CLI `--model-kw depth=2 mlp_ratio=2.0 ffn=rep` -> {'depth': 2, 'mlp_ratio': 2.0,
    'ffn': 'rep'}: constructor overrides. A value is read as JSON (numbers, lists,
    true/false/null as a user types them), else as YAML (bare words). DAG jobs skip this: their
    model_kw arrives typed inside `--options` (udit.cli.parse_args)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadValueError(f"--model-kw expects key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
            continue
        except ValueError:
            pass
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise BadValueError(
                f"--model-kw {item!r}: the value is neither JSON nor YAML ({err})"
            ) from None
    return out


class ModelKwAction(argparse.Action):
    """--model-kw KEY=VAL ...: parsed into a dict at parsing (parse_model_kw), the same type a
    `--options` document gives, so a command never sees the word list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, parse_model_kw(values))


def add_model_kw(parser, help: str = "model constructor overrides") -> None:
    """The one --model-kw of every command that builds a registry model (train, sample, export)."""
    parser.add_argument(
        "--model-kw", nargs="*", default={}, metavar="KEY=VAL", action=ModelKwAction, help=help
    )
