"""What the registry stores per model: how to build it and what the paper says of it."""
import re
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn


def slugify(name: str) -> str:
    """Path-safe slug of a paper name: 'DiT-S/4' -> 'dit-s-4', 'DiT-UNet (Slim)' -> 'dit-unet-slim'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass(frozen=True)
class ModelSpec:
    name: str                          # the paper's name, e.g. 'U-DiT-B'
    build: Callable[..., nn.Module]    # build(**overrides) -> nn.Module with forward(x, t, y)
    paper_gflops: float | None = None  # GFLOPs the paper reports at 256x256 (None: not reported)
    source: str = ""                   # where paper_gflops comes from, e.g. 'T2', 'T9'
    note: str = ""                     # reconstruction choices, inconsistencies in the paper
    extra: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return slugify(self.name)
