"""Forward MACs per image as data, so `udit plan` and the DAG's job sizing need no torch.

udit/models/macs.json holds, for every registry model at its registered configuration, the
fvcore forward GMACs per image at the latent sides the paper trains on (32: 256 px, 64:
512 px; 4 channels) and the model's speed family (udit.plan turns T11 into one MACs/s rate
per family), plus the SD VAE decoder and the Inception network used by sampling and
evaluation. `scaled` holds the exact MACs of every toy model config/smoke.yaml builds
(`scale.model_kw`), so `udit plan` on it needs no torch either. Any other experiment with
`model_kw` or another size is counted live by udit.plan. After changing the registry, a
model's code or the smoke config, rewrite the file from the checkout's root with

    python -m udit.models.macs              # or: ... --scaled CONFIG [CONFIG ...]

(tests/test_plan.py checks entries against a live count).
"""

import argparse
import json
import sys
from pathlib import Path

from udit.errors import command_main
from udit.io import atomic_write_text

MACS_PATH = Path(__file__).with_name("macs.json")
SCALED_CONFIGS = ("config/smoke.yaml",)  # whose toy models `scaled` holds
LATENT_SIDES = (32, 64)  # sd-vae-ft-ema latents of 256 and 512 px images
# sd-vae-ft-ema's architecture (its config.json on the hub; diffusers AutoencoderKL)
SD_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
INCEPTION_SIDE = 299  # the FID Inception resizes every image to 299x299


def family(spec) -> str:
    """Speed family of a registry model (the T11 rows its rate comes from):
    'dit' (DiT blocks on one token grid), 'udit-vanilla' (U-shaped, plain attention and MLP:
    DiT-UNet, U-DiT-T and its downsampler variants, U-DiT-S/B/L vanilla), 'udit' (any of the
    paper's modifications: cosine attention, RoPE2D, depthwise FFN, re-param)."""
    config = spec.extra.get("config")
    if config is None:
        return "dit"
    modified = config["cosine"] or config["rope"] or config["ffn"] != "mlp"
    return "udit" if modified else "udit-vanilla"


def vae_decode_gmacs(side: int) -> float:
    """fvcore GMACs of one sd-vae-ft-ema decode of a side x side latent."""
    import torch
    from diffusers import AutoencoderKL
    from fvcore.nn import FlopCountAnalysis

    vae = AutoencoderKL(**SD_VAE_CONFIG).eval()
    z = torch.zeros(1, 4, side, side)
    counter = FlopCountAnalysis(vae.decoder, (z,)).unsupported_ops_warnings(False)
    return counter.uncalled_modules_warnings(False).total() / 1e9


def inception_gmacs() -> float:
    """fvcore GMACs of Inception-v3 (torchvision's layout of the FID network) at 299 px."""
    import torch
    from fvcore.nn import FlopCountAnalysis
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    x = torch.zeros(1, 3, INCEPTION_SIDE, INCEPTION_SIDE)
    counter = FlopCountAnalysis(net, (x,)).unsupported_ops_warnings(False)
    return counter.uncalled_modules_warnings(False).total() / 1e9


def scaled_entries(configs: list[dict], models: dict) -> list[dict]:
    """The MACs of every model the (loaded) configs' experiments build that is not in `models`
    (the registry at the paper's sides), counted live, in a stable order."""
    from udit import experiments as ex
    from udit import plan

    keys = set()
    for config in configs:
        for exp in ex.resolve_experiments(config).values():
            key = plan.macs_key(exp, config)
            if plan.registered_gmacs(*key, models=models) is None:
                keys.add(key)
    entries = []
    for model, side, channels, kw_json in sorted(keys):
        kw = json.loads(kw_json)
        macs = plan.model_macs(model, side, channels, kw)
        entries.append(
            {"model": model, "side": side, "channels": channels, "model_kw": kw, "macs": macs}
        )
        print(model, side, channels, kw_json, macs, flush=True)
    return entries


def registry_entries(names=None) -> dict:
    """Model name -> speed family and GMACs at the paper's latent sides, counted live, for the
    named registry models (default: all)."""
    from udit.models import MODELS
    from udit.plan import model_gflops

    models = {}
    for name in names or MODELS:
        spec = MODELS[name]
        gmacs = {
            str(side): round(
                model_gflops(model=name, input_size=side, in_channels=4, model_kw={}), 4
            )
            for side in LATENT_SIDES
        }
        models[name] = {"family": family(spec), "gmacs": gmacs}
        print(name, models[name], flush=True)
    return models


def macs_index(scaled_configs=SCALED_CONFIGS) -> dict:
    from udit import experiments as ex

    # a bad config path or value stops here, not after minutes of counting the registry
    configs = [ex.load_config(path) for path in scaled_configs]
    for config in configs:
        ex.resolve_experiments(config)
    models = registry_entries()
    return {
        "models": models,
        "vae_decode_gmacs": {str(s): round(vae_decode_gmacs(s), 3) for s in LATENT_SIDES},
        "inception_gmacs": round(inception_gmacs(), 4),
        "scaled": scaled_entries(configs, models),
    }


@command_main("python -m udit.models.macs")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udit.models.macs", description=__doc__)
    parser.add_argument("--scaled", nargs="+", default=list(SCALED_CONFIGS), metavar="CONFIG")
    args = parser.parse_args(argv)
    atomic_write_text(MACS_PATH, json.dumps(macs_index(args.scaled), indent=1) + "\n")
    print(f"wrote {MACS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
