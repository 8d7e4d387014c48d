"""Metrics: torch-fidelity Inception features, ADM protocol, reference and evaluate commands.

Offline: the official Inception weights cannot be downloaded here, so the stand-in of
`udit make-standin-inception` (udit/metrics/standin.py: Kaiming convs, BatchNorm calibrated
on one batch of images) is generated once per session (~96 MB, tmp dir only) and loaded
through the real weights-path code; metrics on its features are meaningful for plumbing,
not for quality.
Every Inception forward costs ~6 GFLOPs on CPU, so the image sets are tiny and every test
that runs Inception is marked slow; the rest check the metric code on synthetic features,
including `udit evaluate`'s wiring (which feature feeds which metric) with a linear stand-in
for the Inception pass.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from printed_text import check_printed, record_text
from torch_fidelity import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from udit.errors import BadValueError
from udit.metrics import evaluate, inception, provenance, reference, scores, standin
from udit.metrics.npz import ArrayImages, NpzImages, open_npz_array

N_IMAGES = 12  # > k + 1 for precision/recall; small because Inception is slow on CPU
SIZE = 32  # Inception resizes everything to 299, so tiny images cost the same and load fast
CALIBRATION_IMAGES = 8


def smooth_images(n: int, *, seed: int) -> np.ndarray:
    """uint8 (n, SIZE, SIZE, 3): coarse random colour fields, upsampled, plus pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    fine = torch.nn.functional.interpolate(
        coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )
    fine = fine + torch.from_numpy(rng.normal(0, 12, fine.shape).astype(np.float32))
    return fine.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """The stand-in the DAG makes offline (`udit make-standin-inception`), BN calibrated on PNGs."""
    root = tmp_path_factory.mktemp("inception")
    folder = root / "calibration" / "class_0"
    folder.mkdir(parents=True)
    for i, image in enumerate(smooth_images(CALIBRATION_IMAGES, seed=100)):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    path = root / "standin.pth"
    standin.make_standin_inception(
        out=path,
        seed=0,
        calibration_images=root / "calibration",
        num_calibration=CALIBRATION_IMAGES,
        image_size=SIZE,
    )
    return path


@pytest.fixture(scope="session")
def images_a() -> np.ndarray:
    return smooth_images(N_IMAGES, seed=1)


@pytest.fixture(scope="session")
def reference_npz(tmp_path_factory, weights, images_a) -> Path:
    """Reference built by the real `udit build-reference` entry point from a folder of PNGs."""
    root = tmp_path_factory.mktemp("reference")
    folder = root / "images" / "class_0"
    folder.mkdir(parents=True)
    for i, image in enumerate(images_a):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    out = root / "ref.npz"
    argv = [
        "--images",
        str(root / "images"),
        "--out",
        str(out),
        "--inception-weights",
        str(weights),
        "--image-size",
        str(SIZE),
        "--device",
        "cpu",
    ]
    assert reference.main(argv) == 0
    return out


# ---------------------------------------------------------------------------------------
# weights and extractor
# ---------------------------------------------------------------------------------------


def test_missing_weights_error_names_file_url_and_config_key(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        inception.resolve_weights(tmp_path / "nope.pth")
    message = str(err.value)
    assert inception.WEIGHTS_FILENAME in message and inception.WEIGHTS_URL in message
    assert "inception_weights" in message and "nope.pth" in message
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache: also a clear error
    with pytest.raises(FileNotFoundError, match="torch hub cache"):
        inception.resolve_weights(None)


def test_cli_missing_weights_exits_with_message(tmp_path, capsys):
    argv = ["--samples", "s.npz", "--reference", "r.npz", "--out", str(tmp_path / "m.json")]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([*argv, "--inception-weights", str(tmp_path / "missing.pth")])
    assert exit_info.value.code == 2
    assert inception.WEIGHTS_FILENAME in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_weights_found_in_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / inception.WEIGHTS_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    assert inception.resolve_weights(None) == cached


def test_official_weights_check_uses_sha256_prefix(tmp_path):
    assert provenance.is_official_weights("6726825d" + "0" * 56)
    assert not provenance.is_official_weights("0" * 64)
    other = tmp_path / "x.bin"
    other.write_bytes(b"not inception")
    assert not provenance.is_official_weights(provenance.sha256_file(other))


def test_float64_internal_dtype_is_refused(tmp_path):
    # torch-fidelity would silently run float32 instead; refused before any weights are read.
    with pytest.raises(ValueError, match="float32"):
        inception.InceptionV3ADM(
            "x",
            [inception.POOL],
            feature_extractor_weights_path=str(tmp_path / "unused.pth"),
            feature_extractor_internal_dtype="float64",
        )


def manual_spatial(model: FeatureExtractorInceptionV3, images: np.ndarray) -> torch.Tensor:
    """TF mixed_6/conv[..., :7] by walking torch-fidelity's modules by hand, NHWC-flattened."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32)
    x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    x = (x - 128) / 128
    for name in [
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "MaxPool_1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "MaxPool_2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
    ]:
        x = getattr(model, name)(x)
    x = model.Mixed_6d.branch1x1(x)  # (N, 192, 17, 17)
    return x[:, :7].permute(0, 2, 3, 1).reshape(len(images), -1)  # (N, 2023)


@pytest.mark.slow  # Inception on CPU: ~20-40 s with the session fixtures on a shared 2-core machine
def test_feature_shapes_layout_and_batch_independence(weights, images_a, reference_npz):
    extractor = inception.load_extractor(weights=weights)
    subset = images_a[:4]
    feats = inception.extract_features(ArrayImages(subset), extractor=extractor, batch_size=3)
    assert feats[inception.POOL].shape == (4, 2048)
    assert feats[inception.LOGITS].shape == (4, 1008)
    assert feats[inception.SPATIAL].shape == (4, inception.SPATIAL_DIM) == (4, 2023)
    assert all(v.dtype == np.float32 for v in feats.values())
    assert feats[inception.POOL].std() > 1e-3  # calibrated random weights do not vanish

    with torch.no_grad():
        manual = manual_spatial(extractor, subset[:2]).numpy()
    np.testing.assert_allclose(feats[inception.SPATIAL][:2], manual, rtol=1e-4, atol=1e-4)
    # the check can fail: NCHW flattening of the same map is a different vector
    nchw = manual.reshape(2, 17, 17, 7).transpose(0, 3, 1, 2).reshape(2, -1)
    assert not np.allclose(feats[inception.SPATIAL][:2], nchw, atol=1e-4)

    # batch size 3 here (3 + 1) vs the reference's single batch of N_IMAGES
    cached_pool = open_npz_array(reference_npz, "pool_3")[:4]
    np.testing.assert_allclose(feats[inception.POOL], cached_pool, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# metrics from features (no Inception)
# ---------------------------------------------------------------------------------------


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = (
        rng.normal(size=6).astype(np.float32),
        rng.normal(size=6),
    )  # float32 vs float64 on purpose
    var1, var2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = np.sum((mu1.astype(np.float64) - mu2) ** 2) + np.sum(
        var1 + var2 - 2 * np.sqrt(var1 * var2)
    )
    got = scores.frechet_distance(
        {"mu": mu1, "sigma": np.diag(var1)}, {"mu": mu2, "sigma": np.diag(var2)}
    )
    assert got == pytest.approx(expected, rel=1e-9)


def adm_inception_score(logits: np.ndarray, *, split_size: int = 5000) -> float:
    """ADM compute_inception_score, written independently: softmax, consecutive splits, no
    shuffle, exp(mean KL(p(y|x) || p(y))) per split, mean over splits."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    per_split = []
    for start in range(0, len(p), split_size):
        part = p[start : start + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        per_split.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(per_split))


def test_inception_score_matches_adm_formula_with_remainder_split():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (12000, 10)).astype(np.float32)
    out = scores.inception_score_adm(logits)
    assert out["splits"] == 3  # ADM: 5000, 5000, 2000, no shuffle
    assert out["mean"] == pytest.approx(adm_inception_score(logits), rel=1e-5)
    # the remainder split counts: its score differs from the full splits' mean
    assert adm_inception_score(logits) != pytest.approx(adm_inception_score(logits[:10000]))
    assert scores.inception_score_adm(logits[:4000])["splits"] == 1  # fewer than 5000: one split


def adm_frechet_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """ADM evaluator.py FIDStatistics.frechet_distance, written independently (scipy sqrtm)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real  # principal root; imaginary is round-off
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def adm_frechet_distance(features_1: np.ndarray, features_2: np.ndarray) -> float:
    """ADM's Frechet distance between two feature sets: np.cov + scipy sqrtm."""
    return adm_frechet_from_stats(
        features_1.mean(0),
        np.cov(features_1, rowvar=False),
        features_2.mean(0),
        np.cov(features_2, rowvar=False),
    )


def frechet_low_rank(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """Frechet distance of N <= D features to (mu_ref, sigma_ref), in the symmetric form
    tr sqrt(R^1/2 S R^1/2) with R^1/2 from eigh, keeping only the N - 1 eigenvalues S's rank
    allows: the D - N + 1 exact zeros come out of any dense solver as round-off (~1e-12 of the
    norm) whose square roots would add ~1e-8 relative error (so would scipy's sqrtm here)."""
    x = np.asarray(features, np.float64)
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    w, v = np.linalg.eigh(sigma_ref)
    w = np.where(w > 1e-12 * w.max(), w, 0.0)  # a low-rank reference: round-off -> exact 0
    root = (v * np.sqrt(w)) @ v.T
    eigenvalues = np.linalg.eigvalsh(root @ sigma @ root)[::-1][: len(x) - 1]
    diff = mu - mu_ref
    return float(
        diff @ diff + np.trace(sigma) + np.trace(sigma_ref) - 2 * np.sqrt(eigenvalues).sum()
    )


def correlated_features(n: int, dim: int, *, seed: int, shift: float) -> np.ndarray:
    """float64 (n, dim): Gaussian with a random full (non-diagonal) covariance."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim))
    return rng.normal(size=(n, dim)) @ mixing + shift


def test_frechet_distance_matches_scipy_sqrtm_on_correlated_features():
    generated = correlated_features(400, 12, seed=1, shift=0.3)
    real = correlated_features(300, 12, seed=2, shift=0.0)
    corr = np.corrcoef(generated, rowvar=False)
    assert np.abs(corr - np.eye(12)).max() > 0.3  # the covariance really is far from diagonal
    expected = adm_frechet_distance(generated, real)
    got = scores.frechet_distance(scores.gaussian_stats(generated), scores.gaussian_stats(real))
    assert expected > 1.0  # a non-trivial distance, not 0 == 0
    assert abs(got - expected) <= 1e-6


@pytest.mark.parametrize("n", [2, 16, 64])
def test_frechet_distance_to_features_low_rank_path_equals_the_dense_formula(n):
    """N <= D takes the N x N eigenvalue path; it must give the dense D x D value."""
    sample = correlated_features(n, 64, seed=3, shift=0.2)
    real = correlated_features(500, 64, seed=4, shift=0.0)
    ref = scores.gaussian_stats(real)
    stats = scores.gaussian_stats(sample)
    exact = frechet_low_rank(sample, ref["mu"], ref["sigma"])
    got = scores.frechet_distance_to_features(sample, ref)
    assert exact > 1.0
    assert got == pytest.approx(exact, rel=1e-10)
    if n > 2:  # the wiring tests' N <= D formula (2 samples: a 1 x 1 product, nothing to test)
        assert frechet_in_sample_span(sample, ref["mu"], ref["sigma"]) == pytest.approx(
            exact, rel=1e-9
        )
    assert got == pytest.approx(scores.frechet_distance(stats, ref), rel=1e-6)  # torch-fidelity
    if n == 64:  # scipy sqrtm (ADM) agrees as well where sigma_1 sigma_2 is not too singular
        assert got == pytest.approx(adm_frechet_distance(sample, real), rel=1e-6)


def test_frechet_distance_to_features_dense_path_and_errors():
    sample = correlated_features(100, 12, seed=5, shift=0.1)  # N > D: torch-fidelity's path
    real = correlated_features(300, 12, seed=6, shift=0.0)
    ref = {"mu": real.mean(0), "sigma": np.cov(real, rowvar=False)}  # as a reference npz holds
    expected = adm_frechet_from_stats(
        sample.mean(0), np.cov(sample, rowvar=False), ref["mu"], ref["sigma"]
    )
    assert expected > 1.0  # a non-trivial distance
    assert scores.frechet_distance_to_features(sample, ref) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 samples"):
        scores.frechet_distance_to_features(sample[:1], ref)
    with pytest.raises(ValueError, match="differ in dimension"):
        scores.frechet_distance_to_features(sample[:5, :6], ref)


def adm_manifold_precision_recall(generated: np.ndarray, real: np.ndarray, *, k: int):
    """ADM ManifoldEstimator (nhood_sizes=(k,), no clamping), written independently in float64.

    Radius of a point = squared distance to its k-th nearest neighbour in its own set (self
    excluded, i.e. column k of the sorted row that starts with the 0 to itself). Precision =
    share of generated points inside some real ball (<=), recall = share of real points inside
    some generated ball. Also returns the smallest relative gap between a distance and a
    radius, to show that float32 rounding cannot flip a comparison.
    """

    def sq_dists(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # (len(a), len(b))

    radius_real = np.sort(sq_dists(real, real), axis=1)[:, k]  # (N_real,)
    radius_gen = np.sort(sq_dists(generated, generated), axis=1)[:, k]  # (N_gen,)
    gen_to_real = sq_dists(generated, real)  # (N_gen, N_real)
    precision = np.mean((gen_to_real <= radius_real[None, :]).any(axis=1))
    recall = np.mean((gen_to_real.T <= radius_gen[None, :]).any(axis=1))
    gap = min(
        np.min(np.abs(gen_to_real - radius_real[None, :]) / radius_real[None, :]),
        np.min(np.abs(gen_to_real.T - radius_gen[None, :]) / radius_gen[None, :]),
    )
    return float(precision), float(recall), float(gap)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_precision_recall_equal_adm_manifold_estimator(dtype):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(150, 6)).astype(dtype)
    generated = (0.9 * rng.normal(size=(120, 6)) + 0.7).astype(dtype)  # shifted, a bit narrower
    precision, recall, gap = adm_manifold_precision_recall(
        generated.astype(np.float64), real.astype(np.float64), k=3
    )
    assert gap > 1e-4  # well separated: the float32 distances of torch-fidelity decide the same
    assert 0.1 < precision < 0.95 and 0.1 < recall < 0.95  # neither trivially 0 nor 1
    assert scores.precision_recall(generated, real, k=3) == {
        "precision": precision,
        "recall": recall,
    }


def test_precision_recall_orientation():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8)).astype(np.float32)
    collapsed = (0.1 * rng.normal(size=(200, 8))).astype(
        np.float32
    )  # mode collapse near the centre
    pr = scores.precision_recall(collapsed, real)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.3
    assert scores.precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}


def test_npz_members_are_memory_mapped_when_stored(tmp_path):
    images = smooth_images(3, seed=5)
    mapped = open_npz_array(write_npz(tmp_path / "a.npz", arr_0=images), "arr_0")
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, images)
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)
    np.testing.assert_array_equal(open_npz_array(tmp_path / "c.npz", "arr_0"), images)
    dataset = NpzImages(tmp_path / "a.npz")
    assert dataset[1].shape == (3, SIZE, SIZE) and dataset[1].dtype == torch.uint8
    # a worker process reopens the memmap from the path (the array itself is not pickled)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)
    np.testing.assert_array_equal(torch.cat(list(loader)).permute(0, 2, 3, 1).numpy(), images)
    with pytest.raises(ValueError, match="uint8"):
        NpzImages(write_npz(tmp_path / "f.npz", arr_0=images.astype(np.float32)))
    with pytest.raises(ValueError, match="NHWC"):
        NpzImages(write_npz(tmp_path / "n.npz", arr_0=images.transpose(0, 3, 1, 2)))


def kid_poly_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Binkowski et al. 2018) with KID's kernel k(a, b) = (a.b / D + 1)^3,
    for two sets of equal size m, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, dim = x.shape
    kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kid_over_subsets(sample, reference, *, subsets: int, subset_size: int, seed: int):
    """Mean and std of kid_poly_unbiased over the random subsets the metrics JSON records:
    one np.random.RandomState(seed); per subset, sample indices then reference indices, each
    without replacement (torch-fidelity's draw order)."""
    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        i = rng.choice(len(sample), subset_size, replace=False)
        j = rng.choice(len(reference), subset_size, replace=False)
        mmds.append(kid_poly_unbiased(sample[i], reference[j]))
    return float(np.mean(mmds)), float(np.std(mmds))


def shuffled_split_inception_score(logits: np.ndarray, *, splits: int, seed: int) -> float:
    """torch-fidelity's default IS (the JSON's is_torch_fidelity): a RandomState(seed)
    permutation, then splits [i N // splits, (i + 1) N // splits)."""
    z = np.asarray(logits, np.float64)[np.random.RandomState(seed).permutation(len(logits))]
    n = len(z)
    chunks = [z[i * n // splits : (i + 1) * n // splits] for i in range(splits)]
    return float(np.mean([adm_inception_score(c, split_size=len(c)) for c in chunks]))


def frechet_in_sample_span(features: np.ndarray, mu_ref, sigma_ref) -> float:
    """ADM's sqrtm formula for N <= D, restricted to where the sample covariance lives: with
    A = centred features / sqrt(N - 1) = U diag(s) V^T (thin SVD, the N - 1 non-zero s),
    S = A^T A = V s^2 V^T and tr sqrt(S R) = tr sqrtm(s^2 V^T R V), a full-rank (N-1)-square
    product (one D x D eigh took ~14 s at D = 2048 on the shared 2-core CPU)."""
    x = np.asarray(features, np.float64)
    mu = x.mean(0)
    a = (x - mu) / np.sqrt(len(x) - 1)
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    keep = s > 1e-10 * s[0]  # centring leaves one exact 0
    s, vt = s[keep], vt[keep]
    covmean = scipy.linalg.sqrtm(np.diag(s**2) @ (vt @ sigma_ref @ vt.T)).real
    diff = mu - mu_ref
    return float(diff @ diff + np.sum(s**2) + np.trace(sigma_ref) - 2 * np.trace(covmean))


def own_frechet(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """ADM's sqrtm formula; in the sample covariance's span when that is not full rank."""
    x = np.asarray(features, np.float64)
    if len(x) > x.shape[1]:
        return adm_frechet_from_stats(x.mean(0), np.cov(x, rowvar=False), mu_ref, sigma_ref)
    return frechet_in_sample_span(x, mu_ref, sigma_ref)


def own_metrics(feats: dict, ref_pool: np.ndarray, ref_npz: Path, protocol: dict) -> dict:
    """Every metric of the JSON from the test's own formulas: sample features `feats`, the
    reference images' pool_3 `ref_pool`, and mu/sigma/mu_s/sigma_s as stored in `ref_npz`."""
    pool = np.asarray(feats[inception.POOL], np.float64)
    ref_pool = np.asarray(ref_pool, np.float64)
    with np.load(ref_npz) as ref:
        fid = own_frechet(pool, ref["mu"], ref["sigma"])
        sfid = own_frechet(feats[inception.SPATIAL], ref["mu_s"], ref["sigma_s"])
    precision, recall, gap = adm_manifold_precision_recall(pool, ref_pool, k=3)
    kid, kid_std = kid_over_subsets(
        pool,
        ref_pool,
        subsets=protocol["kid_subsets"],
        subset_size=protocol["kid_subset_size"],
        seed=protocol["seeds"]["kid_subsets"],
    )
    tf_is = shuffled_split_inception_score(
        feats[inception.LOGITS], splits=10, seed=protocol["seeds"]["is_torch_fidelity_shuffle"]
    )
    return {
        "fid": fid,
        "sfid": sfid,
        "is": adm_inception_score(feats[inception.LOGITS]),
        "is_torch_fidelity": tf_is,
        "precision": precision,
        "recall": recall,
        "kid": kid,
        "kid_std": kid_std,
        "prc_gap": gap,
    }


# Relative agreement required between the JSON and own_metrics: both work in float64 on the
# same float32 features (measured ~1e-14); only KID's kernels are float32 in torch-fidelity.
OWN_FORMULA_RTOL = {"fid": 1e-9, "sfid": 1e-9, "is": 1e-9}


def assert_json_equals_own_metrics(result: dict, own: dict) -> None:
    assert result["protocol"]["k"] == 3 and result["protocol"]["shuffle"] is False
    for key, rtol in OWN_FORMULA_RTOL.items():
        assert result[key] == pytest.approx(own[key], rel=rtol), key
    assert result["is_torch_fidelity"]["mean"] == pytest.approx(own["is_torch_fidelity"], rel=1e-9)
    # float32 distances decide every k-NN comparison as float64 does: exact fractions
    assert own["prc_gap"] > 1e-4
    assert (result["precision"], result["recall"]) == (own["precision"], own["recall"])
    assert own["precision"] - own["recall"] > 0.5  # so a swap of the two cannot pass
    # torch-fidelity's kernel sums are float32 (measured 2e-5 relative at D = 2048): allow 1e-4
    assert result["kid"] == pytest.approx(own["kid"], rel=1e-4), "kid"
    # (where N = N_ref = subset size every subset is the same set: std is round-off only)
    assert abs(result["kid_std"] - own["kid_std"]) <= 1e-4 * abs(own["kid"]), "kid_std"


def collapsed_copies(images: np.ndarray, *, sources: int, copies: int, seed: int) -> np.ndarray:
    """Low diversity: `copies` noisy versions of each of the first `sources` images, so the
    samples sit inside the reference manifold (high precision) but cover little of it."""
    rng = np.random.default_rng(seed)
    picked = np.repeat(images[:sources], copies, axis=0).astype(np.float64)
    return np.clip(picked + rng.normal(0, 6.0, picked.shape), 0, 255).round().astype(np.uint8)


def run_evaluate(tmp_path: Path, *, samples: np.ndarray, reference_npz: Path, weights: Path):
    """`udit evaluate` through its CLI entry point; returns the JSON it wrote, samples path."""
    samples_npz = write_npz(tmp_path / "samples.npz", arr_0=samples)
    out = tmp_path / "metrics.json"
    argv = ["--samples", str(samples_npz), "--reference", str(reference_npz)]
    argv += ["--inception-weights", str(weights), "--out", str(out), "--device", "cpu"]
    assert evaluate.main(argv) == 0
    return json.loads(out.read_text()), samples_npz


FAKE_DIMS = {inception.POOL: 32, inception.LOGITS: 10, inception.SPATIAL: 32}


def fake_extract_features(dataset, *, extractor, batch_size=64, num_workers=0, progress=False):
    """Stand-in for the Inception pass (no CPU cost): a fixed random linear map of the pixels
    per feature. pool_3 and the spatial feature have the same width, so feeding one where the
    other belongs gives a wrong value rather than a shape error."""
    pixels = np.stack([dataset[i].numpy().ravel() for i in range(len(dataset))]) / 255.0
    out = {}
    for seed, (name, dim) in enumerate(FAKE_DIMS.items()):
        proj = np.random.default_rng(seed).normal(size=(pixels.shape[1], dim))
        scale = 3.0 if name == inception.LOGITS else 1.0  # peaked softmax: IS well above 1
        out[name] = (pixels @ proj * scale / np.sqrt(pixels.shape[1])).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------
# reference and evaluate, end to end
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_reference_writes_adm_format(reference_npz, images_a, weights):
    with np.load(reference_npz) as ref:
        assert {"arr_0", "mu", "sigma", "mu_s", "sigma_s"} <= set(ref.files)
        np.testing.assert_array_equal(ref["arr_0"], images_a)  # PNG round trip + no-op crop at SIZE
        assert ref["mu"].shape == (2048,) and ref["sigma"].shape == (2048, 2048)
        assert ref["mu_s"].shape == (2023,) and ref["sigma_s"].shape == (2023, 2023)
        assert ref["sigma"].dtype == np.float64
        assert str(ref["inception_sha256"]) == provenance.sha256_file(weights)
        assert json.loads(str(ref["provenance_json"]))["options"]["num_images"] == N_IMAGES


@pytest.mark.slow
def test_evaluate_shifted_samples(tmp_path, weights, images_a, reference_npz):
    shifted = np.clip(images_a.astype(np.int16) + 90, 0, 255).astype(np.uint8)
    samples = write_npz(tmp_path / "samples.npz", arr_0=shifted, arr_1=np.zeros(N_IMAGES, np.int64))
    out = tmp_path / "metrics.json"
    argv = [
        "--samples",
        str(samples),
        "--reference",
        str(reference_npz),
        "--inception-weights",
        str(weights),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert evaluate.main(argv) == 0
    result = json.loads(out.read_text())
    for key in ("fid", "sfid", "is", "precision", "recall", "kid", "protocol", "provenance"):
        assert key in result
    assert result["uncalibrated"] is True  # random weights are not the official 6726825d file
    assert result["fid"] > 1.0 and result["sfid"] > 1.0
    protocol = result["protocol"]
    assert protocol["N"] == N_IMAGES and protocol["k"] == 3 and protocol["splits"] == 1
    assert protocol["shuffle"] is False and protocol["kid_subset_size"] == N_IMAGES
    assert protocol["reference_pool_3"].startswith("read from")
    prov = result["provenance"]
    assert prov["sha256"]["samples"] == provenance.sha256_file(samples)
    assert prov["sha256"]["reference"] == provenance.sha256_file(reference_npz)
    assert prov["inception_weights"]["sha256"] == provenance.sha256_file(weights)
    assert prov["versions"]["torch_fidelity"] and "time_utc" in prov
    assert not list(tmp_path.glob(".metrics.json.*"))  # atomic write left no temp file


@pytest.mark.slow
def test_evaluate_accepts_official_reference_format(tmp_path, weights, images_a, reference_npz):
    """ADM's VIRTUAL_*.npz holds only arr_0, mu, sigma, mu_s, sigma_s: features are recomputed."""
    with np.load(reference_npz) as ref:
        official = write_npz(
            tmp_path / "VIRTUAL_ref.npz", **{k: ref[k] for k in reference.ADM_REFERENCE_KEYS}
        )
    samples = write_npz(tmp_path / "samples.npz", arr_0=images_a)
    result = evaluate.evaluate(
        samples=samples, reference=official, weights=weights, device=torch.device("cpu")
    )
    assert result["protocol"]["reference_pool_3"] == "computed from reference arr_0"
    trace = np.trace(open_npz_array(official, "sigma"))
    assert abs(result["fid"]) < 1e-4 * trace  # same images: ~0 up to eigenvalue round-off
    assert abs(result["sfid"]) < 1e-4 * np.trace(open_npz_array(official, "sigma_s"))
    assert result["precision"] == 1.0 and result["recall"] == 1.0


METRICS_VARIES = {  # machine, time, checkout and file-bytes dependent (npz zip headers hold dates)
    "timing.*",
    "provenance.versions.*",
    "provenance.device",
    "provenance.sha256.*",
    "provenance.git_commit",
    "provenance.time_utc",
}


def test_evaluate_wiring_against_own_formulas_fast(tmp_path, monkeypatch, capsys):
    """Which feature feeds which metric, in which order: `udit evaluate` on stand-in features
    (a linear map instead of Inception), every JSON value against the test's own formulas."""
    monkeypatch.setattr(inception, "load_extractor", lambda **kwargs: "stand-in extractor")
    monkeypatch.setattr(inception, "extract_features", fake_extract_features)
    weights = tmp_path / "fake.pth"
    weights.write_bytes(b"not an inception")
    ref_images = np.random.default_rng(0).integers(0, 256, (60, 6, 6, 3), dtype=np.uint8)
    ref_npz = write_npz(
        tmp_path / "ref.npz",
        **reference.build_reference(images=ref_images, weights=weights, device="cpu"),
    )
    samples = collapsed_copies(ref_images, sources=4, copies=10, seed=1)  # N = 40 < N_ref = 60
    capsys.readouterr()
    result, samples_npz = run_evaluate(
        tmp_path, samples=samples, reference_npz=ref_npz, weights=weights
    )
    assert capsys.readouterr().out.splitlines()[-1] == (  # the one line a user reads
        f"FID {result['fid']:.4f}  sFID {result['sfid']:.4f}  IS {result['is']:.3f}  "
        f"precision {result['precision']:.4f}  recall {result['recall']:.4f}  "
        f"KID {result['kid']:.6f}  [UNCALIBRATED: not the official Inception weights]"
    )

    protocol = result["protocol"]
    assert (protocol["N"], protocol["N_reference"], protocol["kid_subset_size"]) == (40, 60, 40)
    assert protocol["kid_subsets"] >= 10  # subsets of the reference really are random draws
    feats = inception.extract_features(NpzImages(samples_npz), extractor=None)
    ref_pool = inception.extract_features(ArrayImages(ref_images), extractor=None)[inception.POOL]
    own = own_metrics(feats, ref_pool, ref_npz, protocol)
    assert own["fid"] > 1.0 and own["sfid"] > 1.0 and own["is"] > 1.05 and own["kid"] > 0.01
    assert_json_equals_own_metrics(result, own)

    # each wiring mistake would change a value by far more than the tolerances above
    pool = feats[inception.POOL].astype(np.float64)
    assert abs(adm_inception_score(pool) / own["is"] - 1) > 0.05  # IS from pool_3
    with np.load(ref_npz) as ref:
        sfid_on_pool = own_frechet(pool, ref["mu_s"], ref["sigma_s"])
    assert abs(sfid_on_pool / own["sfid"] - 1) > 0.05
    kid_swapped, _ = kid_over_subsets(
        ref_pool.astype(np.float64),
        pool,
        subsets=protocol["kid_subsets"],
        subset_size=protocol["kid_subset_size"],
        seed=protocol["seeds"]["kid_subsets"],
    )
    assert abs(kid_swapped / own["kid"] - 1) > 1e-2  # reference and samples swapped

    # every key and every fixed text of the record (protocol, provenance), as a person read it
    check_printed(record_text(result, varies=METRICS_VARIES), "records/metrics-standin.json")


def test_evaluate_refuses_to_replace_a_file_that_is_not_its_result(tmp_path, capsys):
    """--out naming some other file (here not JSON at all): refused by its flag, the file kept,
    before any input is read past its hash."""
    files = {name: tmp_path / name for name in ("s.npz", "ref.npz", "w.pth")}
    for path in files.values():
        path.write_bytes(b"x")
    out = tmp_path / "notes.json"
    out.write_text("my notes, not metrics")
    argv = ["--samples", str(files["s.npz"]), "--reference", str(files["ref.npz"])]
    argv += ["--inception-weights", str(files["w.pth"]), "--out", str(out), "--device", "cpu"]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--out {out} exists and is not a result of this command" in err
    assert out.read_text() == "my notes, not metrics"


@pytest.mark.slow  # Inception on CPU: session fixtures + two passes over 12 images
def test_evaluate_metrics_equal_own_formulas_on_inception_features(
    tmp_path, weights, images_a, reference_npz
):
    """The same check through the real extractor (random-weight Inception), N = 10 <= D.
    N < N_ref = 12, so KID's reference subsets are random draws and swapping the two sets
    changes the value."""
    samples = collapsed_copies(images_a, sources=2, copies=5, seed=7)
    result, samples_npz = run_evaluate(
        tmp_path, samples=samples, reference_npz=reference_npz, weights=weights
    )
    extractor = inception.load_extractor(weights=weights)
    feats = inception.extract_features(NpzImages(samples_npz), extractor=extractor)
    # the reference's pool_3 as `udit build-reference` stored it (same extractor; equal to a
    # fresh pass, see test_feature_shapes_layout_and_batch_independence): one pass less
    ref_pool = open_npz_array(reference_npz, "pool_3")
    assert result["protocol"]["kid_subset_size"] == 10
    own = own_metrics(feats, ref_pool, reference_npz, result["protocol"])
    assert own["fid"] > 1.0 and own["sfid"] > 1.0 and own["is"] > 1.0 + 1e-3
    assert_json_equals_own_metrics(result, own)


# ---------------------------------------------------------------- found by mutation testing
def _gaussian_features(n, dim, seed):
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_frechet_refuses_statistics_of_other_dimensions_naming_both(capsys):
    a = {"mu": np.zeros(3), "sigma": np.eye(3)}
    with pytest.raises(BadValueError, match=r"mu \(3,\) vs \(3,\), sigma \(3, 3\) vs \(4, 4\)"):
        scores.frechet_distance(a, {"mu": np.zeros(3), "sigma": np.eye(4)})
    with pytest.raises(
        BadValueError, match=r"features have 3, reference mu \(3,\), sigma \(4, 4\)"
    ):
        scores.frechet_distance_to_features(
            _gaussian_features(2, 3, 0), {"mu": np.zeros(3), "sigma": np.eye(4)}
        )
    scores.frechet_distance(a, {"mu": np.ones(3), "sigma": np.eye(3)})
    assert capsys.readouterr() == ("", "")  # torch-fidelity's verbose output stays off


def test_small_sample_frechet_is_float64_and_safe_for_singular_references():
    """float32 features are scored in float64 (as torch-fidelity's path); a rank-1 reference
    covariance, whose N x N eigenvalues have round-off below 0, gives torch-fidelity's value,
    not NaN."""
    x = _gaussian_features(6, 10, 1)
    v = np.random.default_rng(2).normal(size=(10, 1))
    ref = {"mu": np.zeros(10), "sigma": v @ v.T}
    fast = scores.frechet_distance_to_features(x, ref)
    assert np.isfinite(fast)
    assert fast == pytest.approx(scores.frechet_distance(scores.gaussian_stats(x), ref), rel=1e-6)
    x32 = x.astype(np.float32)
    assert scores.frechet_distance_to_features(x32, ref) == scores.frechet_distance_to_features(
        x32.astype(np.float64), ref
    )


def test_torch_fidelity_is_defaults_are_recorded_as_used():
    logits = _gaussian_features(50, 10, 3).astype(np.float32)
    got = scores.inception_score_torch_fidelity(logits)
    assert {k: got[k] for k in ("splits", "shuffle", "seed")} == {
        "splits": 10, "shuffle": True, "seed": 2020
    }  # fmt: skip
    assert got["std"] > 0 and got["mean"] > 1


def test_precision_recall_needs_more_than_k_points_and_prints_nothing(capsys):
    few, many = _gaussian_features(3, 4, 4), _gaussian_features(20, 4, 5)
    with pytest.raises(BadValueError, match=r"k=3 needs more than 3 samples .* got 3 and 20"):
        scores.precision_recall(few, many)
    out = scores.precision_recall(_gaussian_features(4, 4, 6), many)
    assert 0 <= out["precision"] <= 1 and capsys.readouterr() == ("", "")


def test_kid_subset_size_is_capped_by_both_sides_and_float32():
    ref = _gaussian_features(40, 6, 7)
    got = scores.kid(_gaussian_features(60, 6, 8), ref, seed=1)
    assert got["subset_size"] == 40  # the smaller side
    big = scores.kid(_gaussian_features(1100, 6, 9), _gaussian_features(1200, 6, 10), seed=1)
    assert big["subset_size"] == 1000  # torch-fidelity's default cap
    as32 = scores.kid(
        _gaussian_features(60, 6, 8).astype(np.float32), ref.astype(np.float32), seed=1
    )
    assert got["mean"] == as32["mean"]  # computed in float32 whatever the input dtype


def test_npz_arrays_are_never_unpickled_and_layouts_load_right(tmp_path):
    """Object arrays are refused (allow_pickle stays off); Fortran-ordered and compressed
    members load by value; a missing key names the keys there are."""
    bad = tmp_path / "obj.npz"
    np.savez(bad, arr_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        open_npz_array(bad, "arr_0")
    fortran = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    path = tmp_path / "f.npz"
    np.savez(path, arr_0=fortran)
    np.testing.assert_array_equal(open_npz_array(path, "arr_0"), fortran)
    packed = tmp_path / "c.npz"
    np.savez_compressed(packed, arr_0=np.arange(5))
    np.testing.assert_array_equal(open_npz_array(packed, "arr_0"), np.arange(5))
    with pytest.raises(BadValueError, match=r"no array 'mu' \(has \['arr_0'\]\)"):
        open_npz_array(packed, "mu")


def test_npz_images_pickle_without_their_pixels(tmp_path):
    """DataLoader workers get the dataset pickled: the path travels, not the opened memmap."""
    import pickle

    path = tmp_path / "s.npz"
    np.savez(path, arr_0=np.zeros((64, 32, 32, 3), np.uint8))
    images = NpzImages(path)
    first = images[0]  # opens the memmap in this process
    copy = pickle.loads(pickle.dumps(images))
    assert len(pickle.dumps(images)) < 4096  # 196 KB of pixels stay behind
    assert torch.equal(copy[0], first)


def test_checkpoint_paths_are_the_documented_layout():
    from udit import paths

    assert paths.checkpoint("results", "u-dit-b", 400000) == (
        "results/u-dit-b/train/checkpoints/ckpt-0400000.pt"
    )
    assert paths.checkpoint("r", "x", "0000008") == "r/x/train/checkpoints/ckpt-0000008.pt"


def test_gaussian_fits_are_float64_whatever_the_feature_dtype():
    """ADM computes mu/sigma in float64; float32 features or float32 stored statistics must give
    the float64 answer (torch-fidelity's own covariance would stay in float32)."""
    x32 = _gaussian_features(50, 6, 11).astype(np.float32)
    got = scores.gaussian_stats(x32)
    same = scores.gaussian_stats(x32.astype(np.float64))
    np.testing.assert_allclose(got["sigma"], same["sigma"], rtol=1e-12)
    ref64 = scores.gaussian_stats(_gaussian_features(50, 6, 12))
    ref32 = {k: v.astype(np.float32) for k, v in ref64.items()}
    as64 = {k: v.astype(np.float64) for k, v in ref32.items()}
    assert scores.frechet_distance(got, ref32) == scores.frechet_distance(got, as64)


def test_npz_images_use_the_first_n_and_refuse_what_the_file_lacks(tmp_path):
    """evaluate's --first reaches NpzImages as `limit`: 1..N images are the first ones,
    0 or more than the file holds is refused naming both counts; an empty batch is refused,
    one image is a batch; the memmap is read-only."""
    path = tmp_path / "s.npz"
    pixels = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    np.savez(path, arr_0=pixels)
    assert len(NpzImages(path)) == 5 and len(NpzImages(path, limit=5)) == 5
    assert len(NpzImages(path, limit=1)) == 1
    three = NpzImages(path, limit=3)
    assert len(three) == 3 and torch.equal(three[2], torch.from_numpy(pixels[2]).permute(2, 0, 1))
    for bad in (0, 6):
        with pytest.raises(BadValueError, match=rf"asked for {bad} images, file holds 5"):
            NpzImages(path, limit=bad)
    assert not open_npz_array(path, "arr_0").flags.writeable
    one = tmp_path / "one.npz"
    np.savez(one, arr_0=pixels[:1])
    assert len(NpzImages(one)) == 1
    empty = tmp_path / "empty.npz"
    np.savez(empty, arr_0=pixels[:0])
    with pytest.raises(BadValueError, match=r"empty.npz: arr_0 holds no images"):
        NpzImages(empty)
    with pytest.raises(BadValueError, match=r"^images: arr_0 must be uint8"):
        ArrayImages(pixels.astype(np.float32))


def test_kid_seed_reaches_the_subsets_and_bad_tags_are_named(capsys):
    from udit import paths

    ref, gen = _gaussian_features(40, 6, 7), _gaussian_features(60, 6, 8)
    assert scores.kid(gen, ref, seed=1)["mean"] != scores.kid(gen, ref, seed=2)["mean"]
    assert capsys.readouterr() == ("", "")  # no torch-fidelity progress bar in the job logs
    with pytest.raises(ValueError, match="not an evaluation tag: '400000-cfg1.5'"):
        paths.parse_eval_tag("400000-cfg1.5")  # six digits


def test_torch_fidelity_picks_the_layers_udit_extracts():
    """Through torch_fidelity.calculate_metrics(feature_extractor=EXTRACTOR_NAME) the default
    layers are the ones `udit evaluate` reads: pool_3 for FID, KID and P/R, logits for IS."""
    from udit.metrics import inception

    layer = inception.InceptionV3ADM.get_default_feature_layer_for_metric
    assert {m: layer(m) for m in ("fid", "kid", "prc", "isc")} == {
        "fid": inception.POOL, "kid": inception.POOL, "prc": inception.POOL,
        "isc": inception.LOGITS,
    }  # fmt: skip
    assert {inception.POOL, inception.LOGITS, inception.SPATIAL} <= set(
        inception.InceptionV3ADM.get_provided_features_list()
    )
