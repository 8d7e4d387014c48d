"""Does `udit evaluate`'s bootstrap interval (resampling the generated samples) cover what
redrawing the samples really does? The generation lottery, measured on one checkpoint.

    python benchmarks/interval_coverage.py --checkpoint results/u-dit-t/train/checkpoints/
        ckpt-0000008.pt --vae results/data/tiny-vae --reference results/data/toy32/reference.npz
        --inception-weights results/inception/standin.pth --seeds 20 --num-samples 64

Each of K sampling seeds draws N samples from the same checkpoint (`udit sample`) and is
evaluated with its own bootstrap interval (`udit evaluate`). The K point values are K draws of
the metric at N: their mean estimates its expectation. Printed per metric: the K values' sd
beside the mean bootstrap standard error (a ratio near 1: the bootstrap sees the right spread),
and the coverage: the fraction of the K intervals that contain the mean of the other K - 1
values (nominal 95%; the leave-one-out mean keeps an interval from judging its own value).
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from udit import argtypes
from udit.cli import add_dry_run, dry_run
from udit.metrics import evaluate
from udit.sampling import cli as sample

METRICS = ("fid", "sfid", "is", "precision", "recall")


def draw(args, seed: int, work: Path) -> dict:
    """One sampling seed: N samples, then their metrics with bootstrap intervals."""
    npz = work / f"seed{seed}.npz"
    space = ["--vae", args.vae] if args.vae else ["--pixel"]
    sample.main([
        "--checkpoint", args.checkpoint, "--out", str(npz), "--num-samples", str(args.num_samples),
        "--seed", str(seed), "--steps", str(args.steps), "--device", "cpu", *space,
    ])  # fmt: skip
    out = work / f"seed{seed}.json"
    evaluate.main([
        "--samples", str(npz), "--reference", args.reference, "--out", str(out),
        "--inception-weights", args.inception_weights, "--device", "cpu",
        "--bootstrap", str(args.bootstrap),
    ])  # fmt: skip
    return json.loads(out.read_text())


def coverage(draws: list[dict], metric: str) -> dict:
    values = [d[metric] for d in draws]
    intervals = [d["intervals"][metric] for d in draws]
    inside = 0
    for i, interval in enumerate(intervals):
        others = statistics.fmean(values[:i] + values[i + 1 :])
        inside += interval["low"] <= others <= interval["high"]
    sd = statistics.stdev(values)
    se = statistics.fmean(iv.get("se", float("nan")) for iv in intervals)
    return {
        "metric": metric,
        "mean": statistics.fmean(values),
        "sd_over_seeds": sd,
        "mean_bootstrap_se": se,
        "se_over_sd": se / sd if sd else float("nan"),
        "coverage": inside / len(values),
        "seeds": len(values),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--vae", help="the run's VAE folder or hub id (omit for a pixel model)")
    p.add_argument("--reference", required=True)
    p.add_argument("--inception-weights", required=True)
    p.add_argument("--seeds", type=argtypes.Range("int", 3, 1000), default=20)
    p.add_argument("--num-samples", type=argtypes.SAMPLES, default=64)
    p.add_argument("--steps", type=argtypes.Range("int", 1, 1000), default=5)
    p.add_argument("--bootstrap", type=argtypes.Range("int", 10, 100_000), default=1000)
    p.add_argument("--json", help="also write the table here")
    add_dry_run(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if dry_run(args):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        draws = [draw(args, seed, Path(tmp)) for seed in range(args.seeds)]
    rows = [coverage(draws, m) for m in METRICS]
    print(f"{'metric':<10} {'mean':>10} {'sd seeds':>10} {'boot se':>10} {'se/sd':>6} {'cover':>6}")
    for r in rows:
        print(
            f"{r['metric']:<10} {r['mean']:>10.4g} {r['sd_over_seeds']:>10.4g} "
            f"{r['mean_bootstrap_se']:>10.4g} {r['se_over_sd']:>6.2f} {r['coverage']:>6.0%}"
        )
    print(f"{args.seeds} sampling seeds x {args.num_samples} samples; nominal coverage 95%")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "options": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
