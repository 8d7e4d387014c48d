"""Every metric from Inception features, with torch-fidelity's own metric functions.

Protocol = ADM's evaluator (guided-diffusion evaluations/evaluator.py), which the U-DiT
and DiT papers use for FID-50K, sFID, IS, precision and recall:
  - FID / sFID: Frechet distance between Gaussian fits. Reference mu/sigma come from the
    reference npz (as ADM reads them); both sides are cast to float64 because
    torch-fidelity's fid_statistics_to_metric asserts equal dtypes, and its mean of
    float32 features is float32 while np.cov returns float64.
  - IS: softmax of the bias-free logits, splits of IS_SPLIT_SIZE consecutive samples, NO
    shuffle, mean over splits (ADM compute_inception_score). The last split holds the
    remainder; with N <= 5000 there is one split. Each split is one call of
    torch-fidelity's isc_features_to_metric(splits=1, shuffle=False), so any N matches
    ADM exactly (torch-fidelity's own splitting uses N // splits chunks instead).
    torch-fidelity's default (10 shuffled splits, seed 2020) is reported as well, named so.
  - Precision / recall: k = 3 nearest neighbours (ADM ManifoldEstimator nhood_sizes=(3,))
    on pool_3 features against the reference images' pool_3 features. torch-fidelity's
    prc_features_to_metric takes (generated, real) in that order; distances in float32
    (ADM uses float16 distances when finite: differences ~1e-3 are expected).
  - KID (not in ADM): torch-fidelity defaults (poly kernel degree 3, 100 subsets of
    min(1000, N, N_ref), seed 2020) on pool_3.
"""

import numpy as np
import torch
from torch_fidelity import (
    KEY_METRIC_FID,
    KEY_METRIC_ISC_MEAN,
    KEY_METRIC_ISC_STD,
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
)
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

from udit.errors import BadValueError

IS_SPLIT_SIZE = 5000  # evaluator.py compute_inception_score(split_size=5000)
PRC_K = 3  # evaluator.py ManifoldEstimator(nhood_sizes=(3,))
PRC_BATCH = 10000  # evaluator.py row/col batch size; bounds the distance blocks in memory
TF_IS_SPLITS = 10  # torch-fidelity defaults.py isc_splits
TF_SEED = 2020  # torch-fidelity defaults.py rng_seed (IS shuffle, KID subsets)
KID_SUBSETS = 100  # torch-fidelity defaults.py kid_subsets
KID_SUBSET_SIZE = 1000  # torch-fidelity defaults.py kid_subset_size (capped at N)


def gaussian_stats(features: np.ndarray) -> dict[str, np.ndarray]:
    """mu (D,), sigma (D, D), both float64, via torch-fidelity."""
    stats = fid_features_to_statistics(torch.from_numpy(np.asarray(features, dtype=np.float64)))
    return {"mu": stats["mu"].astype(np.float64), "sigma": stats["sigma"].astype(np.float64)}


def _as_float64(stats: dict) -> dict[str, np.ndarray]:
    return {
        "mu": np.asarray(stats["mu"], np.float64),
        "sigma": np.asarray(stats["sigma"], np.float64),
    }


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """torch-fidelity's Frechet distance with both sides in float64 (its dtype assert)."""
    s1, s2 = _as_float64(stats_1), _as_float64(stats_2)
    if s1["mu"].shape != s2["mu"].shape or s1["sigma"].shape != s2["sigma"].shape:
        raise BadValueError(
            f"statistics differ in dimension: mu {s1['mu'].shape} vs {s2['mu'].shape}, "
            f"sigma {s1['sigma'].shape} vs {s2['sigma'].shape}"
        )
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


def frechet_distance_to_features(features: np.ndarray, reference: dict) -> float:
    """Frechet distance between a Gaussian fit of `features` (N, D) and reference mu/sigma.

    Same value as frechet_distance(gaussian_stats(features), reference). When N <= D the
    sample covariance is A^T A with A = centred features / sqrt(N - 1) (N x D), and because
    XY and YX share their non-zero eigenvalues, tr sqrt(sigma_ref A^T A) is the sum of square
    roots of the eigenvalues of the symmetric N x N matrix A sigma_ref A^T. That is exact and
    avoids torch-fidelity's eigvals of a D x D product (about 2.6 s per call at D = 2048 on one
    core), which dominated small evaluations such as the smoke run's 16 samples.
    """
    x = np.asarray(features, np.float64)
    n, dim = x.shape
    if n > dim:
        return frechet_distance(gaussian_stats(x), reference)
    if n < 2:
        raise BadValueError(f"a covariance needs at least 2 samples, got {n}")
    ref = _as_float64(reference)
    if ref["mu"].shape != (dim,) or ref["sigma"].shape != (dim, dim):
        raise BadValueError(
            f"statistics differ in dimension: features have {dim}, reference mu {ref['mu'].shape}, "
            f"sigma {ref['sigma'].shape}"
        )
    mu = x.mean(axis=0)
    a = (x - mu) / np.sqrt(n - 1)  # (N, D); sample covariance = a.T @ a (np.cov, ddof 1)
    small = a @ ref["sigma"] @ a.T  # (N, N), symmetric positive semi-definite
    # Centring makes the rows of `a` sum to 0, so rank <= N - 1: the smallest eigenvalue is an
    # exact 0 that a solver returns as round-off; dropping it keeps sqrt(round-off) out.
    eigenvalues = np.linalg.eigvalsh((small + small.T) / 2)[1:]  # ascending
    tr_covmean = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()  # clip: round-off below 0
    diff = mu - ref["mu"]
    return float(diff @ diff + np.sum(a * a) + np.trace(ref["sigma"]) - 2 * tr_covmean)


def inception_score_adm(logits: np.ndarray, *, split_size: int = IS_SPLIT_SIZE) -> dict:
    """ADM IS: consecutive splits of `split_size`, no shuffle, mean of per-split scores."""
    logits_t = torch.from_numpy(np.asarray(logits))
    scores = [
        isc_features_to_metric(logits_t[start : start + split_size], splits=1, shuffle=False)[
            KEY_METRIC_ISC_MEAN
        ]
        for start in range(0, len(logits_t), split_size)
    ]
    return {"mean": float(np.mean(scores)), "splits": len(scores), "split_size": split_size}


def inception_score_torch_fidelity(logits: np.ndarray) -> dict:
    """torch-fidelity's default IS: 10 equal splits after a seeded shuffle (not ADM's)."""
    out = isc_features_to_metric(
        torch.from_numpy(np.asarray(logits)), splits=TF_IS_SPLITS, shuffle=True, rng_seed=TF_SEED
    )
    return {
        "mean": out[KEY_METRIC_ISC_MEAN],
        "std": out[KEY_METRIC_ISC_STD],
        "splits": TF_IS_SPLITS,
        "shuffle": True,
        "seed": TF_SEED,
    }


def precision_recall(
    sample_pool: np.ndarray, reference_pool: np.ndarray, *, k: int = PRC_K
) -> dict:
    """Improved precision/recall (Kynkaanniemi et al. 2019) on pool_3, k-NN radii."""
    if min(len(sample_pool), len(reference_pool)) <= k:
        raise BadValueError(
            f"precision/recall with k={k} needs more than {k} samples and reference images, "
            f"got {len(sample_pool)} and {len(reference_pool)}"
        )
    out = prc_features_to_metric(
        torch.from_numpy(np.asarray(sample_pool, np.float32)),  # input 1 = generated
        torch.from_numpy(np.asarray(reference_pool, np.float32)),  # input 2 = real
        prc_neighborhood=k,
        prc_batch_size=PRC_BATCH,
        save_cpu_ram=True,  # blockwise distances: a full 50k x 50k float32 matrix would be 10 GB
        verbose=False,
    )
    # torch-fidelity returns a float32 mean of 0/1 flags (0.8 -> 0.800000011920929); the count
    # behind it is exact (< 2**24), so recover it and report count / N in float64 as ADM does.
    return {
        "precision": round(out[KEY_METRIC_PRECISION] * len(sample_pool)) / len(sample_pool),
        "recall": round(out[KEY_METRIC_RECALL] * len(reference_pool)) / len(reference_pool),
    }


def kid(sample_pool: np.ndarray, reference_pool: np.ndarray, *, seed: int = TF_SEED) -> dict:
    subset_size = min(KID_SUBSET_SIZE, len(sample_pool), len(reference_pool))
    out = kid_features_to_metric(
        torch.from_numpy(np.asarray(sample_pool, np.float32)),
        torch.from_numpy(np.asarray(reference_pool, np.float32)),
        kid_subsets=KID_SUBSETS,
        kid_subset_size=subset_size,
        rng_seed=seed,
        verbose=False,
    )
    return {
        "mean": out[KEY_METRIC_KID_MEAN],
        "std": out[KEY_METRIC_KID_STD],
        "subsets": KID_SUBSETS,
        "subset_size": subset_size,
        "seed": seed,
    }
