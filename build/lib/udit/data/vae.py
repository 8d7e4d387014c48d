"""The latent-space autoencoder: load the SD VAE (or a tiny local one) and fingerprint it.

DiT and U-DiT train in the latent space of Stable Diffusion's KL autoencoder
`stabilityai/sd-vae-ft-ema` (DiT train.py; U-DiT train.py `--vae ema`), and scale latents
by 0.18215 so they have roughly unit variance. Both numbers live in
udit/paper/paper_numbers.yaml (`training_settings`), the one in-repo source of paper numbers.

    vae = load_vae("stabilityai/sd-vae-ft-ema")      # hub id (cached) or a local directory
    save_tiny_vae(out_dir="runs/tiny-vae", seed=0)    # random-init toy VAE, same load path
"""

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from udit import argtypes, outputs
from udit.errors import BadValueError, UserError, command_main
from udit.inputs import VAE_WEIGHTS, hub_snapshot, vae_folder_problem
from udit.io import FILE_MODE
from udit.paper import recipe

if TYPE_CHECKING:  # diffusers takes ~4 s to import: only the functions that build a VAE do
    from diffusers import AutoencoderKL

# Latent scale 0.18215 (DiT train.py: `vae.encode(x).latent_dist.sample().mul_(0.18215)`).
LATENT_SCALE: float = recipe().latent_scale
DEFAULT_VAE: str = recipe().vae  # sd-vae-ft-ema, the VAE of DiT / U-DiT
# Seconds to wait for the hub before treating the machine as offline: a missing model must
# fail at once, not after huggingface_hub's ~23 s of retries.
HUB_PROBE_TIMEOUT_S = 3.0
LATENT_CHANNELS = argtypes.Range("int", 1, 64)  # the SD VAE has 4; 64 bounds a toy config
FOLDER_MODE = FILE_MODE | (FILE_MODE & 0o444) >> 2  # a folder is searchable where readable
# torch's load_state_dict message for one parameter of the wrong shape
SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


class VaeNotAvailableError(RuntimeError, UserError):
    """The VAE is neither a local directory nor in the hub cache, and the hub is unreachable."""


class BadVaeError(BadValueError):
    """A VAE folder that is incomplete, untrusted (pickled weights) or whose config does not
    fit its weights."""


def _vae_missing_message(name: str, reason: str) -> str:
    return (
        f"cannot load VAE {name!r}: {reason}.\n"
        f"Set the config key `vae` (CLI: `--vae`) to a local directory holding an AutoencoderKL "
        f"(config.json + weights), or pre-download it on a machine with internet:\n"
        f"  huggingface-cli download {name}\n"
        f"  (fills the hub cache; copy ~/.cache/huggingface/hub to this machine), or\n"
        f'  python -c "from diffusers import AutoencoderKL; '
        f"AutoencoderKL.from_pretrained('{name}').save_pretrained('VAE_DIR')\"\n"
        f"  then `--vae VAE_DIR`."
    )


def _hub_is_cached(name: str) -> bool:
    return hub_snapshot(name) is not None


def _hub_is_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    from huggingface_hub import constants

    # the env var is read here too: huggingface_hub reads it only once, at import
    offline_env = os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    if constants.HF_HUB_OFFLINE or offline_env:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def load_vae(
    name_or_path: str = DEFAULT_VAE,
    *,
    device: str | torch.device = "cpu",  # where the VAE runs
    dtype: torch.dtype = torch.float32,  # DiT encodes in float32
) -> "AutoencoderKL":
    """Load an AutoencoderKL from a local directory or a hub id; eval mode, no grad.

    A folder (local, or the hub cache's snapshot) is checked first (udit.inputs: config.json
    and diffusion_pytorch_model.safetensors; pickled weights are refused, never opened), and
    its weights must fit its config key for key. A hub id that is not in the local cache is
    downloaded only if the hub answers; offline, this raises VaeNotAvailableError at once.
    """
    folder, local_only = _where(name_or_path)
    if folder is not None:
        problem = vae_folder_problem(folder)
        if problem:
            raise BadVaeError(f"VAE {name_or_path}: {problem}")
    try:
        vae = _from_pretrained(name_or_path, local_only=local_only, dtype=dtype)
    except BadVaeError:
        raise
    except Exception as err:  # sorted below: the files' fault or the hub's
        if folder is None:
            reason = "not in the local hub cache and the hub is unreachable"
            raise VaeNotAvailableError(
                _vae_missing_message(name_or_path, reason if local_only else _first_line(err))
            ) from err
        raise BadVaeError(f"VAE folder {folder}: {_why_not_loaded(err)}") from None
    return vae.to(device).eval().requires_grad_(False)


def _where(name_or_path: str) -> tuple[Path | None, bool]:
    """(the folder to check, or None for a hub download; whether to stay offline)."""
    looks_like_path = (
        name_or_path.startswith((".", os.path.sep, "~")) or name_or_path.count("/") > 1
    )
    if os.path.isdir(name_or_path):
        return Path(name_or_path), True
    if os.path.exists(name_or_path):
        raise BadVaeError(
            f"VAE {name_or_path}: a file, not a folder holding config.json and {VAE_WEIGHTS[0]}"
        )
    if looks_like_path:
        raise VaeNotAvailableError(_vae_missing_message(name_or_path, "no such local directory"))
    if _hub_is_cached(name_or_path):  # a hub id: use the cache, else download if the hub answers
        return hub_snapshot(name_or_path), True
    return None, not _hub_is_reachable()


def _from_pretrained(name_or_path: str, *, local_only: bool, dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    # diffusers logs "Error no file named ..." and "Some weights ... newly initialized" on its
    # own; the checks here say the same thing once, naming the folder
    diffusers_logging.set_verbosity(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            # diffusers passes an argument huggingface_hub 2.x deprecated; nothing for users to fix
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            vae, info = AutoencoderKL.from_pretrained(
                name_or_path,
                local_files_only=local_only,
                torch_dtype=dtype,
                low_cpu_mem_usage=False,  # the fast path needs `accelerate`; not a dependency
                use_safetensors=True,  # never unpickle a .bin
                output_loading_info=True,
            )
    finally:
        diffusers_logging.set_verbosity(verbosity)
    _check_loading_info(name_or_path, info)
    return vae


def _check_loading_info(name_or_path: str, info: dict) -> None:
    """diffusers only warns about weights the config has no place for, or places the weights
    do not fill (left at random init): both mean the config does not fit the weights."""
    for key, what in (
        ("missing_keys", "missing from the weights"),
        ("unexpected_keys", "in the weights but not in the config's model"),
        ("mismatched_keys", "of another shape in the weights"),
    ):
        names = [str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or []]
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            raise BadVaeError(
                f"VAE folder {name_or_path}: its config.json does not fit its weights "
                f"({len(names)} parameters {what}: {', '.join(names[:3])}{more}); use the "
                f"config.json saved with these weights"
            )


def _why_not_loaded(err: Exception) -> str:
    """A shape mismatch (the first of torch's load_state_dict message, shortened) means the
    config does not fit the weights; anything else is a damaged file (its first line)."""
    found = SIZE_MISMATCH.search(str(err))
    if found is None:
        return f"cannot be loaded ({_first_line(err)}); replace its damaged config.json or weights"
    name, stored, built = found.groups()
    return (
        f"its config.json does not fit its weights ({name} is [{stored}] in the weights, "
        f"[{built}] in the model the config builds); use the config.json saved with them"
    )


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0][:200]


def tiny_vae_config(*, latent_channels: int = 4, sample_size: int = 32) -> dict:
    """A small AutoencoderKL config for toy runs and tests (~0.2 M parameters, CPU-fast).

    Three blocks downsample by 4 (the SD VAE has four blocks, factor 8), so 32 px toy images
    give 8x8 latents; 4 latent channels like the SD VAE, so models see the same channel count.
    """
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 32],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": latent_channels,
        "norm_num_groups": 8,  # must divide every block width
        "sample_size": sample_size,
        "scaling_factor": LATENT_SCALE,
    }


def build_tiny_vae(*, seed: int = 0, **config_overrides) -> "AutoencoderKL":
    """A random-init tiny AutoencoderKL (seeded), in memory."""
    from diffusers import AutoencoderKL

    config = {**tiny_vae_config(), **config_overrides}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return AutoencoderKL(**config)
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's global RNG as it was


def save_tiny_vae(*, out_dir: str, seed: int = 0, **config_overrides) -> str:
    """Random-init a tiny AutoencoderKL (seeded) and save_pretrained it for load_vae(out_dir)."""
    build_tiny_vae(seed=seed, **config_overrides).save_pretrained(out_dir)
    return out_dir


def latent_shape(vae: "AutoencoderKL", image_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the latents of an image_size image: each encoder level but the last halves
    the side (f = 8 for sd-vae-ft-ema's four levels)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % factor:
        raise BadValueError(
            f"image size {image_size} is not divisible by the VAE's factor {factor}"
        )
    return (vae.config.latent_channels, image_size // factor, image_size // factor)


def vae_fingerprint(vae: "AutoencoderKL") -> dict:
    """SHA-256 of the config and of the weights: two caches match only if both agree."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    config_hash = hashlib.sha256(
        json.dumps(config, sort_keys=True, default=str).encode()
    ).hexdigest()
    weights = hashlib.sha256()
    for key, tensor in sorted(vae.state_dict().items()):
        weights.update(key.encode())
        weights.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"config_sha256": config_hash, "weights_sha256": weights.hexdigest()}


@command_main("udit tiny-vae")
def main(argv: list[str] | None = None) -> int:
    """`udit tiny-vae --out DIR`: write a random-init tiny VAE for toy runs."""
    parser = argparse.ArgumentParser(prog="udit tiny-vae", description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory to save_pretrained into")
    parser.add_argument("--seed", type=argtypes.SEED, default=0)
    parser.add_argument("--latent-channels", type=LATENT_CHANNELS, default=4)
    outputs.add_overwrite(parser)
    args = parser.parse_args(argv)
    outputs.check(inputs={}, outputs={"--out": args.out}, folders=("--out",))
    with outputs.locked(args.out, flag="--out"):  # one writer: a second process refuses at once
        vae = build_tiny_vae(seed=args.seed, latent_channels=args.latent_channels)
        same = outputs.replace_result(
            args.out,
            flag="--out",
            options=vae_fingerprint(vae),  # the weights say which seed and channels made them
            recorded=lambda folder: vae_fingerprint(load_vae(str(folder))),
            overwrite=args.overwrite,
        )
        if same:
            print(f"tiny VAE already at {args.out}")
            return 0
        _save_folder(vae, args.out)
    print(f"saved tiny VAE to {args.out}")
    return 0


def _save_folder(vae: "AutoencoderKL", out: Path) -> None:
    """save_pretrained into a fresh folder beside `out`, then rename it into place: a crash or
    Ctrl-C leaves the old folder (or none), never a half-written one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        vae.save_pretrained(tmp)
        tmp.chmod(FOLDER_MODE)  # mkdtemp makes it owner-only; other jobs read the VAE
        if out.exists():  # --overwrite: the old folder goes aside, then away
            old = tmp.with_suffix(".old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
