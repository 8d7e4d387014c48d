"""Speed of training, sampling, VAE decode, Inception features and EMA: one table, one JSON.

    python benchmarks/speed.py --device cuda --json speed.json   # one H100/H200, <= 8 minutes
    python benchmarks/speed.py --device cpu --quick --json q.json  # same code paths, tiny, seconds
    python benchmarks/speed.py --device cpu --models U-DiT-S --batch 8 --pairs 10   # CPU target

Training rows, per model, at per-GPU batch 32 (the paper's 256 over 8 GPUs), images/s of:
  reference            : a step as the official train.py runs it: fp32 with TF32 (CUDA), attention
                         as explicit softmax(q k^T) v, torch's default AdamW (per-tensor loop), EMA
                         as a per-parameter loop, contiguous NCHW, eager.
  harness-tf32         : the step `udit train` runs (udit.training.loop.train_step, make_adamw:
                         fused on CUDA / multi-tensor on CPU, udit.training.ema multi-tensor EMA,
                         F.scaled_dot_product_attention), --precision tf32.
  harness-bf16-compile : the same with --precision bf16 and torch.compile (CUDA only by default).
  harness-fp32         : --precision fp32 (strict), on request (--paths).
Paths are timed paired and interleaved: each round runs one step of every path, the order
alternating between rounds, so load drifts hit all paths alike; ratios are medians of per-round
ratios. The 1-minute load average before and after is printed and stored (os.getloadavg).
MFU = 6 x fvcore forward MACs x images/s / dense bf16 peak (backward ~ 2 x forward, 2 FLOPs per
MAC); fvcore counts the eval graph (re-parameterised FFN folded): a slight undercount.
Sampling: DDPM-250 with guidance (cfg 1.5; one batched forward on [x | x]); a few steps timed,
extrapolated to 250; GPU-hours for 50K samples add the VAE decode. The JSON follows the schema
`udit plan --speed-json` and the report read (schema 1). --quick: tiny widths, latent 8, batch 4.
"""

import argparse
import contextlib
import copy
import datetime
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from udit import argtypes
from udit.cli import add_device, add_dry_run, dry_run
from udit.diffusion import ClassifierFreeGuidance, create_diffusion
from udit.models import MODELS, create_model
from udit.paper import recipe
from udit.precision import set_precision
from udit.training.determinism import LabelDropControl
from udit.training.ema import make_ema, update_ema
from udit.training.loop import make_adamw, train_step

SCHEMA = 1
TRAIN_MODELS = ("U-DiT-B", "U-DiT-L", "DiT-XL/2", "U-DiT-B vanilla", "U-DiT-L vanilla")
PATHS = ("reference", "harness-tf32", "harness-bf16-compile", "harness-fp32")
LATENT_CHANNELS, NUM_CLASSES = 4, 1000  # sd-vae-ft-ema latents, ImageNet-1k
LATENT_SIZE = 32  # ImageNet 256 px through the f=8 VAE
LOSS_TOL = 1e-4  # reference vs harness first-step loss (same maths; fp32/TF32 only)
SAMPLE_STEPS, SAMPLE_CFG, SAMPLES_50K = recipe().sampling_steps, 1.5, 50_000
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets (SXM parts:
# H100/H200 989.4, A100 312); matched as substrings of torch.cuda.get_device_name. Unknown: null.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}
# --quick: the smoke config's widths (config/smoke.yaml scale.model_kw), latent 8, batch 4
QUICK_KW = {
    "DiT": {"hidden_size": 32, "depth": 2, "num_heads": 2},
    "U-DiT": {"hidden_size": 16, "num_heads": 2},
}
QUICK = {"input_size": 8, "batch": 4, "sample_batch": 4, "image_size": 32, "images": 8}


#################################################################################
#                           Reference (official-like) step                      #
#################################################################################


def _explicit_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    if attn_mask is not None or dropout_p or is_causal:
        raise NotImplementedError("the reference attention covers the unmasked case only")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # (N, H, T, d)


@contextlib.contextmanager
def explicit_attention():
    """F.scaled_dot_product_attention -> softmax(q k^T) v spelled out, inside the block only (a
    catch-all: the reference model also has every attention `fused` switch turned off)."""
    saved = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _explicit_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = saved


def use_explicit_attention(model: torch.nn.Module) -> int:
    """Turn off every attention `fused` switch (DiT Attention, U-DiT DownsampledAttention)."""
    switched = 0
    for m in model.modules():
        if isinstance(getattr(m, "fused", None), bool):
            m.fused, switched = False, switched + 1
    return switched


@torch.no_grad()
def reference_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """Official train.py update_ema: one mul_ and one add_ per parameter."""
    ema_params = dict(ema.named_parameters())
    for name, p in model.named_parameters():
        ema_params[name].mul_(decay).add_(p.data, alpha=1 - decay)


#################################################################################
#                                  Train rows                                   #
#################################################################################


def build_model(name: str, args) -> torch.nn.Module:
    """Registry model on ImageNet latents at --input-size (seeded); tiny widths with --quick."""
    kw = QUICK_KW["U-DiT" if name.startswith("U-DiT") else "DiT"] if args.quick else {}
    torch.manual_seed(args.seed)
    return create_model(
        name,
        input_size=args.input_size,
        in_channels=LATENT_CHANNELS,
        num_classes=NUM_CLASSES,
        **kw,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(*, batch: int, size: int, device: torch.device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, LATENT_CHANNELS, size, size)
    return {
        "x": torch.randn(shape, generator=gen).to(device),  # (N, 4, h, w) latents
        "y": torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device),
        "t": torch.randint(0, 1000, (batch,), generator=gen).to(device),  # uniform t, T = 1000
        "noise": torch.randn(shape, generator=gen).to(device),
        "drop": torch.rand(batch, generator=gen) < recipe().class_dropout,
    }


def _tensor_bytes(*groups) -> int:
    seen, total = set(), 0
    for group in groups:
        for t in group:
            if torch.is_tensor(t) and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


class PathState:
    """One path's own model copy, AdamW, EMA, label-drop hooks and step function."""

    def __init__(self, path: str, model: torch.nn.Module, batch: dict, device: torch.device):
        self.path, self.device, self.batch = path, device, batch
        self.model = copy.deepcopy(model).train()
        self.reference = path == "reference"
        if self.reference and use_explicit_attention(self.model) == 0:
            raise RuntimeError(f"{type(model).__name__}: no attention `fused` switch to turn off")
        self.precision = {"harness-bf16-compile": "bf16", "harness-fp32": "fp32"}.get(path, "tf32")
        self.drops = LabelDropControl(self.model)  # the same label-drop coins on every path
        self.drops.masks = batch["drop"][:, None].expand(-1, len(self.drops)).to(device)
        lr, wd = recipe().lr, recipe().weight_decay
        if self.reference:  # torch's default on CPU and the official code's: per-tensor loop
            self.opt = torch.optim.AdamW(
                self.model.parameters(), lr=lr, weight_decay=wd, foreach=False
            )
        else:
            self.opt = make_adamw(self.model.parameters(), lr=lr, weight_decay=wd, device=device)
        self.ema = make_ema(self.model)
        self.net = torch.compile(self.model) if path.endswith("compile") else self.model
        self.diffusion = create_diffusion(timestep_respacing="")
        self.times, self.loss, self.peak = [], None, 0

    def persistent_bytes(self) -> int:
        """Weights, grads, EMA and AdamW state: what this path keeps between steps."""
        params = list(self.model.parameters())
        state = [t for s in self.opt.state.values() for t in s.values()]
        return _tensor_bytes(params, [p.grad for p in params], self.ema.parameters(), state)

    def step(self) -> None:
        b, device = self.batch, self.device
        autocast = set_precision(self.precision, device)  # TF32 switches are global: per step
        attention = explicit_attention() if self.reference else contextlib.nullcontext()
        _sync(device)
        if device.type == "cuda":
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with attention:
            terms, _ = train_step(
                net=self.net,
                opt=self.opt,
                diffusion=self.diffusion,
                x=b["x"],
                y=b["y"],
                t=b["t"],
                noise=b["noise"],
                autocast=autocast,
            )
        if self.reference:
            reference_ema(self.ema, self.model, recipe().ema_decay)
        else:
            update_ema(self.ema, self.model, recipe().ema_decay)
        _sync(device)
        self.times.append(time.perf_counter() - start)
        if device.type == "cuda":  # this step's transient peak on top of this path's own state
            transient = torch.cuda.max_memory_allocated(device) - base
            self.peak = max(self.peak, transient + self.persistent_bytes())
        if self.loss is None:
            self.loss = terms["loss"].mean().item()


def time_train(name: str, *, paths, args, device, peak_tflops) -> list[dict]:
    """Paired, interleaved rounds over `paths` for one model; -> one JSON row per path."""
    size = args.input_size
    model = build_model(name, args)
    macs = forward_macs(model, size)
    model = model.to(device)
    batch = make_batch(batch=args.batch, size=size, device=device, seed=args.seed)
    states = [PathState(p, model, batch, device) for p in paths]
    del model
    for r in range(args.warmup + args.pairs):
        for s in states if r % 2 == 0 else states[::-1]:  # alternate the order every round
            s.step()
    rows, ref = [], states[0] if states[0].reference else None
    for s in states:
        s.drops.remove()
        times = s.times[args.warmup :]
        ips = args.batch / statistics.median(times)
        row = {
            "model": name,
            "path": s.path,
            "precision": s.precision,
            "batch_per_gpu": args.batch,
            "input_size": size,
            "images_per_s": ips,
            "steps_per_s_8x256": ips * 8 / 256,
            "gmacs_per_image": macs / 1e9,
            "mfu": 6 * macs * ips / (peak_tflops * 1e12) if peak_tflops else None,
            "peak_mem_gib": s.peak / 2**30 if device.type == "cuda" else None,
            "first_loss": s.loss,
            "step_s": times,
        }
        if ref is not None and s is not ref:  # paired: per-round ratio, then the median
            pairs = zip(ref.times[args.warmup :], times)
            row["ratio_vs_reference"] = statistics.median(a / b for a, b in pairs)
            row["loss_diff_vs_reference"] = abs(s.loss - ref.loss)
        rows.append(row)
    return rows


def forward_macs(model: torch.nn.Module, size: int) -> float:
    from udit.flops import count_flops  # fvcore: only this benchmark and `udit flops` need it

    was_training = model.training
    macs, _ = count_flops(copy.deepcopy(model).eval(), input_size=size)
    model.train(was_training)
    return float(macs)


#################################################################################
#                     Sampling, VAE decode, Inception, EMA                      #
#################################################################################


def time_sampling(name: str, *, args, device, precision: str) -> dict:
    """DDPM-250 with guidance: `--sample-steps` timed steps after one warm-up, extrapolated."""
    from udit.sampling.sampler import AutocastForward

    size, n = args.input_size, args.sample_batch
    model = build_model(name, args)
    net = model.to(device).eval().requires_grad_(False)
    autocast = set_precision(precision, device)
    if precision == "bf16":
        net = AutocastForward(net, autocast)
    guided = ClassifierFreeGuidance(net, cfg_scale=SAMPLE_CFG, null_class=NUM_CLASSES)
    diffusion = create_diffusion(str(SAMPLE_STEPS))
    x = torch.randn(n, LATENT_CHANNELS, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (n,), device=device)
    times = []
    with torch.no_grad():
        for i in range(1 + args.sample_steps):
            t = torch.full((n,), SAMPLE_STEPS - 1 - i, device=device, dtype=torch.long)
            _sync(device)
            start = time.perf_counter()
            x = diffusion.p_sample(guided, x, t, model_kwargs={"y": y})["sample"]
            _sync(device)
            times.append(time.perf_counter() - start)
    ips = n / (statistics.median(times[1:]) * SAMPLE_STEPS)
    return {
        "model": name,
        "precision": precision,
        "batch": n,
        "steps": SAMPLE_STEPS,
        "cfg": SAMPLE_CFG,
        "input_size": size,
        "images_per_s": ips,
    }


def build_vae(args, device):
    """The real sd-vae-ft-ema when it loads (local dir or hub cache), else (and in --quick) the
    tiny random VAE the smoke DAG makes, built in-process; -> (vae, what it is, latent side)."""
    from diffusers import AutoencoderKL

    from udit.data.vae import VaeNotAvailableError, load_vae, tiny_vae_config

    if not args.quick:
        try:
            return load_vae(args.vae, device=device), args.vae, LATENT_SIZE
        except VaeNotAvailableError as err:
            print(f"note: {str(err).splitlines()[0]}; timing the tiny VAE", file=sys.stderr)
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**tiny_vae_config()).to(device).eval().requires_grad_(False)
    return vae, "tiny random VAE (smoke DAG's)", QUICK["image_size"] // 4


def time_vae_decode(args, device) -> dict:
    from udit.data.vae import LATENT_SCALE

    vae, what, side = build_vae(args, device)
    z = torch.randn(args.vae_batch, LATENT_CHANNELS, side, side, device=device)
    times = []
    with torch.no_grad():
        for _ in range(1 + args.repeats):
            _sync(device)
            start = time.perf_counter()
            vae.decode(z / LATENT_SCALE)
            _sync(device)
            times.append(time.perf_counter() - start)
    return {"images_per_s": args.vae_batch / statistics.median(times[1:]), "vae": what}


def time_inception(args, device) -> dict:
    """Features (pool_3, logits, spatial) of 299 px images through the project's extractor: the
    official weights when --inception-weights names them, else a random-init stand-in."""
    from udit.metrics import inception

    if args.inception_weights and not args.quick:
        net, what = (
            inception.load_extractor(weights=args.inception_weights, device=device),
            "official",
        )
    else:
        from udit.metrics.standin import _UninitialisedInceptionV3

        net = _UninitialisedInceptionV3().to(device, memory_format=torch.channels_last).eval()
        what = "random-init stand-in"
    n = args.inception_batch
    images = torch.randint(0, 256, (n, 3, 299, 299), dtype=torch.uint8, device=device)
    times = []
    with torch.no_grad():
        for _ in range(1 + args.repeats):
            _sync(device)
            start = time.perf_counter()
            net(images)
            _sync(device)
            times.append(time.perf_counter() - start)
    return {"images_per_s": n / statistics.median(times[1:]), "weights": what}


def time_ema(name: str, *, args, device) -> dict:
    """ms per EMA update of `name`: the harness's multi-tensor form and the per-parameter loop."""
    model = build_model(name, args).to(device)
    ema = make_ema(model)
    times = {"harness": [], "reference": []}
    for _ in range(1 + args.repeats):
        for key, fn in (("harness", update_ema), ("reference", reference_ema)):
            _sync(device)
            start = time.perf_counter()
            fn(ema, model, recipe().ema_decay)
            _sync(device)
            times[key].append(time.perf_counter() - start)
    med = {k: 1e3 * statistics.median(v[1:]) for k, v in times.items()}
    return {
        "model": name,
        "ms_per_update": med["harness"],
        "reference_ms_per_update": med["reference"],
    }


#################################################################################
#                                   Report                                      #
#################################################################################


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def peak_for(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def print_table(result: dict) -> None:
    print(
        f"device={result['device_name']} quick={result['quick']} torch={result['torch']} "
        f"threads={result['threads']} load_avg_1m before={result['load_avg_1m'][0]:.2f} "
        f"after={result['load_avg_1m'][1]:.2f}"
    )
    print(
        f"{'model':16} {'path':21} {'img/s':>9} {'x ref':>6} {'steps/s 8x256':>13} "
        f"{'GMAC/img':>9} {'MFU':>6} {'peak GiB':>8} {'|dloss|':>8}"
    )

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in result["train"]:
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        print(
            f"{r['model']:16} {r['path']:21} {r['images_per_s']:9.2f} "
            f"{fmt(r.get('ratio_vs_reference'), '5.2f'):>6} {r['steps_per_s_8x256']:13.3f} "
            f"{r['gmacs_per_image']:9.3f} {fmt(mfu, '5.1f'):>6} "
            f"{fmt(r['peak_mem_gib'], '8.2f'):>8} "
            f"{fmt(r.get('loss_diff_vs_reference'), '8.1e'):>8}"
        )
    for s in result["sample"]:
        print(
            f"sample {s['model']} {s['precision']} batch {s['batch']} DDPM-{s['steps']} cfg "
            f"{s['cfg']}: {s['images_per_s']:.3f} img/s, 50K samples = {s['gpu_hours_50k']:.2f} "
            f"GPU-h (incl. VAE decode)"
        )
    if "vae_decode" not in result:  # --only-train
        return
    v, i, e = result["vae_decode"], result["inception"], result["ema"]
    print(f"VAE decode ({v['vae']}): {v['images_per_s']:.1f} img/s")
    print(f"Inception features ({i['weights']}, 299 px): {i['images_per_s']:.1f} img/s")
    print(
        f"EMA update {e['model']}: {e['ms_per_update']:.2f} ms multi-tensor, "
        f"{e['reference_ms_per_update']:.2f} ms per-parameter loop"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device(p)
    p.add_argument("--quick", action="store_true", help="tiny sizes: the code paths in seconds")
    p.add_argument("--json", help="write the figures here (schema 1)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=None, help="train rows")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=None)
    p.add_argument("--batch", type=argtypes.BATCH, default=None, help="per-GPU train batch (32)")
    p.add_argument("--input-size", type=argtypes.IMAGE_SIZE, default=None, help="latent side (32)")
    p.add_argument(
        "--pairs", type=argtypes.POSITIVE_INT, default=None, help="timed rounds per model"
    )
    p.add_argument(
        "--warmup",
        type=argtypes.NONNEG_INT,
        default=None,
        help="untimed rounds (compile happens here)",
    )
    p.add_argument("--sample-model", default="U-DiT-L", choices=list(MODELS))
    p.add_argument("--sample-batch", type=argtypes.BATCH, default=None, help="256 on GPU")
    p.add_argument(
        "--sample-steps", type=argtypes.POSITIVE_INT, default=3, help="timed DDPM steps (of 250)"
    )
    p.add_argument("--vae", default=recipe().vae, help="VAE hub id or local dir")
    p.add_argument("--vae-batch", type=argtypes.BATCH, default=None)
    p.add_argument("--inception-weights", help="torch-fidelity Inception weights file")
    p.add_argument("--inception-batch", type=argtypes.BATCH, default=None)
    p.add_argument(
        "--repeats",
        type=argtypes.POSITIVE_INT,
        default=3,
        help="timed calls of VAE, Inception, EMA",
    )
    p.add_argument("--only-train", action="store_true", help="skip sampling, VAE, Inception, EMA")
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops of each path")
    p.add_argument(
        "--threads",
        type=argtypes.Range("int", 1, 1024),
        default=None,
        help="torch intra-op threads",
    )
    p.add_argument("--seed", type=argtypes.SEED, default=0)
    add_dry_run(p)
    return p


def resolve(args) -> argparse.Namespace:
    """Fill the size defaults: the paper's on a GPU, QUICK with --quick."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    full = {"batch": 32, "input_size": LATENT_SIZE, "sample_batch": 256 if cuda else 8}
    base = QUICK if args.quick else full
    for key in ("batch", "input_size", "sample_batch"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    args.models = args.models or list(TRAIN_MODELS)
    args.paths = args.paths or (["reference", "harness-tf32"] + ["harness-bf16-compile"] * cuda)
    args.pairs = args.pairs or (1 if args.quick else 5)
    args.warmup = args.warmup or (1 if args.quick else 2)
    args.vae_batch = args.vae_batch or (QUICK["images"] if args.quick else 32)
    args.inception_batch = args.inception_batch or (1 if args.quick else 200)
    if args.quick:
        args.repeats, args.sample_steps = 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args = resolve(args)
    if dry_run(args):
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("speed: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = device_name(device)
    peak = peak_for(name) if device.type == "cuda" else None
    load_before = os.getloadavg()[0]
    result = _result_header(args, device, name=name, peak=peak)
    clock = time.perf_counter()
    for model in args.models:
        rows = time_train(model, paths=args.paths, args=args, device=device, peak_tflops=peak)
        print(f"{model}: {time.perf_counter() - clock:.1f} s so far", file=sys.stderr)
        result["train"] += rows
        if args.profile:
            profile_paths(model, args=args, device=device)
    if not args.only_train:
        _time_the_rest(result, args, device)
    print(f"all figures: {time.perf_counter() - clock:.1f} s", file=sys.stderr)
    result["load_avg_1m"] = [load_before, os.getloadavg()[0]]
    print_table(result)
    if args.json:
        from udit.io import atomic_write_json

        atomic_write_json(args.json, result)
    return _check_first_step_losses(result)


def _result_header(args, device: torch.device, *, name: str, peak: float | None) -> dict:
    """The JSON's description of the machine and the run, with empty train and sample rows."""
    return {
        "schema": SCHEMA,
        "quick": args.quick,
        "device": device.type,
        "device_name": name,
        "gpus": 1 if device.type == "cuda" else 0,
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "threads": torch.get_num_threads(),
        "peak_bf16_tflops": peak,
        "train": [],
        "sample": [],
    }


def _time_the_rest(result: dict, args, device: torch.device) -> None:
    """VAE decode, sampling (tf32, and bf16 on CUDA), Inception and EMA, into `result`."""
    result["vae_decode"] = time_vae_decode(args, device)
    precisions = ["tf32"] + ["bf16"] * (device.type == "cuda")
    for precision in precisions:
        row = time_sampling(args.sample_model, args=args, device=device, precision=precision)
        per_image_s = 1 / row["images_per_s"] + 1 / result["vae_decode"]["images_per_s"]
        row["gpu_hours_50k"] = SAMPLES_50K * per_image_s / 3600
        result["sample"].append(row)
    result["inception"] = time_inception(args, device)
    result["ema"] = time_ema(args.sample_model, args=args, device=device)


def _check_first_step_losses(result: dict) -> int:
    """-> 1 (naming them) when harness first-step losses stray from the reference's (fp32/TF32
    only), else 0."""
    bad = [
        r
        for r in result["train"]
        if r.get("loss_diff_vs_reference", 0) > LOSS_TOL and r["precision"] != "bf16"
    ]
    if bad:
        print(f"speed: first-step losses differ by more than {LOSS_TOL}: {bad}", file=sys.stderr)
        return 1
    return 0


def profile_paths(name: str, *, args, device) -> None:
    """Top ops by self time of one step of each path (after a warm-up step)."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(name, args).to(device)
    batch = make_batch(batch=args.batch, size=args.input_size, device=device, seed=args.seed)
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for path in args.paths:
        state = PathState(path, model, batch, device)
        state.step()
        with profile(activities=activities) as prof:
            state.step()
        state.drops.remove()
        print(f"--- {name} {path}: top ops by self time")
        print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    sys.exit(main())
