"""Training-step throughput: the harness's step (udit.train.train_step) vs a plain fp32 reference.

    python benchmarks/train_step.py                                  # CPU: U-DiT-S, batch 8
    python benchmarks/train_step.py --models U-DiT-B DiT-B/2 --batch 64 --device cuda \
        --precision bf16 --compile --tf32                            # GPU (untested here)

Both paths start from the same weights and see the same batch, timesteps, noise and label-drop
coins; the first step's losses must agree to --loss-tol (1e-4, issue 3) or the script exits 1.
  reference : eager fp32, attention as softmax(q k^T * scale) v spelled out, AdamW with
              foreach=False (one small kernel per tensor), contiguous NCHW, no compile.
  harness   : udit.train.train_step with the switches `udit train` offers (fused AdamW,
              --precision, --compile, --tf32) and the models' default attention:
              F.scaled_dot_product_attention (DiT and the U-shaped family both default to it).
The reference copy gets every attention `fused` switch turned off (DiT's Attention and the
U-shaped DownsampledAttention: explicit q k^T, the official code's form); as a catch-all,
`manual_attention()` also rebinds torch.nn.functional.scaled_dot_product_attention to an
explicit version for the reference step only and restores it on exit.
Images/s is the median over --iters timed steps after --warmup steps (compile happens there).
The 1-minute load average is printed: on a shared CPU it bounds how much a ratio means.
MFU (GPU): train FLOPs = 3 x forward (backward ~ 2 x forward) x 2 FLOPs per MAC, forward MACs
from fvcore via udit.flops (eval graph, re-parameterised FFN folded: a slight undercount).
"""

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from udit.diffusion import create_diffusion
from udit.models import MODELS, create_model
from udit.train import train_step
from udit.train_state import LabelDropControl

LATENT_CHANNELS = 4  # sd-vae-ft-ema latents
LATENT_SIZE = 32  # ImageNet 256 px through the f=8 VAE
NUM_CLASSES = 1000
LOSS_TOL = 1e-4  # issue 3: harness and reference loss agree to 1e-4
LR = 1e-4  # DiT recipe (paper_numbers.yaml training_settings.lr)
# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts) for the MFU column.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def _manual_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    if attn_mask is not None or dropout_p or is_causal:
        raise NotImplementedError("reference attention covers the plain (unmasked) case only")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)  # (N, H, T, T)
    return attn.softmax(dim=-1) @ v  # (N, H, T, d)


@contextlib.contextmanager
def manual_attention():
    """F.scaled_dot_product_attention -> explicit softmax(q k^T) v inside the block only."""
    saved = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _manual_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = saved


def use_explicit_attention(model: torch.nn.Module) -> int:
    """Turn off every attention `fused` switch in `model`; -> how many modules were switched."""
    switched = 0
    for m in model.modules():
        # DiT Attention and the U-shaped DownsampledAttention carry one
        if isinstance(getattr(m, "fused", None), bool):
            m.fused = False
            switched += 1
    return switched


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(*, batch: int, size: int, device: torch.device, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, LATENT_CHANNELS, size, size)
    return {
        "x": torch.randn(shape, generator=gen).to(device),  # (N, 4, h, w) latents
        "y": torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device),
        "t": torch.randint(0, 1000, (batch,), generator=gen).to(device),  # uniform t, T = 1000
        "noise": torch.randn(shape, generator=gen).to(device),
        "drop": torch.rand(batch, generator=gen) < 0.1,  # class dropout 0.1 (DiT recipe)
    }


def run_path(*, harness: bool, model: torch.nn.Module, batch: dict, args) -> dict:
    """Time one path on its own copy of `model`; -> {'loss': first-step loss, 'ips': [...]}."""
    device = batch["x"].device
    model = copy.deepcopy(model).train()
    if not harness and use_explicit_attention(model) == 0:
        raise RuntimeError(
            f"{type(model).__name__} has no attention `fused` switch: the reference would not "
            "run explicit attention"
        )
    drops = LabelDropControl(model)  # same label-drop coins on both paths
    drops.masks = batch["drop"][:, None].expand(-1, len(drops)).to(device)
    kernel = args.adam if harness else "loop"
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=LR,
        weight_decay=0,
        fused=True if kernel == "fused" else None,
        foreach=kernel == "foreach",
    )
    net, x = model, batch["x"]
    if harness and args.channels_last:
        net, x = (
            model.to(memory_format=torch.channels_last),
            x.to(memory_format=torch.channels_last),
        )
    if harness and args.compile:
        net = torch.compile(net)
    bf16 = harness and args.precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    attention = contextlib.nullcontext() if harness else manual_attention()
    diffusion = create_diffusion(timestep_respacing="")
    times, loss = [], None
    with attention:
        for i in range(args.warmup + args.iters):
            _sync(device)
            start = time.perf_counter()
            terms, _ = train_step(
                net=net,
                opt=opt,
                diffusion=diffusion,
                x=x,
                y=batch["y"],
                t=batch["t"],
                noise=batch["noise"],
                autocast=autocast,
            )
            _sync(device)
            times.append(time.perf_counter() - start)
            if i == 0:
                loss = terms["loss"].mean().item()
    drops.remove()
    ips = [len(batch["y"]) / s for s in times[args.warmup :]]
    return {"loss": loss, "ips": ips, "first_s": times[0]}


def mfu(*, name: str, ips: float, size: int, device: torch.device, peak: float | None) -> str:
    if device.type != "cuda" or not peak:
        return "-"
    from udit.flops import count_flops  # fvcore: only needed for the GPU column

    macs, _ = count_flops(create_model(name, input_size=size).eval(), input_size=size)
    return f"{100 * ips * 3 * 2 * macs / (peak * 1e12):.1f}%"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["U-DiT-S"], choices=list(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input-size", type=int, default=LATENT_SIZE, help="latent side")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="harness only")
    p.add_argument("--compile", action="store_true", help="torch.compile the harness model")
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls (CUDA; both paths)")
    p.add_argument(
        "--adam",
        choices=("fused", "foreach", "loop"),
        default="foreach",
        help="harness AdamW kernel (foreach: fastest measured on CPU, see README)",
    )
    p.add_argument("--channels-last", action="store_true", help="harness in channels-last")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--loss-tol", type=float, default=LOSS_TOL)
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU; default by GPU name")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch < 1 or args.iters < 1 or args.warmup < 1:
        print("train_step: --batch, --iters and --warmup must be >= 1", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_step: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # set from options, never at import
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    switches = [f"adam={args.adam}", args.precision]
    switches += ["compile"] * args.compile + ["channels-last"] * args.channels_last
    print(
        f"device={device} threads={torch.get_num_threads()} load_avg_1m={os.getloadavg()[0]:.2f} "
        f"batch={args.batch} latent={LATENT_CHANNELS}x{args.input_size}^2 "
        f"warmup={args.warmup} iters={args.iters} (median)"
    )
    print(
        f"harness: {' '.join(switches)}; reference: eager fp32, manual attention, "
        f"AdamW foreach=False"
    )
    header = (
        f"{'model':10} {'ref img/s':>10} {'harness img/s':>14} {'ratio':>6} "
        f"{'|dloss|':>9} {'MFU':>6}"
    )
    print(header)
    ok = True
    for name in args.models:
        torch.manual_seed(args.seed)
        model = create_model(
            name, input_size=args.input_size, in_channels=LATENT_CHANNELS, num_classes=NUM_CLASSES
        ).to(device)
        batch = make_batch(batch=args.batch, size=args.input_size, device=device, seed=args.seed)
        ref = run_path(harness=False, model=model, batch=batch, args=args)
        fast = run_path(harness=True, model=model, batch=batch, args=args)
        ref_ips, fast_ips = statistics.median(ref["ips"]), statistics.median(fast["ips"])
        diff = abs(ref["loss"] - fast["loss"])
        ok &= diff <= args.loss_tol
        print(
            f"{name:10} {ref_ips:10.2f} {fast_ips:14.2f} {fast_ips / ref_ips:5.2f}x "
            f"{diff:9.2e} {mfu(name=name, ips=fast_ips, size=args.input_size, device=device, peak=peak):>6}"
        )
        print(
            f"  per-step img/s  ref {[round(v, 2) for v in ref['ips']]}  "
            f"harness {[round(v, 2) for v in fast['ips']]}  "
            f"first step s: ref {ref['first_s']:.1f} harness {fast['first_s']:.1f}"
        )
        sys.stdout.flush()
    print(f"load_avg_1m at end={os.getloadavg()[0]:.2f}")
    if not ok:
        print(f"train_step: losses differ by more than {args.loss_tol}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
