"""Uncertainty from the sample set: bootstrap intervals of every metric, FID and IS at N = inf.

Bootstrap: B resamples with replacement of the generated samples (the reference stays fixed),
each given as multinomial counts w (N,) so a replicate is a weighted statistic and no feature
matrix is copied. The same B resamples feed every metric. Counts are drawn within ADM's IS
splits (consecutive blocks of IS_SPLIT_SIZE) so each split keeps its size; for N <= 5000 that
is the ordinary bootstrap, above it a stratified one (the blocks are arbitrary, so for iid
samples the spread is the same). Each metric's replicate equals the metric computed on the
resampled array (tests/test_intervals.py checks that), except where noted:

  - FID / sFID: for N <= D exact in the N x N space (eigenvalues of A sigma_ref A^T, see
    scores.frechet_distance_to_features); for N > D one D x D covariance and symmetric
    eigenproblem per resample, so B is capped at DENSE_MAX_RESAMPLES on a CPU.
  - IS: ADM's splits, no shuffle (a split's replicate is its weighted marginal and KL).
  - precision: the reference radii do not move, so a replicate is a weighted count.
  - recall: the generated radii move (a duplicate is a neighbour at distance 0, a dropped
    sample leaves a hole); each replicate's k-th neighbour is found among every sample's
    PRC_CANDIDATES nearest, and only reference points within reach of those are tested.
  - KID: the all-pairs unbiased MMD^2 (what torch-fidelity's 100-subset mean estimates) with
    the reference term fixed, not the subset mean itself.

The interval is the normal one: the metric of the samples themselves (a row of ones through
the same formula) +- z x the bootstrap standard error; the percentile interval of the replicates
is kept beside it (percentile_low / percentile_high). Chosen by measurement against real
reseeding (benchmarks/interval_coverage.py, K = 20 sampling seeds of one smoke checkpoint):
resampling duplicates samples, which raises a Frechet distance by an amount that is large beside
its spread when N << D (sFID at N = 256 against D = 2023: the percentile interval held the
other seeds' mean 10% of the time, the normal one 100%), while for FID and IS the two covered
alike (85% / 85% and 85% / 90% at N = 256; 70% / 70% at N = 64: the bootstrap's standard error
is 0.67 of the seed-to-seed sd at N = 64, 0.87 at N = 256, so it under-covers at toy N and
approaches nominal as N grows). It is an interval for the metric at this N (FID-50K is biased
upward, by roughly a constant / N), not for its N = inf limit; that is what fid_infinity /
is_infinity estimate (Chong & Forsyth, CVPR 2020). Where a config samples M seeds of one
checkpoint (`sample_seeds`), the report uses the t interval over them instead.
"""

import contextlib
import math
import statistics
from collections.abc import Callable

import numpy as np
import torch

from udit.metrics import clip_interval, scores

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95
DEFAULT_SEED = 0
METHOD = "normal: value +- z x bootstrap se over generated samples, reference fixed"
DENSE_MAX_RESAMPLES = 50  # N > D on a CPU: ~1 min per resample at N = 50k, D = 2048 (2 cores)
PRC_CANDIDATES = 20  # P(fewer than k = 3 of 20 neighbours survive a resample) < 1e-6
PRC_MAX_PAIRS = 50_000_000  # (reference, generated) pairs kept for recall: ~0.6 GB
BLOCK = 4096  # rows per distance / kernel block: 4096 x 50k float32 = 0.8 GB at most
INFINITY_SIZES = 15  # Chong & Forsyth: 15 subset sizes from N/10 to N
INFINITY_MIN_SIZES = 5  # fewer distinct sizes make the 1/N fit meaningless


@contextlib.contextmanager
def _one_thread():
    """Per-resample problems are small: BLAS threads cost more in synchronisation than they
    win, up to 100x on a busy machine (measured: eigvalsh 632 x 632, 0.6 s vs 0.02 s)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# ------------------------------------------------------------------------------ resamples


def bootstrap_counts(n: int, resamples: int, *, seed: int) -> np.ndarray:
    """(B, n) float64 multinomial counts, each row summing to n, drawn within IS splits."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, n))
    for start in range(0, n, scores.IS_SPLIT_SIZE):
        size = min(scores.IS_SPLIT_SIZE, n - start)
        counts[:, start : start + size] = rng.multinomial(
            size, np.full(size, 1.0 / size), resamples
        )
    return counts


def summarize(
    replicates: np.ndarray,
    *,
    point: float | None = None,
    metric: str = "",
    level: float = LEVEL,
    method=METHOD,
) -> dict:
    """Interval and standard error of the finite replicates (B,): point +- z se where the
    metric's own value is given (the module docstring says why), clipped to the metric's
    range (udit.metrics.RANGES), else the percentile one."""
    reps = np.asarray(replicates, np.float64)
    reps = reps[np.isfinite(reps)]
    tail = (1 - level) / 2
    low, high = (float(q) for q in np.quantile(reps, [tail, 1 - tail]))
    se = float(reps.std(ddof=1)) if len(reps) > 1 else None
    out = {"low": low, "high": high, "se": se, "level": level, "resamples": len(reps)}
    if point is not None and se is not None:
        half = statistics.NormalDist().inv_cdf(1 - tail) * se
        low_n, high_n = clip_interval(metric, point - half, point + half)
        out.update(low=low_n, high=high_n, percentile_low=low, percentile_high=high)
    return {**out, "method": method}


# ------------------------------------------------------------------------------ Frechet


def _as_t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, np.float64))


def frechet_replicates(features, reference: dict, counts: np.ndarray, *, device="cpu"):
    """FID of each weighted resample (B,); counts (B, N). Row of ones = the FID itself."""
    x = _as_t(features)  # (N, D)
    n, dim = x.shape
    if n <= dim:
        with _one_thread():
            return _frechet_small(x, reference, counts)
    if torch.device(device).type == "cpu":
        with _one_thread():
            return _frechet_dense(x, reference, counts, device=device)
    return _frechet_dense(x.to(device), reference, counts, device=device)


def _frechet_small(x: torch.Tensor, reference: dict, counts: np.ndarray) -> np.ndarray:
    """N <= D: every term from N x N Gram matrices of the centred features (exact)."""
    n = len(x)
    mu_ref, sigma_ref = _as_t(reference["mu"]), _as_t(reference["sigma"])
    mean = x.mean(0)
    xc = x - mean  # (N, D)
    gram = xc @ xc.T  # (N, N)
    gram_ref = xc @ sigma_ref @ xc.T  # (N, N)
    shift = xc @ (mean - mu_ref)  # (N,)
    shift_sq = float((mean - mu_ref) @ (mean - mu_ref))
    trace_ref = float(torch.trace(sigma_ref))
    out = np.empty(len(counts))
    for b, row in enumerate(counts):
        w = torch.from_numpy(row)
        mean_sq = float(w @ gram @ w) / n**2  # |mu_w - mean|^2
        dist_sq = mean_sq + 2 * float(w @ shift) / n + shift_sq  # |mu_w - mu_ref|^2
        trace = (float(w @ gram.diagonal()) - n * mean_sq) / (n - 1)  # tr sigma_w
        out[b] = dist_sq + trace + trace_ref - 2 * _trace_sqrt_small(gram_ref, w)
    return out


def _trace_sqrt_small(gram_ref: torch.Tensor, w: torch.Tensor) -> float:
    """tr sqrt(sigma_w sigma_ref) = sum sqrt(eig(A sigma_ref A^T)), A (k, D) the kept rows
    sqrt(w_i) (x_i - mu_w) / sqrt(n - 1): XY and YX share their non-zero eigenvalues."""
    n = len(w)
    keep = torch.nonzero(w).squeeze(1)
    wk = w[keep]  # (k,)
    g = gram_ref[keep][:, keep]  # (k, k)
    gw = g @ wk / n  # centring by the weighted mean, in Gram form
    centred = g - gw[:, None] - gw[None, :] + float(wk @ gw) / n
    root = wk.sqrt()
    small = root[:, None] * centred * root[None, :] / (n - 1)
    # the rows of A weighted by sqrt(w) sum to 0: rank <= k - 1, drop the exact-0 eigenvalue
    eig = torch.linalg.eigvalsh((small + small.T) / 2)[1:]
    return float(eig.clamp(min=0).sqrt().sum())


def _frechet_dense(x: torch.Tensor, reference: dict, counts: np.ndarray, *, device) -> np.ndarray:
    """N > D: tr sqrt(sigma_w sigma_ref) = tr sqrt(R sigma_w R), R = sqrt(sigma_ref) (once)."""
    n = len(x)
    mu_ref = _as_t(reference["mu"]).to(device)
    sigma_ref = _as_t(reference["sigma"]).to(device)
    val, vec = torch.linalg.eigh(sigma_ref)
    root_ref = (vec * val.clamp(min=0).sqrt()) @ vec.T  # (D, D)
    mean = x.mean(0)
    xc = x - mean  # (N, D)
    trace_ref = float(torch.trace(sigma_ref))
    out = np.empty(len(counts))
    for b, row in enumerate(counts):
        w = torch.from_numpy(row).to(device)
        offset = xc.T @ w / n  # mu_w - mean, (D,)
        sigma_w = (xc.T @ (xc * w[:, None]) - n * torch.outer(offset, offset)) / (n - 1)
        eig = torch.linalg.eigvalsh(root_ref @ sigma_w @ root_ref)
        diff = mean + offset - mu_ref
        tr_sqrt = float(eig.clamp(min=0).sqrt().sum())
        out[b] = float(diff @ diff + torch.trace(sigma_w)) + trace_ref - 2 * tr_sqrt
    return out


def frechet_distance(features, reference: dict, *, device="cpu") -> float:
    """FID of `features` (N, D) against reference mu/sigma by the bootstrap's own formula."""
    return float(
        frechet_replicates(features, reference, np.ones((1, len(features))), device=device)[0]
    )


# ------------------------------------------------------------------------------ IS


def inception_score_replicates(logits, counts: np.ndarray) -> np.ndarray:
    """ADM IS (consecutive splits, no shuffle, mean over splits) of each resample (B,)."""
    t = _as_t(logits)
    p, log_p = t.softmax(1).numpy(), t.log_softmax(1).numpy()  # (N, C)
    neg_entropy = (p * log_p).sum(1)  # (N,)
    per_split = []
    for start in range(0, len(p), scores.IS_SPLIT_SIZE):
        part = slice(start, start + scores.IS_SPLIT_SIZE)
        w = counts[:, part]  # (B, n_s)
        total = w.sum(1, keepdims=True)  # = n_s: counts are drawn within splits
        marginal = w @ p[part] / total  # (B, C)
        kl = w @ neg_entropy[part] / total[:, 0] - (marginal * np.log(marginal)).sum(1)
        per_split.append(np.exp(kl))
    return np.mean(per_split, axis=0)


# ------------------------------------------------------------------------------ P/R


def _cdist(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """Euclidean distances in float32, as torch-fidelity's precision/recall computes them."""
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b))


def _kth_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of x to its k-th nearest other row (self included, as
    torch-fidelity's kthvalue(k + 1))."""
    return np.concatenate(
        [
            _cdist(x[s : s + BLOCK], x).kthvalue(k + 1, dim=1).values.numpy()
            for s in range(0, len(x), BLOCK)
        ]
    )


class RecallResampler:
    """Recall of each resample: reference points inside some kept sample's k-NN ball."""

    def __init__(self, gen: np.ndarray, ref: np.ndarray, *, k: int):
        self.k, self.n_ref = k, len(ref)
        self.width = min(PRC_CANDIDATES, len(gen) - 1)
        nbr_d, nbr_i = [], []
        for s in range(0, len(gen), BLOCK):
            d = _cdist(gen[s : s + BLOCK], gen)  # (b, N)
            d[torch.arange(len(d)), torch.arange(s, s + len(d))] = math.inf  # not its own
            top = d.topk(self.width, dim=1, largest=False)  # sorted ascending
            nbr_d.append(top.values.numpy())
            nbr_i.append(top.indices.numpy())
        self.nbr_d, self.nbr_i = np.concatenate(nbr_d), np.concatenate(nbr_i)  # (N, L)
        reach = self.nbr_d[:, -1]  # the largest radius a resample can give each sample
        pairs_ref, pairs_gen, pairs_d = [], [], []
        kept = 0
        for s in range(0, len(ref), BLOCK):
            d = _cdist(ref[s : s + BLOCK], gen)  # (b, N)
            j, i = torch.nonzero(d <= torch.from_numpy(reach), as_tuple=True)
            kept += len(j)
            if kept > PRC_MAX_PAIRS:
                raise MemoryError(f"recall bootstrap needs over {PRC_MAX_PAIRS} candidate pairs")
            pairs_ref.append(j.numpy() + s)
            pairs_gen.append(i.numpy())
            pairs_d.append(d[j, i].numpy())
        self.pair_ref, self.pair_gen = np.concatenate(pairs_ref), np.concatenate(pairs_gen)
        self.pair_d = np.concatenate(pairs_d)

    def radii(self, w: np.ndarray) -> np.ndarray:
        """k-th neighbour distance of each sample in the resample with counts w (N,): its own
        w_i - 1 copies sit at 0, then its neighbours with their multiplicities."""
        need = self.k - (w - 1)  # (N,) neighbours still needed beyond the copies
        cum = np.cumsum(w[self.nbr_i], axis=1)  # (N, L)
        reached = cum >= need[:, None]
        pos = np.where(reached.any(1), reached.argmax(1), self.width - 1)
        return np.where(need <= 0, 0.0, self.nbr_d[np.arange(len(w)), pos])

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        out = np.empty(len(counts))
        for b, w in enumerate(counts):
            rad = self.radii(w)
            inside = (w[self.pair_gen] > 0) & (self.pair_d <= rad[self.pair_gen])
            out[b] = len(np.unique(self.pair_ref[inside])) / self.n_ref
        return out


def precision_replicates(gen: np.ndarray, ref: np.ndarray, counts: np.ndarray, *, k: int):
    """Share of each resample inside the reference manifold (fixed radii): weighted count."""
    ref_radii = torch.from_numpy(_kth_radii(ref, k))
    inside = np.concatenate(
        [
            (_cdist(gen[s : s + BLOCK], ref) <= ref_radii).any(1).numpy()
            for s in range(0, len(gen), BLOCK)
        ]
    )
    return counts @ inside / len(gen)


# ------------------------------------------------------------------------------ KID


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """torch-fidelity's KID kernel: (a . b / D + 1)^3."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid_replicates(gen: np.ndarray, ref: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 of each resample against the whole reference (B,), all pairs."""
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    n, m = len(gen), len(ref)
    within_ref = 0.0  # sum of k(r_i, r_j) over i != j
    for s in range(0, m, BLOCK):
        block = _poly_kernel(ref[s : s + BLOCK], ref)
        within_ref += block.sum() - np.trace(block[:, s : s + BLOCK])
    cross = np.zeros(n)  # (N,) sum over the reference of k(g_i, r)
    quad = np.zeros(len(counts))  # (B,) w^T K_gg w
    diag = np.empty(n)
    for s in range(0, n, BLOCK):
        block = _poly_kernel(gen[s : s + BLOCK], gen)  # (b, N)
        cross[s : s + BLOCK] = sum(
            _poly_kernel(gen[s : s + BLOCK], ref[r : r + BLOCK]).sum(1) for r in range(0, m, BLOCK)
        )
        diag[s : s + BLOCK] = np.diagonal(block[:, s : s + BLOCK])
        quad += ((counts @ block.T) * counts[:, s : s + BLOCK]).sum(1)
    # a resample's pairs of distinct positions include w_i (w_i - 1) copies of k(g_i, g_i)
    within_gen = (quad - counts @ diag) / (n * (n - 1))
    return within_gen + within_ref / (m * (m - 1)) - 2 * counts @ cross / (n * m)


# ------------------------------------------------------------------------------ all metrics


def metric_intervals(
    *,
    pool: np.ndarray,  # (N, 2048) generated pool_3
    logits: np.ndarray,  # (N, 1008)
    spatial: np.ndarray,  # (N, 2023)
    reference: dict,  # mu, sigma, mu_s, sigma_s
    ref_pool: np.ndarray,  # (N_ref, 2048)
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = LEVEL,
    device="cpu",
) -> dict:
    """{metric: interval dict or {"reason": why not}} for fid, sfid, is, precision, recall, kid."""
    n = len(pool)
    # row 0 all ones: each metric's own value by the replicates' formula (the interval's centre)
    counts = np.vstack([np.ones((1, n)), bootstrap_counts(n, resamples, seed=seed)])
    dense_cap = resamples if torch.device(device).type == "cuda" else DENSE_MAX_RESAMPLES
    gen32, ref32 = np.asarray(pool, np.float32), np.asarray(ref_pool, np.float32)
    k = scores.PRC_K

    def frechet(features, mu, sigma):
        rows = counts if len(features) <= np.shape(features)[1] else counts[: dense_cap + 1]
        return frechet_replicates(features, {"mu": mu, "sigma": sigma}, rows, device=device)

    jobs: dict[str, tuple[Callable[[], np.ndarray], str]] = {
        "fid": (lambda: frechet(pool, reference["mu"], reference["sigma"]), METHOD),
        "sfid": (lambda: frechet(spatial, reference["mu_s"], reference["sigma_s"]), METHOD),
        "is": (lambda: inception_score_replicates(logits, counts), METHOD),
        "precision": (lambda: precision_replicates(gen32, ref32, counts, k=k), METHOD),
        "recall": (lambda: RecallResampler(gen32, ref32, k=k)(counts), METHOD),
        "kid": (
            lambda: kid_replicates(pool, ref_pool, counts),
            METHOD + "; all-pairs unbiased MMD^2, not the subset mean",
        ),
    }
    out = {}
    for name, (job, method) in jobs.items():
        try:
            point, *reps = job()
            out[name] = summarize(reps, point=point, metric=name, level=level, method=method)
        except (MemoryError, ValueError) as err:  # too many candidate pairs, N < 2, ...
            out[name] = {"reason": str(err), "method": method}
    return out


# ------------------------------------------------------------------------------ N = inf


def subset_sizes(n: int, *, min_size: int, count: int = INFINITY_SIZES) -> list[int] | str:
    """Sizes from max(N/10, min_size) to N for the 1/N fit, or why there are too few."""
    low = max(math.ceil(n / 10), min_size)
    sizes = sorted({round(s) for s in np.linspace(low, n, count)})
    if low * 2 > n or len(sizes) < INFINITY_MIN_SIZES:
        return (
            f"N = {n} is too small for the 1/N fit: it needs subsets from {low} to at least "
            f"2 x {low} = {2 * low} samples ({INFINITY_MIN_SIZES}+ sizes)"
        )
    return sizes


def fit_inverse_n(sizes, values) -> tuple[float, float]:
    """Least squares value = intercept + slope / N; -> (intercept, slope)."""
    design = np.stack([np.ones(len(sizes)), 1.0 / np.asarray(sizes, np.float64)], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, np.asarray(values, np.float64), rcond=None)
    return float(intercept), float(slope)


def _extrapolate(n: int, metric: Callable[[np.ndarray], float], *, min_size: int, seed: int):
    """metric() of one seeded random subset per size, and the 1/N fit's intercept."""
    sizes = subset_sizes(n, min_size=min_size)
    if isinstance(sizes, str):
        return {"value": None, "reason": sizes, "seed": seed}
    rng = np.random.default_rng(seed)
    values = [metric(np.sort(rng.choice(n, size, replace=False))) for size in sizes]
    intercept, slope = fit_inverse_n(sizes, values)
    return {"value": intercept, "slope": slope, "sizes": sizes, "values": values, "seed": seed}


def fid_infinity(features, reference: dict, *, seed: int = DEFAULT_SEED, device="cpu") -> dict:
    """FID extrapolated to N = inf (Chong & Forsyth): FID(N) = FID_inf + slope / N fit on
    subsets. Subsets below D + 1 samples have a rank-deficient covariance, whose FID does not
    follow the 1/N model, so D + 1 is the smallest size."""
    x = np.asarray(features, np.float64)
    return _extrapolate(
        len(x),
        lambda idx: frechet_distance(x[idx], reference, device=device),
        min_size=x.shape[1] + 1,
        seed=seed,
    )


def inception_score_single(logits) -> float:
    """IS of all `logits` (N, C) as one split (Chong & Forsyth's IS, no split averaging)."""
    t = _as_t(logits)
    p, log_p = t.softmax(1), t.log_softmax(1)
    return float((p * (log_p - p.mean(0).log())).sum(1).mean().exp())


def is_infinity(logits, *, seed: int = DEFAULT_SEED) -> dict:
    """IS extrapolated to N = inf on single-split IS of subsets; the smallest subset has more
    samples than classes (C + 1), so the marginal's entropy bias is ~1/N."""
    x = np.asarray(logits, np.float64)
    return _extrapolate(
        len(x),
        lambda idx: inception_score_single(x[idx]),
        min_size=x.shape[1] + 1,
        seed=seed,
    )
