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
import os
import socket
import sys
import warnings
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from udit.errors import BadValueError, UserError, command_main
from udit.paper import recipe

if TYPE_CHECKING:  # diffusers takes ~4 s to import: only the functions that build a VAE do
    from diffusers import AutoencoderKL

# Latent scale 0.18215 (DiT train.py: `vae.encode(x).latent_dist.sample().mul_(0.18215)`).
LATENT_SCALE: float = recipe().latent_scale
DEFAULT_VAE: str = recipe().vae  # sd-vae-ft-ema, the VAE of DiT / U-DiT
# Seconds to wait for the hub before treating the machine as offline: a missing model must
# fail at once, not after huggingface_hub's ~23 s of retries.
HUB_PROBE_TIMEOUT_S = 3.0


class VaeNotAvailableError(RuntimeError, UserError):
    """The VAE is neither a local directory nor in the hub cache, and the hub is unreachable."""


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
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


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

    A hub id that is not in the local cache is downloaded only if the hub answers; offline,
    this raises VaeNotAvailableError at once with instructions.
    """
    from diffusers import AutoencoderKL

    looks_like_path = (
        name_or_path.startswith((".", os.path.sep, "~")) or name_or_path.count("/") > 1
    )
    if os.path.isdir(name_or_path):
        local_only = True
    elif looks_like_path:
        raise VaeNotAvailableError(_vae_missing_message(name_or_path, "no such local directory"))
    else:  # a hub id: use the cache, else download only if the hub answers
        local_only = _hub_is_cached(name_or_path) or not _hub_is_reachable()
    try:
        with warnings.catch_warnings():
            # diffusers passes an argument huggingface_hub 2.x deprecated; nothing for users to fix
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            vae = AutoencoderKL.from_pretrained(
                name_or_path,
                local_files_only=local_only,
                torch_dtype=dtype,
                low_cpu_mem_usage=False,  # the fast path needs `accelerate`; not a dependency
            )
    except (OSError, ValueError) as e:
        reason = "not in the local hub cache and the hub is unreachable" if local_only else str(e)
        raise VaeNotAvailableError(_vae_missing_message(name_or_path, reason)) from e
    return vae.to(device).eval().requires_grad_(False)


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


def save_tiny_vae(*, out_dir: str, seed: int = 0, **config_overrides) -> str:
    """Random-init a tiny AutoencoderKL (seeded) and save_pretrained it for load_vae(out_dir)."""
    from diffusers import AutoencoderKL

    config = {**tiny_vae_config(), **config_overrides}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vae = AutoencoderKL(**config)
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's global RNG as it was
    vae.save_pretrained(out_dir)
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
    parser.add_argument("--out", required=True, help="directory to save_pretrained into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-channels", type=int, default=4)
    args = parser.parse_args(argv)
    if os.path.isfile(os.path.join(args.out, "config.json")):
        print(f"tiny VAE already at {args.out}")
        return 0
    tmp = args.out.rstrip(os.path.sep) + ".tmp"
    save_tiny_vae(out_dir=tmp, seed=args.seed, latent_channels=args.latent_channels)
    os.replace(tmp, args.out)  # atomic: a crash never leaves a half-written VAE at --out
    print(f"saved tiny VAE to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
