"""Regenerate the golden files that tests/test_golden.py compares our models against.

Runs the OFFICIAL model code (facebookresearch/DiT models.py, YuchuanTian/U-DiT udit_models.py),
exported by the caller to directories outside this repository: no official code lives here.
tests/golden/README.md has the export commands, the upstream commits and the package versions.

    PYTHONPATH=/tmp/official/deps python tests/golden/make_golden.py \
        --dit-repo /tmp/official/dit --udit-repo /tmp/official/udit --out tests/golden

Each case is one safetensors file (nothing pickled):
    state.<official key>  every parameter, seeded random values (the official init zeroes adaLN
                          and the output layer, so every output would be 0)
    input.x, input.t, input.y
    output.train          train mode; labels dropped by torch.rand after manual_seed(train_seed)
    output.eval           eval mode (U-DiT: re-param FFN folded by the official .eval(), once)
    output.cfg            eval-mode forward_with_cfg([x|x], [t|t], [y|null], cfg_scale)[:N]:
                          the conditional half, the one a sampler keeps
and string metadata (JSON): official constructor arguments, seeds, upstream commit, versions.

Weights and x are drawn in float64 and rounded to float16 values, so the files hold them as
float16 without loss; every model runs in float64 (model.double()) and outputs are stored in
float64, except where the official code itself computes in float32 (RoPE2D, see UDIT_NOROPE).
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

BATCH = 2  # samples per case (the cfg batch is 2 * BATCH: [cond | uncond])
CFG_SCALE = 4.0  # strong guidance: guided and unguided channels clearly differ
LABEL_DROP = 0.5  # class_dropout_prob: keeps the null row; frequent drops in train mode
WEIGHT_STD = 0.2  # random parameter values replacing the (partly zero) official init
LOGIT_SCALE_SPREAD = 0.5  # cosine-attention temperatures: log(10) +- this
LOGIT_SCALE_CLAMPED = 5.0  # above the official clamp log(100) = 4.6052, on a few heads
NUM_TIMESTEPS = 1000
WEIGHT_SEED, INPUT_SEED = 0, 1

DIT_CONFIG = {
    "input_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "hidden_size": 16,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 4.0,
    "class_dropout_prob": LABEL_DROP,
    "num_classes": 10,
    "learn_sigma": True,
}
# Width 8 with 2 heads: head_dim 4 / 8 / 16 at the three levels, the smallest RoPE2D allows.
# Input 16: the latent level (4x4) still has 2x2 tokens per group, so attention and RoPE2D
# matter there too.
UDIT_COMMON = {
    "input_size": 16,
    "down_factor": 2,
    "in_channels": 4,
    "hidden_size": 8,
    "depth": [1, 1, 1, 1, 1],
    "num_heads": 2,
    "mlp_ratio": 2,
    "class_dropout_prob": LABEL_DROP,
    "num_classes": 10,
    "learn_sigma": True,
}
# The switches of the official U_DiT_S / U_DiT_B / U_DiT_L.
UDIT_CONFIG = dict(
    UDIT_COMMON,
    ffn_type="rep",
    rep=1,
    attn_type="v2",
    posemb_type="rope2d",
    downsampler="dwconv5",
    down_shortcut=1,
)
# Official RoPE2D runs in float32 (precompute_freqs_cis_2d and apply_rotary_emb call .float()),
# which bounds the agreement of the released config at ~1e-6. The same weights without RoPE
# (posemb_type adds no parameters) check cosine attention, its clamp, the re-param FFN and label
# dropout at float64 round-off. The RoPE outputs are stored as float32, all the precision they
# carry.
UDIT_NOROPE = {"posemb_type": None}
# Vanilla U-DiT (paper T10): DiT attention and MLP with token downsampling. Without RoPE2D any
# head_dim works, so width 4 and input 8 keep the file small.
UDIT_VANILLA_CONFIG = dict(
    UDIT_COMMON,
    input_size=8,
    hidden_size=4,
    ffn_type="basic",
    attn_type=None,
    posemb_type=None,
    downsampler="dwconv5",
    down_shortcut=1,
)


def load_module(directory: Path, filename: str, name: str):
    path = directory / filename
    if not path.is_file():
        sys.exit(f"{path} not found: export it first (tests/golden/README.md)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fp16_exact(t: torch.Tensor) -> torch.Tensor:
    """Round to the nearest float16 value, kept in float64: stored as float16 without loss."""
    return t.half().double()


def compact(t: torch.Tensor) -> torch.Tensor:
    """Narrowest float dtype holding every value exactly (the test upcasts to float64)."""
    if t.is_floating_point():
        for dtype in (torch.float16, torch.float32):
            if torch.equal(t.to(dtype).double(), t.double()):
                return t.to(dtype).contiguous()
    return t.contiguous()


def randomise(model: torch.nn.Module, *, clamp_heads: bool) -> None:
    """Seeded random values for every parameter except DiT's fixed sin-cos pos_embed."""
    g = torch.Generator().manual_seed(WEIGHT_SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            if name.endswith("logit_scale"):
                u = torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1
                p.copy_(fp16_exact(math.log(10.0) + LOGIT_SCALE_SPREAD * u))
            else:
                noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
                p.copy_(fp16_exact(noise * WEIGHT_STD))
        if clamp_heads:  # one head per level above the clamp, so the clamp changes the output
            for blocks in (model.encoder_level_1, model.latent, model.decoder_level_1):
                blocks[0].attn1.logit_scale[0] = LOGIT_SCALE_CLAMPED


def to_float64(model: torch.nn.Module) -> torch.nn.Module:
    """model.double(), plus the one adaptation the official code needs for it: its
    TimestepEmbedder feeds float32 sinusoids to the MLP, an error in float64, so they are cast
    at the MLP input (our TimestepEmbedder does the same cast)."""

    def cast(mlp, args):
        return (args[0].to(mlp[0].weight.dtype),)

    for name, module in model.named_children():
        if name.startswith("t_embedder"):
            module.mlp.register_forward_pre_hook(cast)
    return model.double()


def find_train_seed(num_embedders: int) -> int:
    """First seed whose label-dropout draws (num_embedders x torch.rand(BATCH), the official
    order) drop some labels and keep others, differently per embedder when there are several."""
    for seed in range(1000):
        torch.manual_seed(seed)
        drops = torch.stack([torch.rand(BATCH) < LABEL_DROP for _ in range(num_embedders)])
        mixed = bool(drops.any()) and not bool(drops.all())
        if mixed and (num_embedders == 1 or not all(torch.equal(d, drops[0]) for d in drops)):
            return seed
    raise RuntimeError("no suitable seed")


@torch.no_grad()
def run_outputs(
    model, x, t, y, *, num_embedders: int, seed: int, null_class: int | None
) -> dict[str, torch.Tensor]:
    """Train (seeded), eval and (unless null_class is None) guided outputs. eval() is called
    exactly once: the official FeedForward.train(False) folds the re-param branches into
    dwconv[0].weight in place."""
    torch.manual_seed(seed)
    for _ in range(num_embedders):
        torch.rand(BATCH)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    out = {"train": model.train()(x, t, y)}
    if not torch.equal(torch.get_rng_state(), expected_rng):
        raise RuntimeError("the train forward used the RNG beyond label dropout")
    model.eval()
    out["eval"] = model(x, t, y)
    if null_class is not None:
        labels = torch.cat([y, torch.full_like(y, null_class)])
        both = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), labels, CFG_SCALE)
        out["cfg"] = both[:BATCH]
    for k, v in out.items():
        if not v.abs().max() > 1e-2 or v.dtype != torch.float64:
            raise RuntimeError(f"{k}: degenerate or not float64 ({v.dtype}, {v.abs().max()})")
    return {k: v.contiguous() for k, v in out.items()}


def make_case(
    build,
    config: dict,
    *,
    num_embedders: int,
    cfg: bool,
    clamp_heads: bool = False,
    norope: bool = False,
) -> tuple[dict, dict]:
    model = build(**config)
    randomise(model, clamp_heads=clamp_heads)
    to_float64(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # before any eval()

    gi = torch.Generator().manual_seed(INPUT_SEED)
    shape = (BATCH, config["in_channels"], config["input_size"], config["input_size"])
    x = fp16_exact(torch.randn(shape, generator=gi, dtype=torch.float64))
    t = torch.randint(0, NUM_TIMESTEPS, (BATCH,), generator=gi)
    y = torch.randint(0, config["num_classes"], (BATCH,), generator=gi)
    seed = find_train_seed(num_embedders)

    tensors = {f"state.{k}": compact(v) for k, v in state.items()}
    tensors.update({"input.x": compact(x), "input.t": t, "input.y": y})
    outputs = run_outputs(
        model,
        x,
        t,
        y,
        num_embedders=num_embedders,
        seed=seed,
        null_class=config["num_classes"] if cfg else None,
    )
    meta = {
        "official_config": json.dumps(config),
        "cfg_scale": json.dumps(CFG_SCALE),
        "train_seed": json.dumps(seed),
    }
    if norope:
        plain = to_float64(build(**dict(config, **UDIT_NOROPE)))
        plain.load_state_dict(state, strict=True)
        plain_out = run_outputs(
            plain, x, t, y, num_embedders=num_embedders, seed=seed, null_class=None
        )
        tensors.update({f"output.norope_{k}": v for k, v in plain_out.items()})
        outputs = {k: v.float() for k, v in outputs.items()}  # float32 RoPE upstream
        meta["norope_config"] = json.dumps(UDIT_NOROPE)
    tensors.update({f"output.{k}": v for k, v in outputs.items()})
    return tensors, meta


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dit-repo", type=Path, required=True, help="directory holding the official DiT models.py"
    )
    parser.add_argument(
        "--udit-repo",
        type=Path,
        required=True,
        help="directory holding the official U-DiT udit_models.py",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--dit-commit", default="unknown", help="upstream DiT commit (recorded)")
    parser.add_argument("--udit-commit", default="unknown", help="upstream U-DiT commit (recorded)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one reduction order: regenerating gives the same tensors
    if os.environ.get("MKL_CBWR") != "COMPATIBLE":  # MKL reads it once, at its first call
        parser.error("run with MKL_CBWR=COMPATIBLE: MKL's kernels otherwise depend on the CPU")
    dit = load_module(args.dit_repo, "models.py", "official_dit_models")
    udit = load_module(args.udit_repo, "udit_models.py", "official_udit_models")
    versions = json.dumps({p: version(p) for p in ("torch", "timm", "einops", "numpy")})

    def provenance(directory: Path, filename: str, commit: str) -> dict:
        sha = hashlib.sha256((directory / filename).read_bytes()).hexdigest()
        return {
            "source": filename,
            "source_sha256": sha,
            "upstream_commit": commit,
            "versions": versions,
        }

    dit_prov = provenance(args.dit_repo, "models.py", args.dit_commit)
    udit_prov = provenance(args.udit_repo, "udit_models.py", args.udit_commit)
    cases = {
        "dit": (make_case(dit.DiT, DIT_CONFIG, num_embedders=1, cfg=True), dit_prov),
        "udit": (
            make_case(
                udit.U_DiT, UDIT_CONFIG, num_embedders=3, cfg=True, clamp_heads=True, norope=True
            ),
            udit_prov,
        ),
        "udit_vanilla": (
            make_case(udit.U_DiT, UDIT_VANILLA_CONFIG, num_embedders=3, cfg=False),
            udit_prov,
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, ((tensors, meta), prov) in cases.items():
        path = args.out / f"{name}.safetensors"
        save_file(tensors, path, metadata={**meta, **prov})
        path.chmod(0o644)
        peaks = {
            k[7:]: round(float(v.abs().max()), 3)
            for k, v in tensors.items()
            if k.startswith("output.")
        }
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB, max |output| {peaks}")


if __name__ == "__main__":
    main()
