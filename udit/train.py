"""`udit train`: the DiT / U-DiT training recipe, resumable step-exactly, single process or DDP.

    udit train --model U-DiT-B --run-dir runs/udit-b --latents cache/in256 \
        --total-steps 1000000 --milestones 400000,1000000 --stop-at 400000
    torchrun --nproc_per_node 8 -m udit.train ...   # same command, same result, 8 GPUs

One run serves the 400K and the 1M rows: checkpoints at the milestones are kept forever,
and re-running the command (optionally with a larger --stop-at) continues the run.
Recipe (paper section 4 / official train.py, numbers from paper_numbers.yaml
`training_settings`): AdamW lr 1e-4, weight decay 0, constant lr, no warm-up, no grad
clipping, global batch 256, EMA 0.9999, class dropout 0.1, linear-beta 1000-step diffusion
with learned sigma (loss = MSE + VB), t uniform. Randomness is drawn per global sample
index (udit.train_state), so results do not depend on the number of GPUs.
"""

import argparse
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from udit import checkpointing, distributed
from udit.paper import training_settings
from udit.train_state import (
    FLIP_PROB,
    DataOrder,
    LabelDropControl,
    StepBatchSampler,
    build_train_data,
    draw_samples,
    make_ema,
    update_ema,
)

# Options that define the trajectory: a resumed run must match them exactly.
IDENTITY_FIELDS = tuple(
    "model model_kw latents images pixel vae global_batch seed num_classes image_size lr "  # noqa: SIM905
    "weight_decay ema_decay".split()
)


@dataclass
class TrainOptions:
    model: str  # registry name, e.g. 'U-DiT-B', 'DiT-S/2'
    run_dir: str  # everything of the run lives here; re-run = resume
    total_steps: int  # length of the whole run (1M serves 400K too)
    latents: str | None = None  # latent cache dir (VAE moments): the fast path
    images: str | None = None  # ImageFolder root: online VAE encode, or pixels
    pixel: bool = False  # with --images: train on pixels (toy runs, no VAE)
    vae: str = training_settings()["vae"]  # sd-vae-ft-ema, as DiT / U-DiT (images mode only)
    global_batch: int = int(training_settings()["global_batch"])  # 256 over all GPUs (paper section 4)
    lr: float = float(training_settings()["lr"])  # 1e-4 constant, no warm-up (DiT recipe)
    weight_decay: float = float(training_settings()["weight_decay"])  # 0 (DiT recipe)
    ema_decay: float = float(training_settings()["ema_decay"])  # 0.9999 (DiT recipe)
    seed: int = int(training_settings()["global_seed"])  # global seed 0 (official train.py)
    num_classes: int = 1000  # ImageNet-1k
    image_size: int = 256  # pixels; latent side = image_size / VAE factor
    model_kw: dict = field(default_factory=dict)  # model overrides (tiny widths for smoke runs)
    ckpt_every: int = 50_000  # official train.py saves every 50K steps
    keep_last: int = 2  # ordinary checkpoints kept; milestones always kept
    milestones: tuple[int, ...] = ()  # steps kept forever, e.g. (400000, 1000000)
    stop_at: int | None = None  # exit after this step (a DAG node per milestone)
    resume: str = "auto"  # 'auto' newest valid ckpt, 'never', or a ckpt path
    precision: str = "fp32"  # fp32 as the paper; bf16 autocast as a switch
    compile: bool = False  # torch.compile the model
    tf32: bool = False  # TF32 matmuls (official train.py enables it)
    fused_adam: bool = False  # fused AdamW kernel
    log_every: int = 100  # steps between JSONL log lines
    num_workers: int = 4  # DataLoader workers per rank
    device: str | None = None  # 'cpu' / 'cuda'; None: cuda when available
    pause_after_ckpt: float = 0.0  # seconds to sleep after each checkpoint (kill tests)
    inject_nan_at: int | None = None  # debug: make this step's loss NaN (NaN-stop tests)

    def validate(self) -> None:
        sources = sum(x is not None for x in (self.latents, self.images))
        if sources != 1:
            raise ValueError(
                "give exactly one data source: --latents DIR or --images DIR (optionally --pixel)"
            )
        if self.pixel and self.images is None:
            raise ValueError("--pixel trains on images: it needs --images DIR, not --latents")
        positive = "total_steps global_batch ckpt_every keep_last log_every image_size num_classes"
        for name in positive.split():
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.stop_at is not None and not 1 <= self.stop_at <= self.total_steps:
            raise ValueError(
                f"--stop-at {self.stop_at} must lie in [1, --total-steps {self.total_steps}]"
            )
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"--milestones must be positive steps, got {list(self.milestones)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision must be fp32 or bf16, got {self.precision!r}")


#################################################################################
#                                 Training loop                                 #
#################################################################################


def train(opts: TrainOptions) -> dict:
    """Train from the newest valid checkpoint (or from scratch) up to stop_at / total_steps."""
    opts.validate()
    info = distributed.setup(opts.device)
    try:
        return _train(opts, info)
    finally:
        distributed.cleanup(info)


class NonFiniteLossError(RuntimeError):
    """A training step produced a NaN or infinite loss; the run stopped before saving it."""


def _check_finite(bad: torch.Tensor, info: distributed.DistInfo, *, last_path) -> None:
    """Raise on every rank if any rank has seen a non-finite loss (`bad` as kept in _train)."""
    if distributed.all_reduce_mean((bad[:1] >= 0).float(), info).item() == 0:
        return
    keep = f"the newest checkpoint is {last_path}" if last_path else "no checkpoint was written"
    if bad[0] < 0:  # only another rank hit it
        raise NonFiniteLossError(f"rank {info.rank}: another rank hit a non-finite loss; {keep}")
    step, loss, mse, vb = bad.tolist()
    raise NonFiniteLossError(
        f"non-finite loss at step {int(step)} (loss={loss}, mse={mse}, vb={vb}); stopped before "
        f"logging or saving anything after it; {keep} (re-running resumes from it)"
    )


def train_step(*, net, opt, diffusion, x, y, t, noise, autocast, grad_norm: bool = False):
    """One optimiser step on the hybrid loss (MSE + VB); -> (per-sample terms, grad norm or None).
    Shared by the loop and benchmarks/train_step.py, so the benchmark times what trains."""
    with autocast:
        terms = diffusion.training_losses(net, x, t, model_kwargs={"y": y}, noise=noise)
    opt.zero_grad(set_to_none=True)
    terms["loss"].mean().backward()
    norm = None
    if grad_norm:  # total grad norm: no clipping in the recipe, logged for diagnosis
        norm = torch.nn.utils.get_total_norm(
            [p.grad for p in net.parameters() if p.grad is not None]
        )
    opt.step()
    return terms, norm


def _train(opts: TrainOptions, info: distributed.DistInfo) -> dict:
    from udit.diffusion import create_diffusion
    from udit.models import create_model

    run_dir, device = Path(opts.run_dir), info.device
    rank_seed = opts.seed * info.world_size + info.rank  # DiT: per-rank seed
    torch.manual_seed(rank_seed), np.random.seed(rank_seed), random.seed(rank_seed)
    if device.type == "cuda":  # precision switches come from options, never at import
        torch.backends.cuda.matmul.allow_tf32 = opts.tf32
        torch.backends.cudnn.allow_tf32 = opts.tf32
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpointing.check_same_run(run_dir, options=asdict(opts), identity_fields=IDENTITY_FIELDS)
        checkpointing.write_json_atomic(run_dir / checkpointing.OPTIONS_NAME, asdict(opts))
    distributed.barrier(info)

    dataset, kind, shape, prepare = build_train_data(
        latents=opts.latents,
        images=opts.images,
        pixel=opts.pixel,
        vae=opts.vae,
        image_size=opts.image_size,
        num_classes=opts.num_classes,
        device=device,
    )
    order = DataOrder(
        num_items=len(dataset),
        global_batch=opts.global_batch,
        world_size=info.world_size,
        rank=info.rank,
        seed=opts.seed,
    )
    sizes = {"input_size": shape[-1], "in_channels": shape[0], "num_classes": opts.num_classes}
    model = create_model(opts.model, **{**sizes, **opts.model_kw}).to(device)
    # DDP broadcasts rank 0's initial weights; the EMA copies them after (DiT: update_ema(decay=0)).
    net = model
    if info.enabled:
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    ema = make_ema(model)  # exact copy before any step
    drops = LabelDropControl(model)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=opts.lr,
        weight_decay=opts.weight_decay,
        fused=opts.fused_adam or None,
        # torch picks the per-tensor loop on CPU; the multi-tensor kernel is the same maths and
        # took ~1.5 s vs 3.6-10 s per U-DiT-S step (1043 tensors) on the 2-core CPU (see benchmarks/)
        foreach=None if opts.fused_adam else True,
    )
    diffusion = create_diffusion(timestep_respacing="")

    start, ckpt = checkpointing.resume_training_state(
        run_dir=run_dir, resume=opts.resume, info=info, model=model, ema=ema, opt=opt, order=order
    )
    stop = opts.stop_at or opts.total_steps
    if start >= stop:
        if info.is_main:
            print(f"nothing to do: at step {start}, stop at {stop}", file=sys.stderr)
        return {"step": start, "kind": kind, "checkpoint": str(ckpt) if ckpt else None}

    if opts.compile:
        net = torch.compile(net)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(order, start, stop),
        num_workers=opts.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=opts.num_workers > 0,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.precision == "bf16")
    milestones = set(opts.milestones)
    sums = torch.zeros(3, device=device)  # loss, mse, vb summed over steps since the last log line
    # (step, loss, mse, vb) of the first non-finite step, step -1 while none: kept on the device
    # so the loop never waits for the GPU; read before every log line and checkpoint.
    bad = torch.full((4,), -1.0, device=device)
    window_steps, window_start, last_path = 0, time.perf_counter(), ckpt
    bar = tqdm(total=stop, initial=start, file=sys.stderr, disable=not info.is_main)

    model.train()
    for step, (x, y) in zip(range(start, stop), loader):
        draws = draw_samples(
            seed=opts.seed,
            step=step,
            offset=order.global_offset(),
            count=len(y),
            shape=shape,
            num_timesteps=diffusion.num_timesteps,
            num_embedders=len(drops),
            drop_prob=drops.drop_prob,
            latent=kind in ("latents", "vae"),
            flip_prob=FLIP_PROB,
        )
        x = prepare(x, draws)  # (N, C, H, W) model input
        if opts.inject_nan_at == step + 1:  # debug: poison one step's batch (NaN-stop test)
            x = x * float("nan")
        y = y.to(device)
        drops.masks = draws.label_drop.to(device)  # (N, K) per-embedder drop coins
        done = step + 1
        log_now = done % opts.log_every == 0 or done == stop
        terms, grad_norm = train_step(
            net=net,
            opt=opt,
            diffusion=diffusion,
            x=x,
            y=y,
            t=draws.t.to(device),
            noise=draws.noise.to(device),
            autocast=autocast,
            grad_norm=log_now,
        )
        update_ema(ema, model, opts.ema_decay)
        parts = torch.stack([terms[k].detach().float().mean() for k in ("loss", "mse", "vb")])
        first = (bad[0] < 0) & ~torch.isfinite(parts).all()
        bad = torch.where(first, torch.cat([parts.new_full((1,), done), parts]), bad)
        sums += parts
        window_steps += 1
        bar.update(1)

        if log_now:
            _check_finite(bad, info, last_path=last_path)
            means = distributed.all_reduce_mean(sums / window_steps, info).tolist()
            elapsed = time.perf_counter() - window_start
            if info.is_main:
                record = {
                    "step": done,
                    "loss": means[0],
                    "mse": means[1],
                    "vb": means[2],
                    "grad_norm": float(grad_norm),
                    "lr": opt.param_groups[0]["lr"],
                    "images_per_sec": window_steps * opts.global_batch / elapsed,
                    "time": time.time(),
                }
                with open(run_dir / checkpointing.LOG_NAME, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{means[0]:.4f}")
            sums.zero_()
            window_steps, window_start = 0, time.perf_counter()

        if done % opts.ckpt_every == 0 or done in milestones or done == stop:
            _check_finite(bad, info, last_path=last_path)  # never save weights a NaN step touched
            last_path = checkpointing.save_training_state(
                run_dir=run_dir,
                info=info,
                model=model,
                ema=ema,
                opt=opt,
                order=order,
                step=done,
                args=asdict(opts),
                keep_last=opts.keep_last,
                milestones=tuple(opts.milestones),
            )
            if opts.pause_after_ckpt and done != stop:
                time.sleep(opts.pause_after_ckpt)
    bar.close()
    drops.remove()
    return {"step": stop, "kind": kind, "checkpoint": str(last_path)}


#################################################################################
#                                      CLI                                      #
#################################################################################


def _parse_kw(items: list[str]) -> dict:
    """['hidden_size=32', 'depth=2'] -> {'hidden_size': 32, 'depth': 2} (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-kw expects key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _parse_steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted(int(float(s)) for s in text.split(",") if s.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated steps like 400000,1000000, got {text!r}"
        )


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions(model="", run_dir="", total_steps=1)
    p = argparse.ArgumentParser(prog="udit train", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="registry name, e.g. U-DiT-B, DiT-S/2")
    p.add_argument("--run-dir", required=True, help="run folder; re-running the command resumes it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--latents", help="latent cache directory (VAE moments)")
    src.add_argument("--images", help="ImageFolder root (online VAE encode, or --pixel)")
    p.add_argument("--pixel", action="store_true", help="pixel space, no VAE")
    p.add_argument("--vae", default=d.vae, help="VAE hub id or local dir (images mode)")
    p.add_argument("--total-steps", type=int, required=True)
    p.add_argument("--global-batch", type=int, default=d.global_batch)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--keep-last", type=int, default=d.keep_last)
    p.add_argument(
        "--milestones", type=_parse_steps, default=d.milestones, help="e.g. 400000,1000000"
    )
    p.add_argument("--stop-at", type=int, default=None, help="exit after this step")
    p.add_argument("--resume", default=d.resume, help="auto | never | PATH")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--precision", choices=("fp32", "bf16"), default=d.precision)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--fused-adam", action="store_true")
    p.add_argument("--num-classes", type=int, default=d.num_classes)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--model-kw", nargs="*", default=[], metavar="KEY=VAL", help="model overrides")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    # Seconds to sleep after each checkpoint: lets a test SIGKILL the job at a known step.
    p.add_argument("--pause-after-ckpt", type=float, default=0.0, help=argparse.SUPPRESS)
    # Poison the batch of this step with NaN: tests that a non-finite loss stops the run.
    p.add_argument("--inject-nan-at", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="print options, exit")
    return p


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    names = {f.name for f in fields(TrainOptions)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["model_kw"] = _parse_kw(args.model_kw)
    return TrainOptions(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts = options_from_args(args)
        opts.validate()
    except ValueError as err:
        print(f"udit train: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(asdict(opts), indent=2))
        return 0
    try:
        result = train(opts)
    except NonFiniteLossError as err:
        print(f"udit train: error: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
