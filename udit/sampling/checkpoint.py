"""The checkpoint a sampling run reads: checked against the trainer's sidecar, loaded without
running anything, its model options (a training checkpoint's "args"), the model and the VAE.

Also what `udit export` reads a checkpoint with (udit/export/cli.py).
"""

import argparse
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from udit.errors import BadValueError, load_failure
from udit.io import sha256_file
from udit.paper import recipe
from udit.sampling.options import MODEL_FIELDS
from udit.training.store import SIDECAR_SUFFIX, sidecar_digest

RECIPE = recipe()
PIXEL_CHANNELS = 3  # RGB in [-1, 1] for pixel-space toy models


class UnusableCheckpointError(BadValueError):
    """A checkpoint that differs from its sidecar, does not load, or holds non-finite weights."""


def checkpoint_sha256(path: Path) -> str:
    """SHA-256 of the checkpoint's bytes, hashed here (the sidecar's word is not proof: the
    file may have been truncated or damaged after training wrote both). A `.sha256` sidecar
    that disagrees is refused."""
    actual = sha256_file(path)
    expected = sidecar_digest(path, errors="replace")  # a garbled sidecar is a mismatch
    if expected is not None and expected != actual:
        raise UnusableCheckpointError(
            f"checkpoint {path} does not match its sidecar {Path(path).name}{SIDECAR_SUFFIX} "
            f"(file sha256 {actual[:12]}..., sidecar {expected[:12] or 'empty'}...): it changed "
            f"after training wrote it; copy it again or use another checkpoint"
        )
    return actual


def read_sampling_checkpoint(path: Path, *, weights: str):
    """The checkpoint at `path` (weights_only), refused with its name when it does not load
    (truncated, not a checkpoint) or when the `weights` it would sample are not finite."""
    from udit.models.weights import CheckpointError, extract_state_dict, read_checkpoint

    try:
        state = read_checkpoint(path)
    except (FileNotFoundError, PermissionError):  # already name the file and the fix
        raise
    except (CheckpointError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise UnusableCheckpointError(
            f"checkpoint {path} cannot be loaded ({load_failure(err)}); it is truncated, damaged "
            "or not a torch checkpoint (loaded with weights_only=True: nothing in it was run)"
        ) from None
    for name, tensor in extract_state_dict(state, key=weights).items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise UnusableCheckpointError(
                f"checkpoint {path}: its {weights} weights are not finite, {name} holds {bad} "
                f"NaN/inf of {tensor.numel()} values (the run diverged or the file is damaged); "
                f"sample an earlier checkpoint"
            )
    return state


def checkpoint_options(checkpoint) -> dict:
    """MODEL_FIELDS a training checkpoint's "args" records ({} for a raw state dict)."""
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):  # official DiT / U-DiT train.py
        args = vars(args)
    if not isinstance(args, Mapping):
        raise BadValueError(
            f"the checkpoint's 'args' is a {type(args).__name__}, not the options of a "
            f"training run; it is damaged or not a training checkpoint"
        )
    return {k: args[k] for k in MODEL_FIELDS if args.get(k) is not None}


def resolve_options(*, given: dict, stored: dict) -> dict:
    """The model options to sample with: the checkpoint's own (`stored`), and where it records
    none (a raw state dict) the CLI's (`given`). A given value that differs from a stored one is
    refused, naming its flag: the weights only fit the architecture they were trained with.
    Equal values pass (older command lines sent them all), and so does a subset of the trained
    model_kw; the VAE may differ (a local copy of the hub model decodes the same latents)."""
    given, stored = _canonical_model(given), _canonical_model(stored)
    resolved = {key: _agreed(key, given.get(key), stored.get(key)) for key in MODEL_FIELDS}
    if resolved["model"] is None:
        raise BadValueError(
            "the checkpoint does not name its model (a raw state dict, e.g. a released "
            "one): pass --model"
        )
    resolved["model_kw"] = resolved["model_kw"] or {}
    resolved["pixel"] = bool(resolved["pixel"])
    resolved["num_classes"] = int(resolved["num_classes"] or RECIPE.num_classes)
    resolved["image_size"] = int(resolved["image_size"] or RECIPE.image_size)
    if resolved["pixel"]:
        resolved["vae"] = None
    elif resolved["vae"] is None:
        from udit.data.vae import DEFAULT_VAE

        resolved["vae"] = DEFAULT_VAE
    return resolved


def _canonical_model(options: dict) -> dict:
    """`options` with its model as the registry's paper name (a slug such as dit-s-2 names the
    same model); an unknown name is refused, listing the known ones."""
    from udit.models import get_spec

    if options.get("model") is None:
        return dict(options)
    try:
        return {**options, "model": get_spec(options["model"]).name}
    except KeyError as err:
        raise BadValueError(err.args[0]) from None


def _agreed(key: str, cli, saved):
    """One model option: the checkpoint's `saved` value, else the CLI's; a clash is refused."""
    if key == "model_kw":
        cli, saved = (cli or None), (dict(saved) if saved else None)
        if cli and saved is not None:  # a subset of the training overrides is fine
            clash = {k: v for k, v in cli.items() if k not in saved or saved[k] != v}
            if clash:
                raise BadValueError(
                    f"--model-kw {clash!r} contradicts the checkpoint, which was trained "
                    f"with model_kw={saved!r}; drop the option or fix it"
                )
            cli = saved
    if cli is not None and saved is not None and cli != saved and key != "vae":
        raise BadValueError(
            f"--{key.replace('_', '-')} {cli!r} contradicts the checkpoint, which was "
            f"trained with {key}={saved!r}; drop the option or use the matching checkpoint"
        )
    return cli if cli is not None else saved


def build_model(
    *,
    checkpoint,
    options: dict,
    in_channels: int,
    input_size: int,
    weights: str,
    device: torch.device,
) -> torch.nn.Module:
    """Registry model with the checkpoint's `weights` ('ema' or 'model'), eval mode, on `device`."""
    from udit.models import create_model, load_checkpoint

    overrides = {
        "input_size": input_size,
        "in_channels": in_channels,
        "num_classes": options["num_classes"],
        **options["model_kw"],
    }  # same order as train
    model = create_model(options["model"], **overrides)
    load_checkpoint(model, checkpoint, key=weights)
    return model.to(device).eval().requires_grad_(False)


def load_space(options: dict, *, device: torch.device):
    """(VAE or None, the (C, h, w) each sample is drawn in): pixels, or latents of the VAE."""
    if options["pixel"]:
        return None, (PIXEL_CHANNELS, options["image_size"], options["image_size"])
    from udit.data.vae import latent_shape, load_vae  # diffusers: only when a VAE is used

    vae = load_vae(options["vae"], device=device)
    return vae, latent_shape(vae, options["image_size"])


def vae_fingerprint(vae) -> dict | None:
    """What identifies the decoder's weights (None in pixel space): part of the shard config."""
    if vae is None:
        return None
    from udit.data.vae import vae_fingerprint as fingerprint

    return fingerprint(vae)
