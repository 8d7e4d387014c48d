"""One registry of every model the paper trains, keyed by the paper's names.

    model = create_model("U-DiT-B", input_size=32, num_classes=1000)
    model(x, t, y)  # x: (N, 4, 32, 32) latents -> (N, 8, 32, 32): eps and learned-sigma channels
"""
import torch.nn as nn

from udit.models.checkpoint import load_checkpoint
from udit.models.dit import DIT_MODELS
from udit.models.spec import ModelSpec, slugify
from udit.models.unet import UNET_MODELS

MODELS: dict[str, ModelSpec] = {**DIT_MODELS, **UNET_MODELS}
MODEL_NAMES: list[str] = list(MODELS)
MODELS_BY_SLUG: dict[str, ModelSpec] = {spec.slug: spec for spec in MODELS.values()}


def get_spec(name: str) -> ModelSpec:
    """Look a model up by paper name or slug; unknown names list the valid ones."""
    spec = MODELS.get(name) or MODELS_BY_SLUG.get(name)
    if spec is None:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return spec


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registry model; overrides (input_size, num_classes, ...) go to its constructor."""
    return get_spec(name).build(**overrides)


__all__ = ["MODELS", "MODEL_NAMES", "ModelSpec", "create_model", "get_spec", "load_checkpoint", "slugify"]
