"""`udit plan --configfile config/paper.yaml`: training compute and GPU-hours before launch.

Per training node (experiment, milestone) and in total:

    compute = fvcore forward MACs per image x 3 (forward + backward) x images seen
    GPU-hours = compute / (sustained MACs per second per GPU) / 3600

FLOPs follow the paper's convention (one multiply-accumulate = one FLOP, architecture-facts.md
"FLOPs convention"). The default throughput is derived from the paper itself (T11): DiT-XL/2
trains at 1.71 steps/s on 8 A100s at global batch 256; pass --gpu-macs-per-s (or set
plan.gpu_macs_per_s in the config) with a number `udit bench` measured on your hardware.
"""
import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass

import torch

from udit import experiments as ex
from udit.flops import count_flops
from udit.models import get_spec

BACKWARD_FACTOR = 3         # forward + backward ~ 3x forward (DiT paper's training-compute convention)
SD_VAE_FACTOR = 8           # sd-vae-ft-ema: 256 px -> 32x32 latents (paper section 4)
TINY_VAE_FACTOR = 4         # udit.data.vae.tiny_vae_config: three blocks, 32 px -> 8x8
REFERENCE_MODEL = "DiT-XL/2 (replicated)"   # the T11 row the default throughput comes from


def paper_throughput() -> tuple[float, str]:
    """Sustained MACs/s per GPU implied by T11 (DiT-XL/2, 8x A100, global batch 256)."""
    numbers = ex.paper_numbers()
    steps_per_s = numbers["training_speed_T11"][REFERENCE_MODEL]
    gflops = numbers["dit_gflops"]["DiT-XL/2"]
    batch = numbers["training_settings"]["global_batch"]
    hardware = numbers["training_settings"]["hardware"]          # '8x A100 80G'
    gpus = int(re.match(r"(\d+)x", hardware).group(1))
    rate = gflops * 1e9 * BACKWARD_FACTOR * batch * steps_per_s / gpus
    return rate, (f"T11: {REFERENCE_MODEL} {steps_per_s} steps/s at batch {batch} on {hardware} "
                  f"({gflops} GFLOPs/img) -> {rate / 1e12:.1f} TMAC/s per GPU")


def latent_geometry(dataset: dict) -> tuple[int, int]:
    """(side, channels) of what the model sees for a dataset: VAE latents or pixels."""
    vae = dataset.get("vae")
    if not vae:
        return dataset["image_size"], 3
    factor = TINY_VAE_FACTOR if vae == "tiny" else SD_VAE_FACTOR
    return dataset["image_size"] // factor, 4


def model_gflops(*, model: str, input_size: int, in_channels: int, model_kw: dict) -> float:
    """fvcore forward GMACs per image of the registry model as the experiment builds it."""
    spec = get_spec(model)
    kwargs = {"input_size": input_size, **model_kw}
    if in_channels != 4:
        kwargs["in_channels"] = in_channels
    try:  # uninitialised weights on meta -> CPU: values do not change FLOPs, building is fast
        with torch.device("meta"):
            net = spec.build(**kwargs)
        net = net.to_empty(device="cpu")
    except (NotImplementedError, RuntimeError):
        net = spec.build(**kwargs)
    macs, _ = count_flops(net.eval(), input_size=input_size, in_channels=in_channels)
    return macs / 1e9


@dataclass
class PlanRow:
    experiment: str
    model: str
    table: str
    from_step: int
    to_step: int
    gflops: float             # forward GMACs per image
    images: int               # images seen in this node
    train_pflops: float       # 3 x forward x images, in PMACs
    gpu_hours: float


def plan_rows(config: dict, *, gpu_macs_per_s: float) -> list[PlanRow]:
    experiments = ex.resolve_experiments(config)
    ex.check_models(experiments)
    cache: dict[tuple, float] = {}
    rows = []
    for exp in experiments.values():
        side, channels = latent_geometry(config["datasets"][exp.dataset])
        key = (exp.model, side, channels, json.dumps(exp.model_kw, sort_keys=True))
        if key not in cache:
            cache[key] = model_gflops(model=exp.model, input_size=side, in_channels=channels,
                                      model_kw=exp.model_kw)
        gflops = cache[key]
        for step in exp.milestones:
            start = exp.previous_milestone(step)
            images = (step - start) * exp.global_batch
            macs = gflops * 1e9 * BACKWARD_FACTOR * images
            rows.append(PlanRow(experiment=exp.id, model=exp.model, table=exp.table, from_step=start,
                                to_step=step, gflops=gflops, images=images,
                                train_pflops=macs / 1e15, gpu_hours=macs / gpu_macs_per_s / 3600))
    return rows


def format_plan(rows: list[PlanRow], *, throughput_note: str) -> str:
    head = f"{'experiment':<24} {'model':<46} {'tab':<4} {'steps':>17} {'GFLOPs':>8} {'images':>13} {'PFLOPs':>11} {'GPU-h':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        steps = f"{r.from_step}->{r.to_step}"
        lines.append(f"{r.experiment:<24} {r.model:<46} {r.table:<4} {steps:>17} {r.gflops:>8.3f} "
                     f"{r.images:>13,} {r.train_pflops:>11.4g} {r.gpu_hours:>10.4g}")
    lines.append("-" * len(head))
    total_pf = sum(r.train_pflops for r in rows)
    total_h = sum(r.gpu_hours for r in rows)
    lines.append(f"{'total':<24} {len(rows)} training nodes{'':<31} {sum(r.images for r in rows):>13,} "
                 f"{total_pf:>11.4g} {total_h:>10.4g}")
    lines.append(f"compute = fvcore forward MACs x {BACKWARD_FACTOR} x images seen; throughput: {throughput_note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`udit plan`: print per node and in total the training compute and GPU-hours of a config."""
    parser = argparse.ArgumentParser(prog="udit plan", description=main.__doc__)
    parser.add_argument("--configfile", required=True, help="workflow config, e.g. config/paper.yaml")
    parser.add_argument("--gpu-macs-per-s", type=float, default=None,
                        help="sustained training MACs/s per GPU (default: config plan.gpu_macs_per_s, else from T11)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    try:
        config = ex.load_config(args.configfile)
    except ex.ConfigError as err:
        print(f"udit plan: {err}", file=sys.stderr)
        return 2
    rate = args.gpu_macs_per_s or config.get("plan", {}).get("gpu_macs_per_s")
    if rate is not None and rate <= 0:
        print(f"udit plan: --gpu-macs-per-s must be positive, got {rate}", file=sys.stderr)
        return 2
    note = f"{rate / 1e12:.1f} TMAC/s per GPU (given)" if rate else None
    if rate is None:
        rate, note = paper_throughput()
    rows = plan_rows(config, gpu_macs_per_s=rate)
    if args.format == "json":
        print(json.dumps({"throughput_macs_per_s_per_gpu": rate, "throughput_source": note,
                          "nodes": [asdict(r) for r in rows],
                          "total_pflops": sum(r.train_pflops for r in rows),
                          "total_gpu_hours": sum(r.gpu_hours for r in rows)}, indent=1))
    else:
        print(format_plan(rows, throughput_note=note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
