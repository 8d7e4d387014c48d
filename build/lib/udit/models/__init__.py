"""One registry of every model the paper trains, keyed by the paper's names.

    model = create_model("U-DiT-B", input_size=32, num_classes=1000)
    model(x, t, y)  # x: (N, 4, 32, 32) latents -> (N, 8, 32, 32): eps and learned-sigma channels

Models expose only forward; classifier-free guidance is udit.diffusion.ClassifierFreeGuidance.
"""

import inspect
import os

import torch
from torch import nn

from udit import argtypes
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


# Bounds on the size options of the constructors: far above the paper's largest (DiT-XL/2: depth
# 28, width 1152, 16 heads; U-DiT-L), low enough that an absurd value fails before a build.
MODEL_KW_RANGES = {
    "depth": argtypes.Range("int", 1, 1024),
    "depths": argtypes.Range("int", 0, 1024),  # per stage (a list)
    "hidden_size": argtypes.Range("int", 1, 65536),
    "num_heads": argtypes.Range("int", 1, 4096),
    "patch_size": argtypes.Range("int", 1, 64),
    "downsampler_kernel": argtypes.Range("int", 1, 64),
    "mlp_ratio": argtypes.Range("float", 0, 64, low_open=True),
    "dec1_mult": argtypes.Range("float", 0, 64, low_open=True),
    "class_dropout_prob": argtypes.PROBABILITY,
}


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
    for key, value in model_kw.items():
        allowed = MODEL_KW_RANGES.get(key)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            why = allowed and allowed.check(item)
            if why:
                raise BadValueError(f"--model-kw {key}={value!r}: {why}")
    return spec


def parameter_count(name: str, **overrides) -> int:
    """Parameters of the model these options build, counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return sum(p.numel() for p in model.parameters())


def memory_bytes(device: torch.device) -> int:
    """Total memory of `device`: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits_memory(
    name: str, *, device: torch.device, bytes_per_param: int, what: str, **overrides
) -> int:
    """Refuse a model whose parameters alone (x `bytes_per_param`) exceed the memory of
    `device`, before anything is allocated; -> the parameter count."""
    count = parameter_count(name, **overrides)
    need, have = count * bytes_per_param, memory_bytes(device)
    if need > have:
        shown = {k: v for k, v in overrides.items() if k not in ("input_size", "in_channels")}
        raise BadValueError(
            f"model {name} with {shown} has {count / 1e6:,.0f}M parameters: {what} needs at "
            f"least {need / 2**30:,.1f} GiB, {device} has {have / 2**30:,.1f} GiB; "
            f"choose smaller model_kw or a device with more memory"
        )
    return count


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registry model; overrides (input_size, num_classes, ...) go to its constructor."""
    spec = get_spec(name)
    try:
        return spec.build(**overrides)
    # constructors do no I/O: any of these comes from the options (a width the head count does
    # not divide, a negative size, a string where a number belongs)
    except (ValueError, AssertionError, RuntimeError, TypeError) as err:
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
