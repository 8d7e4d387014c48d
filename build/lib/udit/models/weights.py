"""Load weights into a registry model from any checkpoint layout the project meets.

    load_checkpoint(model, "DiT-XL-2-256x256.pt")  # released DiT: plain EMA state dict
    load_checkpoint(model, "0400000.pt")           # official train.py: {"model","ema","opt","args"}
    load_checkpoint(model, ckpt, key="model")      # the raw (non-EMA) weights instead

Official DiT and U-DiT train.py save {"model", "ema", "opt", "args"} with "args" an
argparse.Namespace; released DiT checkpoints are the EMA state dict itself. DDP wrappers add
"module." prefixes. If the model defines `convert_official_state_dict(state_dict)` (the
U-shaped family re-parameterises its FFN), it is applied before loading.
"""

import argparse
import os
import pickle
from collections.abc import Mapping

import torch
from torch import nn

from udit.errors import UserError

DDP_PREFIX = "module."
WEIGHT_KEYS = ("ema", "model")  # sub-dicts of a training checkpoint that hold a state dict
MAX_LISTED = 8  # offending keys named in an error before "... and N more"
OFFICIAL_SOURCES = (
    "official checkpoints: DiT-XL/2 from "
    "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt "
    "(and DiT-XL-2-512x512.pt); U-DiT from the links in the README of "
    "https://github.com/YuchuanTian/U-DiT "
    "(Hugging Face yuchuantian/U-DiT, ModelScope YuchuanTian/U-DiT)"
)


class CheckpointError(RuntimeError, UserError):
    """A checkpoint that does not fit the model (missing/unexpected keys, shape mismatches)."""


def read_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> Mapping:
    """torch.load on CPU. weights_only refuses arbitrary pickled code; argparse.Namespace
    (the "args" entry of official train.py checkpoints) is allowed explicitly."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"checkpoint not found: {path!r}. Train one, or download {OFFICIAL_SOURCES}."
        )
    try:
        # add_safe_globals (torch >= 2.4) rather than the safe_globals context (>= 2.5).
        torch.serialization.add_safe_globals([argparse.Namespace])
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path!r} holds objects that weights_only loading refuses ({err}). "
            "If you trust the file, pass weights_only=False."
        ) from err


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(checkpoint: Mapping, *, key: str = "ema") -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint: checkpoint[key] if present, else the dict itself when it
    already is a state dict (released DiT files). DDP "module." prefixes are stripped."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}"
        )
    if key in checkpoint and _is_state_dict(checkpoint[key]):
        state = checkpoint[key]
    elif _is_state_dict(checkpoint):
        state = checkpoint
    else:
        present = [k for k in WEIGHT_KEYS if k in checkpoint]
        raise CheckpointError(
            f"checkpoint has no state dict under {key!r} and is not a plain state dict; "
            f"top-level keys: {sorted(map(str, checkpoint))[:MAX_LISTED]}"
            + (f" (try key={present[0]!r})" if present else "")
        )
    if all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def _listed(keys: list[str]) -> str:
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Every way `state` differs from model.state_dict() (names and shapes), as messages."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_listed(shapes)}")
    return problems


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict,
    *,
    key: str = "ema",
    strict: bool = True,
    weights_only: bool = True,
) -> nn.Module:
    """Load weights into `model` in place and return it.

    path_or_state_dict: a path, a training checkpoint dict ({"ema", "model", ...}) or a state dict.
    key:      which sub-dict of a training checkpoint to load ("ema" is what the papers sample).
    strict:   raise CheckpointError on any missing/unexpected key or shape mismatch; with
              strict=False only matching keys are loaded and shape mismatches still raise.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        checkpoint = read_checkpoint(path_or_state_dict, weights_only=weights_only)
        origin = repr(os.fspath(path_or_state_dict))
    else:
        checkpoint, origin = path_or_state_dict, "the given state dict"
    state = extract_state_dict(checkpoint, key=key)
    convert = getattr(model, "convert_official_state_dict", None)
    if callable(convert):
        state = convert(state)

    problems = check_state_dict(model, state)
    shape_problems = [p for p in problems if "shape mismatches" in p]
    if problems and (strict or shape_problems):
        expected = list(model.state_dict())
        raise CheckpointError(
            f"cannot load {origin} into {type(model).__name__}: "
            + "; ".join(problems)
            + f". The model expects {len(expected)} keys in the official layout, "
            f"e.g. {_listed(expected)}."
            " Check the model name and input size match the checkpoint."
        )
    model.load_state_dict(state, strict=strict)
    return model
