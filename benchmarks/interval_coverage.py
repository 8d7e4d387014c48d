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
values (nominal 95%; the leave-one-out mean keeps an interval from judging its own value), for
the normal interval `udit evaluate` writes (value +- z se) and for the percentile and basic
intervals from the same resamples' quantiles; and, for the report's pooled interval over
M sampling seeds (`sample_seeds: M`: the Student-t interval of their mean), how often it covers
the mean of the other K - M values, over every M-subset of the K seeds. `--work DIR` keeps the
draws; a second run with the same options reuses them (`udit sample` and `udit evaluate` skip a
finished result), so the table can be recomputed without sampling again.
"""

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path

from udit import argtypes
from udit.cli import add_dry_run, dry_run
from udit.metrics import evaluate
from udit.report.tolerances import seeds_interval
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


def _intervals(value: float, interval: dict) -> dict:
    """Three intervals from one set of resamples: the percentile one, the normal one (value +-
    z se: what the metrics file holds since it was chosen by this benchmark; a file from before
    holds the percentile one as low / high) and the basic one (2 value - high, 2 value - low),
    which reflects the bias resampling adds (duplicated samples raise FID) instead of
    inheriting it."""
    z = statistics.NormalDist().inv_cdf((1 + interval.get("level", 0.95)) / 2)
    se = interval.get("se", float("nan"))
    low = interval.get("percentile_low", interval["low"])
    high = interval.get("percentile_high", interval["high"])
    return {
        "percentile": (low, high),
        "normal": (value - z * se, value + z * se),
        "basic": (2 * value - high, 2 * value - low),
    }


def pooled_coverage(values: list[float], m: int) -> float:
    """Fraction of the M-subsets whose t interval of the mean covers the mean of the rest
    (nan with no rest)."""
    if len(values) <= m:
        return float("nan")
    inside = total = 0
    for subset in itertools.combinations(range(len(values)), m):
        rest = [v for i, v in enumerate(values) if i not in subset]
        interval = seeds_interval([values[i] for i in subset])
        inside += interval["low"] <= statistics.fmean(rest) <= interval["high"]
        total += 1
    return inside / total


def coverage(draws: list[dict], metric: str, pooled: int = 3) -> dict:
    values = [d[metric] for d in draws]
    kinds = [_intervals(d[metric], d["intervals"][metric]) for d in draws]
    inside = dict.fromkeys(kinds[0], 0)
    for i, by_kind in enumerate(kinds):
        others = statistics.fmean(values[:i] + values[i + 1 :])
        for kind, (low, high) in by_kind.items():
            inside[kind] += low <= others <= high
    sd = statistics.stdev(values)
    se = statistics.fmean(d["intervals"][metric].get("se", float("nan")) for d in draws)
    return {
        "metric": metric,
        "mean": statistics.fmean(values),
        "sd_over_seeds": sd,
        "mean_bootstrap_se": se,
        "se_over_sd": se / sd if sd else float("nan"),
        **{f"coverage_{kind}": n / len(values) for kind, n in inside.items()},
        f"coverage_t_over_{pooled}_seeds": pooled_coverage(values, pooled),
        "seeds": len(values),
        "values": values,
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
    p.add_argument("--work", help="keep each seed's samples, metrics and features here")
    add_dry_run(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if dry_run(args):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        draws = [draw(args, seed, work) for seed in range(args.seeds)]
    rows = [coverage(draws, m) for m in METRICS]
    head = f"{'metric':<10} {'mean':>10} {'sd seeds':>10} {'boot se':>10} {'se/sd':>6}"
    print(head + "  coverage: percentile  normal  basic  t over 3 seeds")
    for r in rows:
        print(
            f"{r['metric']:<10} {r['mean']:>10.4g} {r['sd_over_seeds']:>10.4g} "
            f"{r['mean_bootstrap_se']:>10.4g} {r['se_over_sd']:>6.2f}  "
            f"{r['coverage_percentile']:>20.0%} {r['coverage_normal']:>7.0%} "
            f"{r['coverage_basic']:>6.0%} {r['coverage_t_over_3_seeds']:>15.0%}"
        )
    print(f"{args.seeds} sampling seeds x {args.num_samples} samples; nominal coverage 95%")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "options": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
