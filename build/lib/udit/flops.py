"""`udit flops`: forward GFLOPs per image of every registry model, next to the paper's numbers.

Convention of the paper (and of DiT): fvcore counts, one fused multiply-add = one FLOP,
batch 1, latent 4 x 32 x 32 (ImageNet 256), the model in eval mode, i.e. the deployed graph
(the U-shaped family folds its re-parameterised FFN in eval mode). fvcore does not count
elementwise ops, softmax or activations; we keep that convention (the paper's numbers
follow it) and only add a handle for F.scaled_dot_product_attention, which fvcore would
otherwise count as zero (-10% on DiT-S/2).

    udit flops                           # table: every model at 256 + the ImageNet-512 rows (T6)
    udit flops --models DiT-XL/2 U-DiT-B --format json
    udit flops --input-size 64           # every model at latent 64

Writes flops.csv and flops.json into the --out folder (atomically); stdout carries only the table
(or the JSON list with --format json); progress goes to stderr.
"""

import argparse
import concurrent.futures
import contextlib
import csv
import gc
import io
import json
import math
import multiprocessing
import os
import sys
import time
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from udit import outputs
from udit.argtypes import IMAGE_SIZE, MAX_WORKERS, Range
from udit.cli import add_dry_run, dry_run
from udit.errors import command_main
from udit.io import atomic_write_text
from udit.models import MODELS, get_spec
from udit.paper import paper_numbers

LATENT_256 = 32  # ImageNet 256 px through the f=8 VAE
LATENT_512 = 64  # ImageNet 512 px (paper T6)
IN_CHANNELS = 4  # sd-vae-ft-ema latent channels
# Threads for the traced forward. One avoids OpenMP oversubscription on a shared machine:
# on 2 busy cores (load ~10) one thread traced DiT-B/2 in 1.8 s vs 7-9 s with two.
DEFAULT_THREADS = 1
DEFAULT_JOBS = min(2, os.cpu_count() or 1)  # the 2-core CI machines: ~2x faster than one process
PROCESSES = Range("int", 1, MAX_WORKERS)  # --threads / --jobs: at least one, a machine's worth
DEFAULT_TOLERANCE = 0.01  # |rel_err| allowed unless a spec sets extra["gflops_tolerance"]
COLUMNS = [
    "model",
    "slug",
    "input_size",
    "params_M",
    "gflops",
    "paper_gflops",
    "rel_err",
    "source",
    "note",
]

# ImageNet-512 rows of the paper: (registry name, key in paper_numbers.yaml imagenet512_T6).
IMAGENET512_ROWS = [("U-DiT-B", "U-DiT-B"), ("DiT-XL/2", "DiT-XL/2 (replicated)")]

# Ops fvcore meets in our models and does not count, on purpose. All are O(elements) per
# token (no reduction over a channel or token axis of the size of a matmul), i.e. below
# 1e-3 of the total at every size in the table; counting them would also break the
# paper's convention, which fvcore defines. Anything not listed still warns on stderr.
NEGLIGIBLE_OPS = [
    # elementwise arithmetic: residuals, adaLN modulate/gates, RoPE rotations, guidance
    "aten::add",
    "aten::add_",
    "aten::sub",
    "aten::rsub",
    "aten::mul",
    "aten::mul_",
    "aten::div",
    "aten::div_",
    "aten::neg",
    "aten::pow",
    "aten::sqrt",
    "aten::rsqrt",
    "aten::reciprocal",
    "aten::clamp_min",
    "aten::clamp_max",
    "aten::abs",
    "aten::where",
    # pointwise non-linearities and the attention softmax
    "aten::silu",
    "aten::gelu",
    "aten::sigmoid",
    "aten::tanh",
    "aten::softmax",
    "aten::exp",
    "aten::log",
    "aten::sin",
    "aten::cos",
    # L2 normalisation of q/k (cosine attention): one pass over q and k
    # RoPE2D angle table: positions x frequencies, rebuilt per forward on the small grid
    "aten::outer",
    # 2x2 average pooling of keys/values (toy KV-downsampling ablation): one add per element
    "aten::avg_pool2d",
    "aten::linalg_vector_norm",
    "aten::norm",
    "aten::frobenius_norm",
    "aten::sum",
    "aten::mean",
    # table look-ups and data movement
    "aten::embedding",
    "aten::pixel_shuffle",
    "aten::pixel_unshuffle",
    "aten::repeat",
    "aten::repeat_interleave",
    "aten::view_as_complex",
    "aten::view_as_real",
    "aten::flip",
    "aten::expand_as",
    "aten::clone",
    "aten::movedim",
    "aten::unflatten",
    "aten::im2col",
    "aten::col2im",
    "aten::new_ones",
    "aten::ones_like",
    "aten::scalar_tensor",
    "aten::lift_fresh",
    "aten::numpy_T",
    "aten::mT",
    "aten::slice_scatter",
]


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: the MACs of q k^T plus attn v,
    B*heads*Lq*Lk*(d_qk + d_v), what fvcore counts for the explicit matmuls. Independent
    of which kernel (flash, memory-efficient, math) runs."""
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch_heads_lq = math.prod(q[:-1])  # (..., Lq, d_qk) -> B * heads * Lq
    return batch_heads_lq * k[-2] * (q[-1] + v[-1])


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op thread count inside the block, restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def build_for_counting(name: str, *, input_size: int) -> tuple[nn.Module, int]:
    """(model in eval mode with uninitialised weights, deployed parameter count).

    Weights do not change FLOPs, and skipping initialisation saves ~10 s per large model:
    the model is built on the meta device, its parameters counted there (re-parameterised
    FFNs fold for free on meta; on CPU a U-DiT-L fold costs ~280 GMACs, 3x its forward),
    then given uninitialised CPU storage. Falls back to a normal build if a constructor
    cannot run on meta."""
    spec = get_spec(name)
    try:
        with torch.device("meta"):
            model = spec.build(input_size=input_size)
            params = param_count(model)
        model = model.to_empty(device="cpu")
    except (NotImplementedError, RuntimeError, TypeError) as err:
        print(f"[flops] {name}: meta build failed ({err}); building normally", file=sys.stderr)
        model = spec.build(input_size=input_size)
        params = param_count(model)
    return model.eval(), params


def count_flops(
    model: nn.Module,
    *,
    input_size: int,
    in_channels: int = IN_CHANNELS,
    threads: int = DEFAULT_THREADS,
) -> tuple[int, dict]:
    """(MACs of one forward pass at batch 1, {uncounted op: occurrences}) for forward(x, t, y).
    fvcore traces one real forward pass; `threads` is torch's intra-op thread count meanwhile."""
    x = torch.zeros(1, in_channels, input_size, input_size)
    t = torch.zeros(1)
    y = torch.zeros(1, dtype=torch.long)
    analysis = FlopCountAnalysis(model, (x, t, y))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    analysis.set_op_handle(**{op: None for op in NEGLIGIBLE_OPS})
    analysis.unsupported_ops_warnings(False)  # reported by the caller, once per model
    analysis.uncalled_modules_warnings(
        False
    )  # e.g. train-only branches of a folded FFN in eval mode
    analysis.tracer_warnings("none")
    # Flush denormals: uninitialised weights can hold them and they slow CPU math 10-100x.
    torch.set_flush_denormal(True)
    try:
        with torch_threads(threads), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            total = analysis.total()
    finally:
        torch.set_flush_denormal(False)  # torch's default
    return int(total), dict(analysis.unsupported_ops())


def param_count(model: nn.Module) -> int:
    """Deployed parameter count: the model's own num_params(deployed=True) when it has one
    (re-parameterised FFNs count at their fused size, paper T8), else every parameter."""
    if hasattr(model, "num_params"):
        return int(model.num_params(deployed=True))
    return sum(p.numel() for p in model.parameters())


def paper_gflops(name: str, *, input_size: int) -> tuple[float | None, str]:
    """(paper GFLOPs, source) of a model at a latent size, or (None, '') if the paper has none."""
    if input_size == LATENT_256:
        spec = get_spec(name)
        return spec.paper_gflops, spec.source
    if input_size == LATENT_512:
        t6 = paper_numbers()["imagenet512_T6"]
        for model, key in IMAGENET512_ROWS:
            if model == name:
                return float(t6[key][0]), "T6 (imagenet512_T6)"
    return None, ""


def flops_row(name: str, *, input_size: int, threads: int = DEFAULT_THREADS) -> dict[str, Any]:
    spec = get_spec(name)
    start = time.perf_counter()
    with torch_threads(threads):  # eval() folds re-parameterised FFNs: real matmuls on CPU
        model, params = build_for_counting(spec.name, input_size=input_size)
    in_channels = getattr(model, "in_channels", IN_CHANNELS)
    try:
        macs, uncounted = count_flops(
            model, input_size=input_size, in_channels=in_channels, threads=threads
        )
    except (RuntimeError, IndexError) as err:  # a buffer whose values matter (e.g. indices)
        print(
            f"[flops] {name}: tracing uninitialised weights failed ({err}); retrying initialised",
            file=sys.stderr,
        )
        with torch_threads(threads):
            model = spec.build(input_size=input_size).eval()
        macs, uncounted = count_flops(
            model, input_size=input_size, in_channels=in_channels, threads=threads
        )
    del model
    gc.collect()
    paper, source = paper_gflops(spec.name, input_size=input_size)
    gflops = macs / 1e9
    note = (
        spec.note if input_size == LATENT_256 else f"latent {input_size}; {spec.note}".rstrip("; ")
    )
    if uncounted:
        print(
            f"[flops] {spec.name}: ops not counted (not in NEGLIGIBLE_OPS): {uncounted}",
            file=sys.stderr,
        )
    print(
        f"[flops] {spec.name} @ {input_size}: {gflops:.4f} GFLOPs "
        f"({time.perf_counter() - start:.1f} s)",
        file=sys.stderr,
    )
    return {
        "model": spec.name,
        "slug": spec.slug,
        "input_size": input_size,
        "params_M": round(params / 1e6, 4),
        "gflops": round(gflops, 4),
        "paper_gflops": paper,
        "rel_err": None if paper is None else round((gflops - paper) / paper, 5),
        "source": source,
        "note": note,
    }


def _row_task(task: tuple[str, int, int]) -> dict[str, Any]:
    name, input_size, threads = task
    return flops_row(name, input_size=input_size, threads=threads)


def flops_table(
    *,
    models: list[str] | None = None,
    input_size: int | None = None,
    threads: int = DEFAULT_THREADS,
    jobs: int = 1,
) -> list[dict]:
    """Rows for `models` (default: the whole registry). input_size None = the paper's table:
    every model at latent 32 plus the ImageNet-512 rows (latent 64) of T6. jobs > 1 counts
    models in that many processes (one model's trace is single-threaded and tracer-bound)."""
    names = [get_spec(m).name for m in (models or list(MODELS))]
    if input_size is not None:
        tasks = [(n, input_size, threads) for n in names]
    else:
        tasks = [(n, LATENT_256, threads) for n in names]
        tasks += [(n, LATENT_512, threads) for n, _ in IMAGENET512_ROWS if n in names]
    if jobs <= 1 or len(tasks) <= 1:
        return [_row_task(task) for task in tasks]
    # spawn: a fresh interpreter per worker (fork after torch threads started is unsafe)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        return list(pool.map(_row_task, tasks))


def tolerance(name: str) -> float:
    """Allowed |rel_err| of a model's GFLOPs against the paper (spec.extra, else 1%)."""
    return float(get_spec(name).extra.get("gflops_tolerance", DEFAULT_TOLERANCE))


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)
    return buf.getvalue()


def write_table(rows: list[dict], *, out_dir: str) -> tuple[str, str]:
    """flops.csv and flops.json in out_dir, each replaced atomically."""
    os.makedirs(out_dir, exist_ok=True)
    csv_path, json_path = os.path.join(out_dir, "flops.csv"), os.path.join(out_dir, "flops.json")
    atomic_write_text(csv_path, to_csv(rows))
    atomic_write_text(json_path, json.dumps(rows, indent=1) + "\n")
    return csv_path, json_path


def format_table(rows: list[dict]) -> str:
    width = max([len("model")] + [len(r["model"]) for r in rows])
    head = (
        f"{'model':<{width}} {'size':>4} {'params_M':>9} {'gflops':>9} {'paper':>8} {'rel_err':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        paper = "-" if r["paper_gflops"] is None else f"{r['paper_gflops']:.2f}"
        err = "-" if r["rel_err"] is None else f"{100 * r['rel_err']:+.2f}%"
        lines.append(
            f"{r['model']:<{width}} {r['input_size']:>4} {r['params_M']:>9.2f} {r['gflops']:>9.4f} "
            f"{paper:>8} {err:>8}"
        )
    return "\n".join(lines)


@command_main("udit flops")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="udit flops", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", metavar="NAME", help=f"subset (default all): {', '.join(MODELS)}"
    )
    parser.add_argument(
        "--input-size",
        type=IMAGE_SIZE,
        default=None,
        help="latent side for every model (default: 32 for all, plus the 512 rows at 64)",
    )
    parser.add_argument(
        "--out", default=os.path.join("results", "flops"), help="folder for flops.csv/json"
    )
    parser.add_argument(
        "--format", choices=["table", "json", "csv"], default="table", help="what stdout shows"
    )
    parser.add_argument(
        "--threads",
        type=PROCESSES,
        default=DEFAULT_THREADS,
        help="torch threads while tracing (default 1: fastest on a shared machine)",
    )
    parser.add_argument(
        "--jobs",
        type=PROCESSES,
        default=DEFAULT_JOBS,
        help=f"models counted in parallel processes (default {DEFAULT_JOBS})",
    )
    add_dry_run(parser)
    args = parser.parse_args(argv)
    for name in args.models or []:
        try:
            get_spec(name)
        except KeyError as err:
            parser.error(str(err.args[0]))
    outputs.check(inputs={}, outputs={"--out": args.out}, folders=("--out",))  # before the work
    if dry_run(args):
        return 0

    start = time.perf_counter()
    rows = flops_table(
        models=args.models, input_size=args.input_size, threads=args.threads, jobs=args.jobs
    )
    csv_path, json_path = write_table(rows, out_dir=args.out)
    print(
        f"[flops] {len(rows)} rows in {time.perf_counter() - start:.1f} s -> "
        f"{csv_path}, {json_path}",
        file=sys.stderr,
    )
    out = {"table": format_table, "json": lambda r: json.dumps(r, indent=1), "csv": to_csv}[
        args.format
    ](rows)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
