"""Metrics: torch-fidelity Inception features, ADM protocol, reference and evaluate commands.

Offline: the official Inception weights cannot be downloaded here, so the stand-in of
`udit make-standin-inception` (udit/metrics/standin.py: Kaiming convs, BatchNorm calibrated
on one batch of images) is generated once per session (~96 MB, tmp dir only) and loaded
through the real weights-path code; metrics on its features are meaningful for plumbing,
not for quality.
Every Inception forward costs ~6 GFLOPs on CPU, so the image sets are tiny and every test
that runs Inception is marked slow; the rest check the metric code on synthetic features.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch_fidelity import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

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


def test_inception_score_matches_adm_formula_with_remainder_split():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (12000, 10)).astype(np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    per_split = []
    for start in range(0, len(p), 5000):  # ADM: 5000, 5000, 2000, no shuffle
        part = p[start : start + 5000]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        per_split.append(np.exp(kl.sum(1).mean()))
    out = scores.inception_score_adm(logits)
    assert out["splits"] == 3
    assert out["mean"] == pytest.approx(np.mean(per_split), rel=1e-5)
    assert scores.inception_score_adm(logits[:4000])["splits"] == 1  # fewer than 5000: one split


def adm_frechet_distance(features_1: np.ndarray, features_2: np.ndarray) -> float:
    """ADM evaluator.py FIDStatistics.frechet_distance, written independently: np.cov + scipy sqrtm."""
    mu1, mu2 = features_1.mean(0), features_2.mean(0)
    sigma1, sigma2 = np.cov(features_1, rowvar=False), np.cov(features_2, rowvar=False)
    covmean = scipy.linalg.sqrtm(
        sigma1 @ sigma2
    ).real  # principal root; imaginary part is round-off
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


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
    # Dense reference value in the symmetric form tr sqrt(R^1/2 S R^1/2), keeping only the
    # N - 1 eigenvalues S's rank allows: the D - N + 1 exact zeros come out of any dense solver
    # as round-off (~1e-12 of the norm) whose square roots would add ~1e-8 relative error.
    # (That is also the size of torch-fidelity's error here, hence its looser check below.)
    stats = scores.gaussian_stats(sample)
    w, v = np.linalg.eigh(ref["sigma"])
    root = (v * np.sqrt(w)) @ v.T
    eigenvalues = np.linalg.eigvalsh(root @ stats["sigma"] @ root)[::-1][: n - 1]
    tr_covmean = np.sqrt(eigenvalues).sum()
    diff = stats["mu"] - ref["mu"]
    exact = diff @ diff + np.trace(stats["sigma"]) + np.trace(ref["sigma"]) - 2 * tr_covmean
    got = scores.frechet_distance_to_features(sample, ref)
    assert exact > 1.0
    assert got == pytest.approx(exact, rel=1e-10)
    assert got == pytest.approx(scores.frechet_distance(stats, ref), rel=1e-6)  # torch-fidelity
    if n == 64:  # scipy sqrtm (ADM) agrees as well where sigma_1 sigma_2 is not too singular
        assert got == pytest.approx(adm_frechet_distance(sample, real), rel=1e-6)


def test_frechet_distance_to_features_dense_path_and_errors():
    sample = correlated_features(100, 12, seed=5, shift=0.1)  # N > D: torch-fidelity's path
    ref = scores.gaussian_stats(correlated_features(300, 12, seed=6, shift=0.0))
    assert scores.frechet_distance_to_features(sample, ref) == pytest.approx(
        scores.frechet_distance(scores.gaussian_stats(sample), ref), rel=1e-12
    )
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
