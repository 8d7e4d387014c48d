"""One registry of every model the paper trains, keyed by the paper's names.

    model = create_model("U-DiT-B", input_size=32, num_classes=1000)
    model(x, t, y)  # x: (N, 4, 32, 32) latents -> (N, 8, 32, 32): eps and learned-sigma channels

Models expose only forward; classifier-free guidance is udit.diffusion.ClassifierFreeGuidance.
"""

import inspect

from torch import nn

from udit.errors import BadValueError
from udit.models.diffit import DIFFIT_MODELS
from udit.models.dit import DIT_MODELS
from udit.models.pixart import PIXART_MODELS
from udit.models.spec import ModelSpec, parse_model_kw, slugify
from udit.models.unet import UNET_MODELS
from udit.models.uvit import UVIT_MODELS
from udit.models.weights import load_checkpoint

MODELS: dict[str, ModelSpec] = {
    **DIT_MODELS,
    **UNET_MODELS,
    **UVIT_MODELS,  # T3: the other architectures the paper trains in the same setting
    **PIXART_MODELS,
    **DIFFIT_MODELS,
}
MODEL_NAMES: list[str] = list(MODELS)
MODELS_BY_SLUG: dict[str, ModelSpec] = {spec.slug: spec for spec in MODELS.values()}


def get_spec(name: str) -> ModelSpec:
    """Look a model up by paper name or slug; unknown names list the valid ones."""
    spec = MODELS.get(name) or MODELS_BY_SLUG.get(name)
    if spec is None:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return spec


def check_model_options(name: str, model_kw: dict) -> ModelSpec:
    """The spec of `name`, after checking that the model exists and that every `model_kw` key is
    a parameter of its constructor (from the signature: nothing is built). BadValueError names
    the culprit; an unknown key would otherwise be a TypeError deep inside the constructor."""
    try:
        spec = get_spec(name)
    except KeyError as err:
        raise BadValueError(f"--model: {err.args[0]}") from None
    params = inspect.signature(spec.build).parameters
    unknown = [k for k in model_kw if k not in params]
    if unknown:
        raise BadValueError(
            f"--model-kw {', '.join(unknown)}: not a parameter of {spec.name}; "
            f"valid keys: {', '.join(params)}"
        )
    return spec


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registry model; overrides (input_size, num_classes, ...) go to its constructor."""
    spec = get_spec(name)
    try:
        return spec.build(**overrides)
    except (ValueError, AssertionError) as err:  # e.g. a width the head count does not divide
        if isinstance(err, BadValueError):
            raise
        raise BadValueError(
            f"model {spec.name} cannot be built with {overrides}: {err}; fix --model-kw "
            f"(or model_kw in the config)"
        ) from None


__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "ModelSpec",
    "check_model_options",
    "create_model",
    "get_spec",
    "load_checkpoint",
    "parse_model_kw",
    "slugify",
]
