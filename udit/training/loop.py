"""`udit train`: the DiT / U-DiT training recipe, resumable step-exactly, single process or DDP.

    udit train --model U-DiT-B --run-dir runs/udit-b --latents cache/in256 \
        --total-steps 1000000 --milestones 400000,1000000 --stop-at 400000
    torchrun --nproc_per_node 8 -m udit.cli train ...   # same command, same result, 8 GPUs

One run serves the 400K and the 1M rows: checkpoints at the milestones are kept forever,
and re-running the command (optionally with a larger --stop-at) continues the run.
Recipe (paper section 4 / official train.py, numbers from udit.paper.recipe): AdamW lr 1e-4, weight
decay 0, constant lr, no warm-up, no grad clipping, global batch 256, EMA 0.9999, class dropout 0.1,
linear-beta 1000-step diffusion with learned sigma (loss = MSE + VB), t uniform. Randomness is drawn
per global sample index (udit.training.determinism), so results do not depend on the number of GPUs.
"""

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from udit import argtypes, distributed, outputs, paths
from udit.cli import add_device, add_dry_run, add_options, options_of, parse_args
from udit.errors import BadValueError, UserError, command_main
from udit.models.spec import add_model_kw
from udit.paper import recipe
from udit.precision import DEFAULT_PRECISION, PRECISIONS, check_precision, set_precision
from udit.stop import POLL_EVERY, StopFlag, StoppedEarly, ignore_stop_signals, mark_done
from udit.training import node, store
from udit.training.data import FLIP_PROB, build_train_data
from udit.training.determinism import DataOrder, LabelDropControl, StepBatchSampler, draw_samples
from udit.training.ema import make_ema, update_ema

# The range of every numeric option: the CLI's argparse types and TrainOptions.validate (the
# DAG and tests build TrainOptions directly) check the same table (udit.argtypes).
RANGES = {
    "total_steps": argtypes.STEPS,
    "global_batch": argtypes.BATCH,
    "grad_accum": argtypes.BATCH,
    "lr": argtypes.LEARNING_RATE,
    "weight_decay": argtypes.NONNEG,
    "ema_decay": argtypes.DECAY,
    "seed": argtypes.SEED,
    "num_classes": argtypes.CLASSES,
    "image_size": argtypes.IMAGE_SIZE,
    "ckpt_every": argtypes.STEPS,
    "keep_last": argtypes.POSITIVE_INT,
    "checkpoint_minutes": argtypes.NONNEG,
    "stop_poll_every": argtypes.Range("int", 1, 10_000),
    "log_every": argtypes.STEPS,
    "num_workers": argtypes.WORKERS,
    "stop_at": argtypes.STEPS,
}

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
    vae: str = recipe().vae  # sd-vae-ft-ema, as DiT / U-DiT; with --latents: the cache's
    global_batch: int = recipe().global_batch  # 256 over all GPUs (paper section 4)
    grad_accum: int = 1  # micro-batches per optimiser step: the same update in less memory
    lr: float = recipe().lr  # 1e-4 constant, no warm-up (DiT recipe)
    weight_decay: float = recipe().weight_decay  # 0 (DiT recipe)
    ema_decay: float = recipe().ema_decay  # 0.9999 (DiT recipe)
    seed: int = recipe().global_seed  # global seed 0 (official train.py)
    num_classes: int = recipe().num_classes  # ImageNet-1k
    image_size: int = recipe().image_size  # pixels; latent side = image_size / VAE factor
    model_kw: dict = field(default_factory=dict)  # model overrides (tiny widths for smoke runs)
    ckpt_every: int = recipe().ckpt_every  # official train.py saves every 50K steps
    keep_last: int = 2  # ordinary checkpoints kept; milestones always kept
    checkpoint_minutes: float = 30.0  # also checkpoint this often (0: off): a node loss costs less
    stop_poll_every: int = POLL_EVERY  # DDP: steps between the ranks' stop agreements (all-reduce)
    milestones: tuple[int, ...] = ()  # steps kept forever, e.g. (400000, 1000000)
    stop_at: int | None = None  # exit after this step (a DAG node per milestone)
    resume: str = "auto"  # 'auto' newest valid ckpt, 'never', or a ckpt path
    precision: str = DEFAULT_PRECISION  # tf32 as the official train.py; bf16 autocast; fp32
    compile: bool = False  # torch.compile the model
    log_every: int = recipe().log_every  # steps between JSONL log lines (DiT: 100)
    num_workers: int = 4  # DataLoader workers per rank
    device: str = "auto"  # udit.cli.add_device: auto (cuda when available), cpu, cuda[:N]
    pause_after_ckpt: float = 0.0  # seconds to sleep after each checkpoint (kill tests)
    # seconds to sleep after each step (stop-signal tests)
    pause_after_step: float = (
        0.0  # the CLI's default: UDIT_PAUSE_AFTER_STEP, which reaches SLURM jobs
    )
    inject_nan_at: int | None = None  # debug: make this step's loss NaN (NaN-stop tests)

    def validate(self) -> None:
        sources = sum(x is not None for x in (self.latents, self.images))
        if sources != 1:
            raise BadValueError(
                "give exactly one data source: --latents DIR or --images DIR (optionally --pixel)"
            )
        if self.pixel and self.images is None:
            raise BadValueError("--pixel trains on images: it needs --images DIR, not --latents")
        # checked here, before the run folder records these options: a typo would otherwise
        # leave an options.json that refuses the corrected command as another run
        if self.latents is not None and not (Path(self.latents) / "manifest.json").is_file():
            raise FileNotFoundError(
                f"--latents {self.latents}: no latent cache there (no manifest.json); make one "
                f"with `udit extract-latents --images DIR --out {self.latents}`"
            )
        if self.images is not None and not Path(self.images).is_dir():
            raise FileNotFoundError(f"--images {self.images}: not a directory")
        for name, allowed in RANGES.items():
            value = getattr(self, name)
            why = None if value is None else allowed.check(value)
            if why:
                raise BadValueError(f"--{name.replace('_', '-')} {why}")
        if self.global_batch % self.grad_accum:
            raise BadValueError(
                f"--global-batch {self.global_batch} is not divisible by --grad-accum "
                f"{self.grad_accum}: every micro-batch must hold the same number of samples"
            )
        if self.stop_at is not None and not 1 <= self.stop_at <= self.total_steps:
            raise BadValueError(
                f"--stop-at {self.stop_at} must lie in [1, --total-steps {self.total_steps}]"
            )
        if any(not 1 <= m <= self.total_steps for m in self.milestones):
            raise BadValueError(
                f"--milestones must be steps in [1, --total-steps {self.total_steps}], "
                f"got {list(self.milestones)}"
            )
        check_precision(self.precision)
        from udit.models import check_model_options  # torch is loaded already: nothing to save

        check_model_options(self.model, self.model_kw)  # before any file of the run is written


#################################################################################
#                                 Training loop                                 #
#################################################################################


def train(opts: TrainOptions) -> dict:
    """Train from the newest valid checkpoint (or from scratch) up to stop_at / total_steps."""
    opts.validate()
    outputs.check(
        inputs={"--latents": opts.latents, "--images": opts.images},
        outputs={"--run-dir": opts.run_dir},
        folders=("--run-dir",),
    )
    opts = with_cache_vae(opts)
    info = distributed.setup(opts.device)
    try:  # a stop signal from here on waits for the first step to finish (no work lost)
        with (
            distributed.rank0_lock(opts.run_dir, info, flag="--run-dir"),
            StopFlag(
                checkpoint_minutes=opts.checkpoint_minutes, poll_every=opts.stop_poll_every
            ) as flag,
        ):
            return _train(opts, info, flag)
    finally:
        distributed.cleanup(info)


def with_cache_vae(opts: TrainOptions) -> TrainOptions:
    """With --latents the VAE is the cache's (manifest vae.name), not --vae's default: the run
    records it and `udit sample` decodes with it. A --vae that names another VAE is refused."""
    from udit.data.latents import cache_vae_name

    cached = None if opts.latents is None else cache_vae_name(opts.latents)
    if cached is None or cached == opts.vae:
        return opts
    if opts.vae != recipe().vae:  # not the default: the user named a VAE on purpose
        raise BadValueError(
            f"--vae {opts.vae} contradicts the latent cache {opts.latents}, encoded with "
            f"{cached} (its manifest.json); drop --vae or use a cache made with that VAE"
        )
    return replace(opts, vae=cached)


class NonFiniteLossError(RuntimeError, UserError):
    """A training step produced a NaN or infinite loss; the run stopped before saving it."""

    exit_code = 1  # not bad input: the run itself failed (a retry resumes from the last ckpt)


class LossWindow:
    """Loss terms summed on the device since the last log line, and the first non-finite step.

    Nothing here reads a value back to the host per step (no GPU wait); `check_finite` and
    `log` do, before every log line and checkpoint."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, device=device)  # loss, mse, vb
        # (step, loss, mse, vb) of the first non-finite step; step -1 while there is none
        self.bad = torch.full((4,), -1.0, device=device)
        self.steps, self.start = 0, time.perf_counter()

    def add(self, terms: dict, *, done: int) -> None:
        parts = torch.stack([terms[k].detach().float().mean() for k in ("loss", "mse", "vb")])
        first = (self.bad[0] < 0) & ~torch.isfinite(parts).all()
        self.bad = torch.where(first, torch.cat([parts.new_full((1,), done), parts]), self.bad)
        self.sums += parts
        self.steps += 1

    def check_finite(self, info: distributed.DistInfo, *, last_path) -> None:
        """Raise on every rank if any rank has seen a non-finite loss."""
        bad = self.bad
        if distributed.all_reduce_mean((bad[:1] >= 0).float(), info).item() == 0:
            return
        keep = f"the newest checkpoint is {last_path}" if last_path else "no checkpoint was written"
        if bad[0] < 0:  # only another rank hit it
            raise NonFiniteLossError(
                f"rank {info.rank}: another rank hit a non-finite loss; {keep}"
            )
        step, loss, mse, vb = bad.tolist()
        raise NonFiniteLossError(
            f"non-finite loss at step {int(step)} (loss={loss}, mse={mse}, vb={vb}); stopped "
            f"before logging or saving anything after it; {keep} (re-running resumes from it)"
        )

    def log(self, info, *, done: int, grad_norm, lr: float, global_batch: int, run_dir: Path):
        """Append one JSONL line (rank 0) with the window's means over all ranks; -> mean loss."""
        means = distributed.all_reduce_mean(self.sums / self.steps, info).tolist()
        elapsed = time.perf_counter() - self.start
        if info.is_main:
            record = {
                "step": done,
                "loss": means[0],
                "mse": means[1],
                "vb": means[2],
                "grad_norm": float(grad_norm),
                "lr": lr,
                "images_per_sec": self.steps * global_batch / elapsed,
                "time": time.time(),
            }
            with open(run_dir / paths.TRAIN_LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.sums.zero_()
        self.steps, self.start = 0, time.perf_counter()
        return means[0]


def train_step(
    *,
    net,
    opt,
    diffusion,
    x,
    y,
    t,
    noise,
    autocast,
    grad_norm: bool = False,
    accum: int = 1,
    drops: LabelDropControl | None = None,
    label_drop: torch.Tensor | None = None,
):
    """One optimiser step on the hybrid loss (MSE + VB); -> (per-sample terms, grad norm or None).
    Shared by the loop and benchmarks/speed.py, so the benchmark times what trains.

    accum K > 1: the batch (N, ...) runs as K micro-batches of N/K; each adds grad(mean loss)/K,
    so the update is the full batch's. `label_drop` (N, K_emb) goes to `drops` slice by slice.
    Under DDP only the last micro-batch all-reduces gradients (no_sync for the others)."""
    opt.zero_grad(set_to_none=True)
    size = len(x) // accum
    parts = []
    for j in range(accum):
        part = slice(j * size, (j + 1) * size)
        if drops is not None:
            drops.masks = label_drop[part]  # (N/K, K_emb) coins of these samples
        last = j == accum - 1
        sync = nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()
        with sync:
            with autocast:
                terms = diffusion.training_losses(
                    net, x[part], t[part], model_kwargs={"y": y[part]}, noise=noise[part]
                )
            (terms["loss"].mean() / accum).backward()
        parts.append(terms)
    terms = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # (N,) per sample
    norm = None
    if grad_norm:  # total grad norm: no clipping in the recipe, logged for diagnosis
        norm = torch.nn.utils.get_total_norm(
            [p.grad for p in net.parameters() if p.grad is not None]
        )
    opt.step()
    return terms, norm


def make_adamw(params, *, lr: float, weight_decay: float, device: torch.device):
    """AdamW with one fused kernel on CUDA; on CPU the multi-tensor (foreach) form, which torch
    would not pick there by itself: the same maths, ~1.5 s vs 3.6-10 s per U-DiT-S step (1043
    tensors) with the per-tensor loop on the 2-core CPU (benchmarks/README.md)."""
    cuda = device.type == "cuda"
    return torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, fused=cuda or None, foreach=None if cuda else True
    )


def _start_run(opts: TrainOptions, info: distributed.DistInfo, run_dir: Path) -> None:
    """Seeds, stale temp files and the same-run check, before anything is built. Nothing is
    written until the data and the model have been checked (`_record_run`): a refused command
    leaves no run folder behind."""
    rank_seed = opts.seed * info.world_size + info.rank  # DiT: per-rank seed
    torch.manual_seed(rank_seed), np.random.seed(rank_seed), random.seed(rank_seed)
    if info.is_main and run_dir.is_dir():
        store.remove_stale_temp(run_dir)  # no other process writes here before the barrier
        # with --latents the cache (same path, same manifest) fixes the VAE; runs made before
        # the cache's VAE was recorded hold the --vae default here and must still resume
        identity = tuple(f for f in IDENTITY_FIELDS if not (opts.latents and f == "vae"))
        store.check_same_run(run_dir, options=asdict(opts), identity_fields=identity)
    distributed.barrier(info)


def _record_run(opts: TrainOptions, info: distributed.DistInfo, run_dir: Path) -> None:
    """The run folder and its options.json, once data, model and resume point are known good."""
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        store.write_json_atomic(run_dir / store.OPTIONS_NAME, asdict(opts))
    distributed.barrier(info)


def _build_model(opts: TrainOptions, info: distributed.DistInfo, shape: tuple[int, ...]):
    """-> (model, net (DDP-wrapped when distributed), EMA copy, label-drop hooks, AdamW)."""
    from udit.models import check_fits_memory, create_model

    device = info.device
    sizes = {"input_size": shape[-1], "in_channels": shape[0], "num_classes": opts.num_classes}
    # fp32 weights, gradients, EMA and AdamW's two moments: 20 bytes a parameter, activations not
    # counted, checked on the meta device before any of it is allocated
    check_fits_memory(
        opts.model, device=device, bytes_per_param=20, what="training", **sizes, **opts.model_kw
    )
    model = create_model(opts.model, **{**sizes, **opts.model_kw}).to(device)
    # DDP broadcasts rank 0's initial weights; the EMA copies them after (DiT: update_ema(decay=0)).
    net = model
    if info.enabled:
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    ema = make_ema(model)  # exact copy before any step
    drops = LabelDropControl(model)
    opt = make_adamw(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, device=device)
    return model, net, ema, drops, opt


@dataclass
class Run:
    """What the training loop works on, built once per job."""

    opts: TrainOptions
    info: distributed.DistInfo
    run_dir: Path
    order: DataOrder
    shape: tuple[int, ...]  # (C, H, W) the model sees
    kind: str  # 'latents', 'vae' or 'pixels' (udit.training.data)
    prepare: Callable  # prepare(x, draws) -> model input
    model: torch.nn.Module
    net: torch.nn.Module  # model, DDP-wrapped and/or compiled
    ema: torch.nn.Module
    drops: LabelDropControl
    opt: torch.optim.Optimizer
    diffusion: object


def _train(opts: TrainOptions, info: distributed.DistInfo, flag: StopFlag) -> dict:
    """The job in its phases: check the run folder, build the data and the model, resume, then
    train up to stop_at / total_steps."""
    from udit.diffusion import create_diffusion

    run_dir = Path(opts.run_dir)
    _start_run(opts, info, run_dir)
    dataset, kind, shape, prepare, order = _build_data(opts, info)
    model, net, ema, drops, opt = _build_model(opts, info, shape)
    start, ckpt = store.resume_training_state(
        run_dir=run_dir,
        resume=opts.resume,
        info=info,
        model=model,
        ema=ema,
        opt=opt,
        order=order,
        expected=asdict(opts),
    )
    stop = opts.stop_at or opts.total_steps
    if start >= stop:
        _record_run(opts, info, run_dir)
        if info.is_main:
            print(f"nothing to do: at step {start}, stop at {stop}", file=sys.stderr)
        return {"step": start, "kind": kind, "checkpoint": str(ckpt) if ckpt else None}
    if opts.compile:
        net = torch.compile(net)
    loader = _step_loader(dataset, order, opts, info, start=start, stop=stop)
    diffusion = create_diffusion(timestep_respacing="")
    run = Run(
        opts, info, run_dir, order, shape, kind, prepare, model, net, ema, drops, opt, diffusion
    )
    _check_grad_accum(opts, info, order)
    _record_run(opts, info, run_dir)
    flag.reset_clock()  # minutes count from the first step, not from start-up
    last_path = _run_steps(run, loader, start=start, stop=stop, last_path=ckpt, flag=flag)
    drops.remove()
    return {"step": stop, "kind": kind, "checkpoint": str(last_path)}


def _build_data(opts: TrainOptions, info: distributed.DistInfo):
    """-> (dataset, kind, shape, prepare) of the data source (udit.training.data) and this
    rank's DataOrder over it."""
    dataset, kind, shape, prepare = build_train_data(
        latents=opts.latents,
        images=opts.images,
        pixel=opts.pixel,
        vae=opts.vae,
        image_size=opts.image_size,
        num_classes=opts.num_classes,
        device=info.device,
    )
    order = DataOrder(
        num_items=len(dataset),
        global_batch=opts.global_batch,
        world_size=info.world_size,
        rank=info.rank,
        seed=opts.seed,
    )
    return dataset, kind, shape, prepare, order


def _step_loader(dataset, order: DataOrder, opts: TrainOptions, info, *, start: int, stop: int):
    """The batches of steps start..stop-1, in the run's order (StepBatchSampler)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(order, start, stop),
        num_workers=opts.num_workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=opts.num_workers > 0,
        worker_init_fn=ignore_stop_signals,  # a job-wide signal must not kill the workers
    )


def _check_grad_accum(opts: TrainOptions, info: distributed.DistInfo, order: DataOrder) -> None:
    """Every micro-batch of a rank must hold the same number of samples."""
    if order.local_batch % opts.grad_accum:
        raise BadValueError(
            f"--grad-accum {opts.grad_accum} does not divide the per-rank batch "
            f"{order.local_batch} (global batch {opts.global_batch} over {info.world_size} ranks)"
        )


def _run_steps(run: Run, loader, *, start: int, stop: int, last_path, flag: StopFlag):
    """Steps start..stop-1: train step, EMA, log lines, checkpoints; -> newest checkpoint path.
    A stop signal (`flag`) ends the loop after the step in flight, checkpointed: StoppedEarly."""
    opts, info, device = run.opts, run.info, run.info.device
    autocast = set_precision(opts.precision, device)  # TF32 switches + bf16 autocast
    milestones = set(opts.milestones)
    resumed = last_path  # the checkpoint this job started from: rotation never deletes it
    window = LossWindow(device)
    bar = tqdm(total=stop, initial=start, file=sys.stderr, disable=not info.is_main)
    run.model.train()
    for step, (x, y) in zip(range(start, stop), loader):
        done = step + 1
        log_now = done % opts.log_every == 0 or done == stop
        terms, grad_norm = _step(run, step, x, y, autocast=autocast, grad_norm=log_now)
        update_ema(run.ema, run.model, opts.ema_decay)  # multi-tensor: one kernel per op
        window.add(terms, done=done)
        bar.update(1)

        if log_now:
            window.check_finite(info, last_path=last_path)
            loss = window.log(
                info,
                done=done,
                grad_norm=grad_norm,
                global_batch=opts.global_batch,
                lr=run.opt.param_groups[0]["lr"],
                run_dir=run.run_dir,
            )
            bar.set_postfix(loss=f"{loss:.4f}")
        stop_now, clock_due = flag.poll(info, done)  # the same on every rank
        scheduled = done % opts.ckpt_every == 0 or done in milestones or done == stop
        if scheduled or stop_now or clock_due:
            window.check_finite(info, last_path=last_path)  # never save weights a NaN step touched
            last_path = _checkpoint(run, done=done, resumed=resumed)
            flag.reset_clock()
            if stop_now and done != stop:
                raise StoppedEarly(
                    f"{flag.name}: stopped after step {done} and saved "
                    f"{run.run_dir / paths.CKPT_DIR / paths.checkpoint_name(done)} (rank 0); "
                    f"run the same command again to resume from it"
                )
            if opts.pause_after_ckpt and done != stop:
                time.sleep(opts.pause_after_ckpt)
        if opts.pause_after_step:
            time.sleep(opts.pause_after_step)
    bar.close()
    return last_path


def _step(run: Run, step: int, x, y, *, autocast, grad_norm: bool):
    """Step `step` (0-based) on the batch (x, y): its per-sample draws, the model input, one
    optimiser step; -> (per-sample loss terms, grad norm or None)."""
    opts, device = run.opts, run.info.device
    draws = draw_samples(
        seed=opts.seed,
        step=step,
        offset=run.order.global_offset(),
        count=len(y),
        shape=run.shape,
        num_timesteps=run.diffusion.num_timesteps,
        num_embedders=len(run.drops),
        drop_prob=run.drops.drop_prob,
        latent=run.kind in ("latents", "vae"),
        flip_prob=FLIP_PROB,
    ).to(device)  # one non-blocking copy: no host-GPU sync per step
    x = run.prepare(x, draws)  # (N, C, H, W) model input
    if opts.inject_nan_at == step + 1:  # debug: poison one step's batch (NaN-stop test)
        x = x * float("nan")
    return train_step(
        net=run.net,
        opt=run.opt,
        diffusion=run.diffusion,
        x=x,
        y=y.to(device, non_blocking=True),  # pinned by the DataLoader on CUDA
        t=draws.t.to(device),
        noise=draws.noise.to(device),
        autocast=autocast,
        grad_norm=grad_norm,
        accum=opts.grad_accum,
        drops=run.drops,
        label_drop=draws.label_drop.to(device),  # (N, K) per-embedder drop coins
    )


def _checkpoint(run: Run, *, done: int, resumed) -> Path | None:
    """The state after step `done` (model, EMA, optimiser, data position, RNGs), written by rank 0;
    every rank calls it (store.save_training_state); -> its path."""
    return store.save_training_state(
        run_dir=run.run_dir,
        info=run.info,
        model=run.model,
        ema=run.ema,
        opt=run.opt,
        order=run.order,
        step=done,
        args=asdict(run.opts),
        keep_last=run.opts.keep_last,
        milestones=tuple(run.opts.milestones),
        resumed=resumed,
    )


#################################################################################
#                                      CLI                                      #
#################################################################################


def _parse_steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted(int(float(s)) for s in text.split(",") if s.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated steps like 400000,1000000, got {text!r}"
        )


def _env_seconds(name: str = "UDIT_PAUSE_AFTER_STEP") -> float:
    """A test hook's pause from the environment (it reaches SLURM jobs), checked like a flag."""
    text = os.environ.get(name, "0")
    try:
        return argtypes.NONNEG(text)
    except argparse.ArgumentTypeError as err:
        raise BadValueError(f"environment variable {name}={text!r}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions(model="", run_dir="", total_steps=1)  # the defaults
    p = argparse.ArgumentParser(prog="udit train", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="registry name, e.g. U-DiT-B, DiT-S/2")
    p.add_argument("--run-dir", required=True, help="run folder; re-running the command resumes it")
    _add_data_flags(p, d)
    _add_schedule_flags(p, d)
    _add_recipe_flags(p, d)
    p.add_argument("--log-every", type=argtypes.STEPS, default=d.log_every)
    p.add_argument("--num-workers", type=argtypes.WORKERS, default=d.num_workers)
    add_device(p)
    _add_test_hooks(p)
    add_options(p)  # what a DAG job gets: the fields below as one JSON object
    add_dry_run(p)  # prints the validated TrainOptions (a valid --options document)
    return p


def _add_data_flags(p: argparse.ArgumentParser, d: TrainOptions) -> None:
    """Where the training data comes from: a latent cache, or images (through the VAE or not)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--latents", help="latent cache directory (VAE moments)")
    src.add_argument("--images", help="ImageFolder root (online VAE encode, or --pixel)")
    p.add_argument("--pixel", action="store_true", help="pixel space, no VAE")
    p.add_argument("--vae", default=d.vae, help="VAE hub id or local dir (images mode)")


def _add_schedule_flags(p: argparse.ArgumentParser, d: TrainOptions) -> None:
    """How long the run is, in what batches, and when it checkpoints, stops and resumes."""
    p.add_argument("--total-steps", type=argtypes.STEPS, required=True)
    p.add_argument("--global-batch", type=argtypes.BATCH, default=d.global_batch)
    p.add_argument(
        "--grad-accum",
        type=argtypes.BATCH,
        default=d.grad_accum,
        help="micro-batches per step (same maths)",
    )
    p.add_argument("--ckpt-every", type=argtypes.STEPS, default=d.ckpt_every)
    p.add_argument("--keep-last", type=argtypes.POSITIVE_INT, default=d.keep_last)
    p.add_argument(
        "--checkpoint-minutes",
        type=argtypes.NONNEG,
        default=d.checkpoint_minutes,
        help="also checkpoint every this many minutes (0: off)",
    )
    p.add_argument(
        "--stop-poll-every",
        type=RANGES["stop_poll_every"],
        default=d.stop_poll_every,
        help="under DDP, agree on a stop signal every this many steps (one all-reduce each)",
    )
    p.add_argument(
        "--milestones", type=_parse_steps, default=d.milestones, help="e.g. 400000,1000000"
    )
    p.add_argument("--stop-at", type=argtypes.STEPS, default=None, help="exit after this step")
    p.add_argument("--resume", default=d.resume, help="auto | never | PATH")


def _add_recipe_flags(p: argparse.ArgumentParser, d: TrainOptions) -> None:
    """The recipe: seed, optimiser, EMA, precision, classes, image size, model overrides."""
    p.add_argument("--seed", type=argtypes.SEED, default=d.seed)
    p.add_argument("--lr", type=argtypes.LEARNING_RATE, default=d.lr)
    p.add_argument("--weight-decay", type=argtypes.NONNEG, default=d.weight_decay)
    p.add_argument("--ema-decay", type=argtypes.DECAY, default=d.ema_decay)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="tf32 (official train.py), bf16 autocast (faster, a deviation) or strict fp32",
    )
    p.add_argument("--compile", action="store_true")
    p.add_argument("--num-classes", type=argtypes.CLASSES, default=d.num_classes)
    p.add_argument("--image-size", type=argtypes.IMAGE_SIZE, default=d.image_size)
    add_model_kw(p, help="model overrides")


def _add_test_hooks(p: argparse.ArgumentParser) -> None:
    """Hidden flags the tests drive the loop with."""
    # Seconds to sleep after each checkpoint: lets a test SIGKILL the job at a known step.
    p.add_argument("--pause-after-ckpt", type=argtypes.NONNEG, default=0.0, help=argparse.SUPPRESS)
    # Seconds to sleep after each step: lets a test signal the job between known steps.
    p.add_argument(
        "--pause-after-step", type=argtypes.NONNEG, default=_env_seconds(), help=argparse.SUPPRESS
    )
    # Poison the batch of this step with NaN: tests that a non-finite loss stops the run.
    p.add_argument("--inject-nan-at", type=argtypes.STEPS, default=None, help=argparse.SUPPRESS)


@command_main("udit train")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv, TrainOptions)
    opts = options_of(args, TrainOptions)
    opts.validate()
    if args.dry_run:
        print(json.dumps(asdict(opts), indent=2))
        return 0
    result = train(opts)
    if opts.stop_at is not None and int(os.environ.get("RANK", "0")) == 0:
        # the DAG node for --stop-at is complete: a later attempt is a fresh start
        node.node_marker(Path(opts.run_dir), opts.stop_at).unlink(missing_ok=True)
    mark_done()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
