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
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from udit import checkpointing, distributed
from udit.train_state import (DataOrder, LabelDropControl, StepBatchSampler, capture_rng, draw_samples,
                              make_ema, restore_rng, update_ema)

FLIP_PROB = 0.5          # random horizontal flip, as DiT's RandomHorizontalFlip()
LOG_NAME = "log.jsonl"
OPTIONS_NAME = "options.json"
# Options that define the trajectory: a resumed run must match them exactly.
IDENTITY_FIELDS = ("model", "model_kw", "latents", "images", "pixel", "vae", "global_batch", "seed",
                   "num_classes", "image_size", "lr", "weight_decay", "ema_decay")


@lru_cache(maxsize=1)
def _recipe() -> dict:
    text = resources.files("udit").joinpath("paper/paper_numbers.yaml").read_text()
    return yaml.safe_load(text)["training_settings"]


@dataclass
class TrainOptions:
    model: str                                   # registry name, e.g. 'U-DiT-B', 'DiT-S/2'
    run_dir: str                                 # everything of the run lives here; re-run = resume
    total_steps: int                             # length of the whole run (1M serves 400K too)
    latents: str | None = None                   # latent cache dir (VAE moments): the fast path
    images: str | None = None                    # ImageFolder root: online VAE encode, or pixels
    pixel: bool = False                          # with --images: train on pixels (toy runs, no VAE)
    vae: str = _recipe()["vae"]                  # sd-vae-ft-ema, as DiT / U-DiT (images mode only)
    global_batch: int = int(_recipe()["global_batch"])   # 256 over all GPUs (paper section 4)
    lr: float = float(_recipe()["lr"])           # 1e-4 constant, no warm-up (DiT recipe)
    weight_decay: float = float(_recipe()["weight_decay"])  # 0 (DiT recipe)
    ema_decay: float = float(_recipe()["ema_decay"])        # 0.9999 (DiT recipe)
    seed: int = int(_recipe()["global_seed"])    # global seed 0 (official train.py)
    num_classes: int = 1000                      # ImageNet-1k
    image_size: int = 256                        # pixels; latent side = image_size / VAE factor
    model_kw: dict = field(default_factory=dict) # constructor overrides (tiny widths for smoke runs)
    ckpt_every: int = 50_000                     # official train.py saves every 50K steps
    keep_last: int = 2                           # ordinary checkpoints kept; milestones always kept
    milestones: tuple[int, ...] = ()             # steps kept forever, e.g. (400000, 1000000)
    stop_at: int | None = None                   # exit after this step (a DAG node per milestone)
    resume: str = "auto"                         # 'auto' newest valid ckpt, 'never', or a ckpt path
    precision: str = "fp32"                      # fp32 as the paper; bf16 autocast as a switch
    compile: bool = False                        # torch.compile the model
    tf32: bool = False                           # TF32 matmuls (official train.py enables it)
    fused_adam: bool = False                     # fused AdamW kernel
    log_every: int = 100                         # steps between JSONL log lines
    num_workers: int = 4                         # DataLoader workers per rank
    device: str | None = None                    # 'cpu' / 'cuda'; None: cuda when available
    pause_after_ckpt: float = 0.0                # seconds to sleep after each checkpoint (kill tests)

    def validate(self) -> None:
        sources = sum(x is not None for x in (self.latents, self.images))
        if sources != 1:
            raise ValueError("give exactly one data source: --latents DIR or --images DIR (optionally --pixel)")
        if self.pixel and self.images is None:
            raise ValueError("--pixel trains on images: it needs --images DIR, not --latents")
        for name in ("total_steps", "global_batch", "ckpt_every", "keep_last", "log_every", "image_size",
                     "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.total_steps:
            raise ValueError(f"--stop-at {self.stop_at} must lie in [1, --total-steps {self.total_steps}]")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"--milestones must be positive steps, got {list(self.milestones)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision must be fp32 or bf16, got {self.precision!r}")


#################################################################################
#                                      Data                                     #
#################################################################################

def build_data(opts: TrainOptions, device: torch.device):
    """-> (dataset, kind, sample shape (C, H, W) the model sees, prepare(x, draws) -> model input)."""
    if opts.latents is not None:
        from udit.data import LatentDataset, sample_latent
        dataset = LatentDataset(opts.latents)
        if dataset.image_size != opts.image_size:
            raise ValueError(f"latent cache {opts.latents} was extracted at {dataset.image_size} px, "
                             f"but --image-size is {opts.image_size}")
        _check_classes(dataset, opts)
        moments, _ = dataset[0]
        shape = (moments.shape[0] // 2, *moments.shape[1:])  # moments = [mean; logvar]

        def prepare(x, draws):  # fresh z ~ N(mean, var) per step from the cached moments
            return sample_latent(x.to(device), draws.latent_noise.to(device))
        return dataset, "latents", shape, prepare

    from udit.data import build_image_dataset
    # Flip done here with the per-sample coin, so it does not depend on rank or worker RNG.
    dataset = build_image_dataset(opts.images, opts.image_size, flip=False)
    _check_classes(dataset, opts)

    def flip(x, draws):
        x = x.to(device)
        return torch.where(draws.flip.to(device)[:, None, None, None], x.flip(-1), x)

    if opts.pixel:
        return dataset, "pixels", (3, opts.image_size, opts.image_size), flip

    from udit.data import load_vae, sample_latent
    vae = load_vae(opts.vae, device=device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if opts.image_size % factor:
        raise ValueError(f"--image-size {opts.image_size} is not divisible by the VAE factor {factor}")
    shape = (vae.config.latent_channels, opts.image_size // factor, opts.image_size // factor)

    @torch.no_grad()
    def encode(x, draws):
        posterior = vae.encode(flip(x, draws)).latent_dist
        moments = torch.cat([posterior.mean, posterior.logvar], dim=1)  # (N, 2C, h, w)
        return sample_latent(moments, draws.latent_noise.to(device))
    return dataset, "vae", shape, encode


def _check_classes(dataset, opts: TrainOptions) -> None:
    if dataset.num_classes > opts.num_classes:
        source = opts.latents or opts.images
        raise ValueError(f"{source} has {dataset.num_classes} classes but --num-classes is {opts.num_classes}")


#################################################################################
#                                   Run folder                                  #
#################################################################################

def _write_json_atomic(path: Path, obj) -> None:
    checkpointing.atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _check_same_run(opts: TrainOptions, run_dir: Path) -> None:
    """A resumed run must have been started with the same trajectory-defining options."""
    path = run_dir / OPTIONS_NAME
    if not path.exists():
        return
    old, new = json.loads(path.read_text()), json.loads(json.dumps(asdict(opts)))
    diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in IDENTITY_FIELDS if old.get(k) != new[k]]
    if diff and checkpointing.list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} holds a run with different options ({'; '.join(diff)}); "
                         f"use another --run-dir or the original options")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resumed step (written after the checkpoint by a killed job)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    checkpointing.atomic_write_bytes(path, "".join(ln + "\n" for ln in lines).encode())


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
        _check_same_run(opts, run_dir)
        _write_json_atomic(run_dir / OPTIONS_NAME, asdict(opts))
    distributed.barrier(info)

    dataset, kind, shape, prepare = build_data(opts, device)
    order = DataOrder(num_items=len(dataset), global_batch=opts.global_batch, world_size=info.world_size,
                      rank=info.rank, seed=opts.seed)
    model_kw = {"input_size": shape[-1], "in_channels": shape[0], "num_classes": opts.num_classes,
                **opts.model_kw}
    model = create_model(opts.model, **model_kw).to(device)
    # DDP broadcasts rank 0's initial weights; the EMA copies them afterwards (DiT: update_ema(decay=0)).
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if info.enabled else model
    ema = make_ema(model)  # exact copy before any step
    drops = LabelDropControl(model)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay,
                            fused=opts.fused_adam or None)
    diffusion = create_diffusion(timestep_respacing="")

    start = 0
    ckpt = None
    if opts.resume == "auto":
        found = checkpointing.find_latest(run_dir)
        ckpt = found[1] if found else None
    elif opts.resume != "never":
        ckpt = Path(opts.resume)
        if not ckpt.is_file() or (problem := checkpointing.verify_checkpoint(ckpt)):
            raise ValueError(f"--resume {ckpt}: not a usable checkpoint ({problem if ckpt.is_file() else 'missing'})")
    if ckpt is not None:
        state = checkpointing.load_checkpoint_state(ckpt, map_location=device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        if state["data"] != _data_state(order, start):
            raise ValueError(f"{ckpt}: data position {state['data']} does not match this run's "
                             f"{_data_state(order, start)} (dataset or batch changed)")
        ranks = state["rng"]["ranks"]
        if len(ranks) == info.world_size:
            restore_rng(ranks[info.rank])
        elif info.is_main:  # the global RNGs drive nothing in the loop; per-sample draws are exact
            print(f"note: checkpoint saved with {len(ranks)} ranks, now {info.world_size}: global RNG "
                  f"states re-seeded (per-sample noise, data order unaffected)", file=sys.stderr)
        del state
        if info.is_main:
            print(f"resumed from {ckpt} at step {start}", file=sys.stderr)
    elif opts.resume == "auto" and checkpointing.list_checkpoints(run_dir) and info.is_main:
        print(f"warning: no valid checkpoint in {run_dir}; starting from scratch", file=sys.stderr)
    if info.is_main:
        _truncate_log(run_dir / LOG_NAME, start)

    stop = opts.stop_at or opts.total_steps
    if start >= stop:
        if info.is_main:
            print(f"nothing to do: at step {start}, stop at {stop}", file=sys.stderr)
        return {"step": start, "kind": kind, "checkpoint": str(ckpt) if ckpt else None}

    if opts.compile:
        net = torch.compile(net)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepBatchSampler(order, start, stop),
                                         num_workers=opts.num_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=opts.num_workers > 0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.precision == "bf16")
    milestones = set(opts.milestones)
    sums = torch.zeros(3, device=device)  # loss, mse, vb summed over steps since the last log line
    window_steps, window_start, last_path = 0, time.perf_counter(), ckpt
    bar = tqdm(total=stop, initial=start, file=sys.stderr, disable=not info.is_main, dynamic_ncols=True)

    model.train()
    for step, (x, y) in zip(range(start, stop), loader):
        draws = draw_samples(seed=opts.seed, step=step, offset=order.global_offset(), count=len(y),
                             shape=shape, num_timesteps=diffusion.num_timesteps, num_embedders=len(drops),
                             drop_prob=drops.drop_prob, latent=kind in ("latents", "vae"), flip_prob=FLIP_PROB)
        x = prepare(x, draws)                                    # (N, C, H, W) model input
        y = y.to(device)
        drops.masks = draws.label_drop.to(device)               # (N, K) per-embedder drop coins
        with autocast:
            terms = diffusion.training_losses(net, x, draws.t.to(device), model_kwargs={"y": y},
                                              noise=draws.noise.to(device))
        loss = terms["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        done = step + 1
        log_now = done % opts.log_every == 0 or done == stop
        if log_now:  # total grad norm (no clipping in the recipe; logged for diagnosis)
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        opt.step()
        update_ema(ema, model, opts.ema_decay)
        sums += torch.stack([terms[k].detach().float().mean() for k in ("loss", "mse", "vb")])
        window_steps += 1
        bar.update(1)

        if log_now:
            means = distributed.all_reduce_mean(sums / window_steps, info).tolist()
            elapsed = time.perf_counter() - window_start
            if info.is_main:
                record = {"step": done, "loss": means[0], "mse": means[1], "vb": means[2],
                          "grad_norm": float(grad_norm), "lr": opt.param_groups[0]["lr"],
                          "images_per_sec": window_steps * opts.global_batch / elapsed, "time": time.time()}
                with open(run_dir / LOG_NAME, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{means[0]:.4f}")
            sums.zero_()
            window_steps, window_start = 0, time.perf_counter()

        if done % opts.ckpt_every == 0 or done in milestones or done == stop:
            last_path = _save(opts, info, model=model, ema=ema, opt=opt, order=order, step=done)
            if opts.pause_after_ckpt and done != stop:
                time.sleep(opts.pause_after_ckpt)
    bar.close()
    drops.remove()
    return {"step": stop, "kind": kind, "checkpoint": str(last_path)}


def _data_state(order: DataOrder, step: int) -> dict:
    return {**order.position(step), "seed": order.seed, "num_items": order.num_items,
            "global_batch": order.global_batch}


def _save(opts, info, *, model, ema, opt, order, step) -> Path | None:
    """Rank 0 writes {"model","ema","opt","step","args","rng","data"}; all ranks' RNGs are gathered."""
    rng = [None] * info.world_size
    if info.enabled:
        torch.distributed.all_gather_object(rng, capture_rng())
    else:
        rng[0] = capture_rng()
    path = None
    if info.is_main:
        state = {
            "model": model.state_dict(),   # unwrapped (no 'module.' / '_orig_mod.'): official key layout
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "args": json.loads(json.dumps(asdict(opts))),
            "rng": {"ranks": rng, "per_sample": "SeedSequence([seed, step, global_index])"},
            "data": _data_state(order, step),
        }
        path = checkpointing.save_checkpoint(state, run_dir=Path(opts.run_dir), step=step,
                                             keep_last=opts.keep_last, milestones=tuple(opts.milestones))
    distributed.barrier(info)
    return path


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
        raise argparse.ArgumentTypeError(f"expected comma-separated steps like 400000,1000000, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions(model="", run_dir="", total_steps=1)
    p = argparse.ArgumentParser(prog="udit train", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="registry name, e.g. U-DiT-B, DiT-S/2")
    p.add_argument("--run-dir", required=True, help="run folder; re-running the command resumes it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--latents", help="latent cache directory (VAE moments)")
    src.add_argument("--images", help="ImageFolder root (online VAE encode, or --pixel)")
    p.add_argument("--pixel", action="store_true", help="with --images: train in pixel space, no VAE")
    p.add_argument("--vae", default=d.vae, help="VAE hub id or local dir (images mode)")
    p.add_argument("--total-steps", type=int, required=True)
    p.add_argument("--global-batch", type=int, default=d.global_batch)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--keep-last", type=int, default=d.keep_last)
    p.add_argument("--milestones", type=_parse_steps, default=d.milestones, help="e.g. 400000,1000000")
    p.add_argument("--stop-at", type=int, default=None, help="exit after this step; re-run to continue")
    p.add_argument("--resume", default=d.resume, help="'auto' (newest valid checkpoint), 'never', or a path")
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
    p.add_argument("--model-kw", nargs="*", default=[], metavar="KEY=VAL", help="model constructor overrides")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--pause-after-ckpt", type=float, default=0.0, help=argparse.SUPPRESS)  # kill tests
    p.add_argument("--dry-run", action="store_true", help="print the resolved options as JSON and exit")
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
    result = train(opts)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
