"""When a reproduced number counts as the paper's: one tolerance per metric, stated and justified
on the report page (a number is judged only if the paper reports it and its node has run).

A verdict is an equivalence test against that band. The interval of (reproduced - paper) is the
reproduction's bootstrap interval shifted by the paper value and widened, in quadrature, by the
paper's own noise (it reports one training run):
    reproduced    the whole interval lies inside +-band
    disagrees     the whole interval lies outside it
    inconclusive  it straddles an edge of the band
Without an interval (files from before the bootstrap, `--bootstrap 0`) the point value is
judged against the band alone, and the verdict says that it rests on a single number.
"""

import math
from dataclasses import dataclass
from statistics import NormalDist

INCEPTION_METRICS = {"fid", "sfid", "is", "precision", "recall"}  # need the official Inception


@dataclass(frozen=True)
class Tolerance:
    rel: float  # allowed |reproduced - paper| / |paper|
    abs: float  # ... or this absolute difference, whichever is larger
    why: str

    def allows(self, paper: float, reproduced: float) -> bool:
        return abs(reproduced - paper) <= max(self.abs, self.rel * abs(paper))

    def describe(self) -> str:
        parts = ([f"{self.rel:.0%} relative"] if self.rel else []) + (
            [f"{self.abs:g} absolute"] if self.abs else []
        )
        return " or ".join(parts)


# Per-metric agreement: "reproduced" means within max(abs, rel * |paper|).
TOLERANCES = {
    "gflops": Tolerance(
        0.01,
        0.0,
        "udit.flops DEFAULT_TOLERANCE (per-model override for the reconstructed "
        "toy configs); fvcore is deterministic, so only the architecture can differ",
    ),
    # FID and sFID: a relative band plus a small floor. The old max(1.0, 5%) accepted U-DiT-B's
    # guided FID 4.26 for U-DiT-L's 3.37 (T4), and sFID's max(0.5, 10%) put all of T4's sFIDs
    # (4.49..4.78) inside one band.
    "fid": Tolerance(
        0.04,
        0.1,
        "4% covers the paper's own re-runs of DiT, which differ from the DiT paper by up to "
        "3.0% (T2: XL/2 19.47 vs 20.05), and is about 2 standard deviations of the gap between "
        "two independent training runs (sqrt(2) x 1.3% x 2 = 3.7%) at the seed-to-seed "
        "variation measured by Dufour, Efros and Perez, 'The FID Lottery' (arXiv 2606.20536, "
        "SiT on ImageNet 256): retraining with another seed keeps 'the FID coefficient of "
        "variation (CoV) inside a 1-2% band'; they 'treat any FID gap below the empirically "
        "measured ~1.3% CoV as inconclusive'. The 0.1 absolute floor is a judgement (no "
        "source found gives FID-50K's resampling noise in FID units); it binds only below "
        "FID 2.5, i.e. for no paper value: U-DiT-L's guided 3.37 (T4) accepts 3.24..3.50, "
        "not U-DiT-B's 4.26",
    ),
    "sfid": Tolerance(
        0.05,
        0.1,
        "a judgement: the paper has no sFID re-run to calibrate on, and its sFID moves by "
        "1-2% either way between late checkpoints (T5 U-DiT-L 5.17, 5.21, 5.27 while FID "
        "falls 8.71, 7.96, 7.54), so a little wider than FID's 4%; but below the 6.5% spread "
        "of T4's sFIDs ((4.78 - 4.49) / 4.49), so the band still tells T4's rows apart. "
        "Floor 0.1 as FID's (binds for no paper value)",
    ),
    "is": Tolerance(
        0.05,
        0.0,
        "a judgement (the paper has no IS re-run either): 5% relative; IS has no small values "
        "in the paper",
    ),
    "precision": Tolerance(
        0.0,
        0.02,
        "k-NN manifold estimate on 10k reference images: run-to-run "
        "differences of ~0.01 (T2 re-runs); 0.02 absolute",
    ),
    "recall": Tolerance(0.0, 0.02, "as precision"),
}

# The paper's noise per metric: (coefficient of variation over training seeds, source), or
# absent where no measurement is known, so that only the reproduction's interval counts.
PAPER_NOISE = {
    "fid": (
        0.013,
        "training-seed CoV 1.3% of FID (Dufour, Efros, Perez, 'The FID Lottery', arXiv 2606.20536)",
    ),
    # sFID, IS, precision, recall: no seed-to-seed measurement found. Borrowing FID's 1.3% would
    # be a guess, and their bands are already wider than FID's for the same reason.
}


@dataclass(frozen=True)
class Verdict:
    status: str  # one of STATUSES
    basis: str  # what it rests on, in words, shown beside the number
    low: float | None = None  # reproduced - paper, widened for the paper's noise
    high: float | None = None


STATUSES = [
    "reproduced",
    "disagrees",
    "inconclusive",  # the interval of the difference straddles an edge of the band
    "pending",
    "invalid",  # its metrics file exists but is broken (udit.report.metrics_json)
    "uncalibrated",
    "no paper value",
    "not in config",
]
UNJUDGED = ("no paper value", "not in config")  # not counted in the summary


def gflops_tolerance(model: str, row: dict) -> Tolerance:
    """The FLOPs table's own per-model tolerance (reconstructed toy configs allow more): the
    row's `tolerance` if flops.json carries one, else udit.flops.tolerance (imports torch)."""
    if row.get("tolerance") is not None:
        return Tolerance(float(row["tolerance"]), 0.0, TOLERANCES["gflops"].why)
    try:
        from udit.flops import tolerance  # imports torch: only when a GFLOPs cell is judged

        rel = tolerance(model)
    except (ImportError, KeyError, ValueError):
        return TOLERANCES["gflops"]
    return Tolerance(rel, 0.0, TOLERANCES["gflops"].why)


def band(tol: Tolerance, paper: float) -> float:
    return max(tol.abs, tol.rel * abs(paper))


def z_score(level: float) -> float:
    """Two-sided normal quantile: 1.96 at 95%."""
    return NormalDist().inv_cdf((1 + level) / 2)


def seeds_interval(values: list[float], level: float = 0.95) -> dict:
    """Interval of the mean of K >= 2 training replicates (Student t, K - 1 degrees of freedom):
    the training lottery measured, so no assumed seed noise is added on this side."""
    from scipy.stats import t  # the report's only scipy use: imported where needed

    k = len(values)
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = float(t.ppf((1 + level) / 2, k - 1)) * sd / math.sqrt(k)
    return {"low": mean - half, "high": mean + half, "level": level, "runs": k, "sd": sd}


def paper_half_width(metric: str, paper: float, level: float) -> float:
    cov = PAPER_NOISE.get(metric, (0.0, ""))[0]
    return z_score(level) * cov * abs(paper)


def difference_interval(
    paper: float, reproduced: float, low: float, high: float, *, paper_half: float
) -> tuple[float, float]:
    """Interval of (reproduced - paper): the reproduction's [low, high] shifted by the paper
    value, each side's half-width (from the point value: percentile intervals are asymmetric)
    combined in quadrature with the paper's. A side never goes below 0: a bootstrap FID interval
    can sit above its own point value (duplicates in a resample raise FID), and the verdict
    must not rest on an interval that excludes the number. Widening [low, high] only widens
    the result, so more uncertainty never settles a question."""
    gap = reproduced - paper
    below, above = max(reproduced - low, 0.0), max(high - reproduced, 0.0)
    return gap - math.hypot(below, paper_half), gap + math.hypot(above, paper_half)


def three_way(low: float, high: float, limit: float) -> str:
    """Equivalence test of an interval of differences against +-limit."""
    if -limit <= low and high <= limit:
        return "reproduced"
    if high < -limit or low > limit:
        return "disagrees"
    return "inconclusive"


def verdict(
    metric: str,
    paper,
    reproduced,
    *,
    uncalibrated: bool,
    tol: Tolerance,
    interval: dict | None = None,
    samples: int | None = None,
) -> Verdict:
    """The verdict on one paper number and the text of what it rests on."""
    if paper is None:
        return Verdict("no paper value", "the paper reports no value")
    if reproduced is None:
        return Verdict("pending", "its node has not run")
    if uncalibrated and metric in INCEPTION_METRICS:
        # a stand-in Inception number is never compared with the paper
        return Verdict(
            "uncalibrated",
            f"measured with non-official Inception weights; {_rests_on(interval, samples)}"
            + _interval_text(interval),
        )
    limit = band(tol, paper)
    limit_text = f"band ±{limit:.3g} ({tol.describe()})"
    if metric == "gflops":  # fvcore is deterministic: nothing to bootstrap
        status = "reproduced" if tol.allows(paper, reproduced) else "disagrees"
        return Verdict(status, f"fvcore count (deterministic); {limit_text}")
    runs = _rests_on(interval, samples)
    if interval is None:
        status = "reproduced" if tol.allows(paper, reproduced) else "disagrees"
        gap = reproduced - paper
        return Verdict(
            status,
            f"a single number (no interval in the metrics file): {runs}; "
            f"reproduced - paper {gap:+.3g}; {limit_text}",
        )
    level = float(interval.get("level", 0.95))
    paper_half = paper_half_width(metric, paper, level)
    low, high = difference_interval(
        paper, reproduced, interval["low"], interval["high"], paper_half=paper_half
    )
    noise = (
        f"paper noise ±{paper_half:.3g} ({z_score(level):.2f} x {PAPER_NOISE[metric][1]})"
        if metric in PAPER_NOISE
        else "paper noise: none known for this metric"
    )
    return Verdict(
        three_way(low, high, limit),
        f"{runs}{_interval_text(interval)}; {noise}; reproduced - paper in [{low:+.3g}, "
        f"{high:+.3g}]; {limit_text}",
        low,
        high,
    )


def _rests_on(interval: dict | None, samples: int | None) -> str:
    """'runs: K; [sampling seeds: M; ]samples: N': what a number is made of."""
    draws = (interval or {}).get("sampling_seeds", 1)
    return (
        f"runs: {(interval or {}).get('runs', 1)}; "
        + (f"sampling seeds: {draws}; " if draws > 1 else "")
        + f"samples: {samples if samples is not None else '?'}"
    )


def _interval_text(interval: dict | None) -> str:
    """'; interval [low, high] at 95% (how it was made)', or '' without an interval."""
    if interval is None:
        return ""
    resamples = interval.get("resamples")
    return (
        f"; interval [{interval['low']:.4g}, {interval['high']:.4g}] at "
        f"{float(interval.get('level', 0.95)):.0%}"
        + (f" ({resamples} bootstrap resamples)" if resamples else "")
        + _pooled_over(interval)
    )


def _pooled_over(interval: dict) -> str:
    """What a pooled interval is over: training seeds (each run's sampling seeds averaged
    first), or one run's sampling seeds (then the training lottery is not in it)."""
    if interval.get("runs", 1) > 1:
        return f" (t over {interval['runs']} training seeds, sd {interval['sd']:.3g})"
    if interval.get("sampling_seeds", 1) > 1:
        return (
            f" (t over {interval['sampling_seeds']} sampling seeds of one run, sd "
            f"{interval['sd']:.3g}; the training lottery is not in it)"
        )
    return ""


def judge(metric: str, paper, reproduced, *, uncalibrated: bool, tol: Tolerance, **kw) -> str:
    """The verdict's status alone (see `verdict`)."""
    return verdict(metric, paper, reproduced, uncalibrated=uncalibrated, tol=tol, **kw).status
