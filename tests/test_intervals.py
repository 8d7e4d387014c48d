"""Bootstrap intervals of every metric and FID / IS at N = inf (udit/metrics/intervals.py)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_metrics import collapsed_copies, fake_extract_features, run_evaluate, write_npz

from udit import metrics
from udit.metrics import evaluate, inception, intervals, reference, scores
from udit.metrics.npz import NpzImages


def gaussian(n: int, *, mean: np.ndarray, std: np.ndarray, seed: int) -> np.ndarray:
    """(n, D) samples of N(mean, diag(std^2))."""
    return np.random.default_rng(seed).normal(size=(n, len(mean))) * std + mean


def population_fid(mean_1, std_1, mean_2, std_2) -> float:
    """Closed-form FID of two diagonal Gaussians: |mu1 - mu2|^2 + sum (s1 - s2)^2."""
    return float(np.sum((mean_1 - mean_2) ** 2) + np.sum((std_1 - std_2) ** 2))


def resampled(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The array a row of counts stands for: sample i repeated counts[i] times."""
    return np.repeat(x, counts.astype(int), axis=0)


# ------------------------------------------------------------------------------ (a) FID


@pytest.mark.parametrize("n, dim", [(40, 64), (300, 32)])  # the N <= D path and the dense one
def test_fast_fid_equals_torch_fidelity(n, dim):
    """Both paths, on the data and on resamples, against torch-fidelity's
    fid_statistics_to_metric (its scipy sqrtm of a D x D product): relative 1e-6, far below
    any bootstrap spread and above its round-off (measured ~1e-8)."""
    rng = np.random.default_rng(n)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    ref = scores.gaussian_stats(rng.normal(size=(500, dim)) @ mix)
    x = rng.normal(size=(n, dim)) @ mix + np.linspace(-1, 1, dim)  # a mean per feature
    counts = np.vstack([np.ones(n), intervals.bootstrap_counts(n, 3, seed=1)])
    fast = intervals.frechet_replicates(x, ref, counts)
    for row, value in zip(counts, fast, strict=True):
        slow = scores.frechet_distance(scores.gaussian_stats(resampled(x, row)), ref)
        assert value == pytest.approx(slow, rel=1e-6)


def test_every_replicate_equals_the_metric_on_the_resampled_array():
    """IS, precision, recall exactly, KID against its all-pairs unbiased MMD^2."""
    rng = np.random.default_rng(3)
    gen, ref = rng.normal(size=(30, 8)) + 0.3, rng.normal(size=(50, 8))
    logits = rng.normal(size=(30, 10)) * 3
    counts = intervals.bootstrap_counts(30, 4, seed=2)
    is_reps = intervals.inception_score_replicates(logits, counts)
    gen32, ref32 = gen.astype(np.float32), ref.astype(np.float32)
    precision = intervals.precision_replicates(gen32, ref32, counts, k=3)
    recall = intervals.RecallResampler(gen32, ref32, k=3)(counts)
    kid = intervals.kid_replicates(gen, ref, counts)
    kernel = intervals._poly_kernel
    for b, row in enumerate(counts):
        x = resampled(gen, row)
        assert is_reps[b] == pytest.approx(
            scores.inception_score_adm(resampled(logits, row))["mean"]
        )
        pr = scores.precision_recall(x, ref)
        assert (precision[b], recall[b]) == pytest.approx((pr["precision"], pr["recall"]))
        kxx, kyy = kernel(x, x), kernel(ref, ref)
        mmd = (kxx.sum() - np.trace(kxx)) / (30 * 29) + (kyy.sum() - np.trace(kyy)) / (50 * 49)
        assert kid[b] == pytest.approx(mmd - 2 * kernel(x, ref).mean(), rel=1e-9)


def test_is_counts_stay_within_adm_splits():
    """Above 5000 samples each split keeps its size, so no split's resample is empty."""
    counts = intervals.bootstrap_counts(5003, 2, seed=0)
    assert (counts[:, :5000].sum(1) == 5000).all() and (counts[:, 5000:].sum(1) == 3).all()


# ------------------------------------------------------------------------------ (b) width


def bootstrap_se(n: int, *, seed: int) -> dict:
    dim = 4
    x = gaussian(n, mean=np.full(dim, 0.5), std=np.ones(dim), seed=seed)
    ref = {"mu": np.zeros(dim), "sigma": np.eye(dim)}
    counts = intervals.bootstrap_counts(n, 200, seed=seed)
    logits = np.random.default_rng(seed).normal(size=(n, 10)) * 2
    return {
        "fid": intervals.summarize(intervals.frechet_replicates(x, ref, counts))["se"],
        "is": intervals.summarize(intervals.inception_score_replicates(logits, counts))["se"],
    }


def test_interval_width_shrinks_like_one_over_sqrt_n():
    """16x the samples -> a 4x narrower interval (measured 3.3-3.9 for FID and IS over seeds
    0-3; accepted 3-5.5). An interval that ignores N (a resample of 200 whatever N, planted in
    bootstrap_counts: measured ratio ~1) fails here."""
    small, large = bootstrap_se(200, seed=0), bootstrap_se(3200, seed=0)
    for metric in ("fid", "is"):
        assert 3.0 < small[metric] / large[metric] < 5.5, metric


# ------------------------------------------------------------------------------ (c) coverage


def test_fid_interval_covers_the_population_fid():
    """Samples of N(mu1, I) against a fixed reference N(0, diag s^2) whose statistics are the
    population's, so the truth is the closed-form FID. D = 2, N = 400: the bias of FID-N
    (~tr sigma / N = 0.005) is small beside its spread (~0.1), so the percentile interval of
    FID at N is also one for the population value. 60 seeded repetitions, B = 200: measured
    coverage 56/60 = 0.93. With 60 draws at p = 0.95 the count's sd is 1.7, so >= 52/60
    (about 3.3 sd below) is required."""
    mean_1, std_1 = np.array([1.0, 0.5]), np.ones(2)
    mean_2, std_2 = np.zeros(2), np.array([1.3, 0.8])
    truth = population_fid(mean_1, std_1, mean_2, std_2)
    ref = {"mu": mean_2, "sigma": np.diag(std_2**2)}
    covered = 0
    for seed in range(60):
        x = gaussian(400, mean=mean_1, std=std_1, seed=seed)
        counts = intervals.bootstrap_counts(400, 200, seed=1000 + seed)
        band = intervals.summarize(intervals.frechet_replicates(x, ref, counts))
        covered += band["low"] <= truth <= band["high"]
    assert covered >= 52, f"covered {covered}/60"


def test_the_interval_is_centred_on_the_value_where_resampling_biases_the_replicates():
    """N = 30 samples in D = 60 (sFID's N << D at toy scale): a resample's duplicates raise the
    Frechet distance, so the percentile interval of the replicates lies wholly above the FID of
    the samples themselves (measured on real reseeding, benchmarks/interval_coverage.py: it held
    the other seeds' mean 10% of the time for sFID). The interval metric_intervals writes is the
    value +- 1.96 se, which holds it."""
    dim = 60
    x = gaussian(30, mean=np.full(dim, 0.2), std=np.ones(dim), seed=3)
    ref = {"mu": np.zeros(dim), "sigma": np.eye(dim)}
    counts = intervals.bootstrap_counts(30, 300, seed=0)
    reps = intervals.frechet_replicates(x, ref, counts)
    value = intervals.frechet_distance(x, ref)
    biased = intervals.summarize(reps)  # no point: the percentile interval
    assert biased["low"] > value  # the bias the percentile interval inherits
    band = intervals.summarize(reps, point=value)
    half = 1.959963984540054 * np.std(reps, ddof=1)
    assert (band["low"], band["high"]) == (pytest.approx(value - half), pytest.approx(value + half))
    assert (band["percentile_low"], band["percentile_high"]) == (biased["low"], biased["high"])


# ------------------------------------------------------------------------------ (d) N = inf


def test_fit_inverse_n_recovers_an_exact_bias_model():
    sizes = [100, 200, 400, 800, 1600]
    values = [3.25 + 40.0 / s for s in sizes]
    assert intervals.fit_inverse_n(sizes, values) == pytest.approx((3.25, 40.0), rel=1e-12)


def test_fid_infinity_removes_the_small_sample_bias():
    """D = 64, N = 4000 from N(0.1, I) against the population N(0, I): truth = 0.64, while
    FID-4000 carries a bias of ~D / N = 0.016 plus the sqrt term's. FID-inf must land within
    0.05 of the truth (measured error 0.011 at seed 0; over data seeds 0-5 at most 0.085,
    while FID-4000 is off by 0.24-0.31) and closer than FID-N by 3x."""
    dim, n = 64, 4000
    truth = population_fid(np.full(dim, 0.1), np.ones(dim), np.zeros(dim), np.ones(dim))
    x = gaussian(n, mean=np.full(dim, 0.1), std=np.ones(dim), seed=0)
    ref = {"mu": np.zeros(dim), "sigma": np.eye(dim)}
    fit = intervals.fid_infinity(x, ref, seed=0)
    assert len(fit["sizes"]) >= 5 and fit["sizes"][0] >= dim + 1 and fit["sizes"][-1] == n
    fid_n = intervals.frechet_distance(x, ref)
    assert abs(fit["value"] - truth) < 0.05
    assert 3 * abs(fit["value"] - truth) < abs(fid_n - truth)
    assert fit["slope"] > 0  # FID falls as N grows


def test_is_infinity_recovers_the_large_sample_score():
    """IS of 10 classes: the truth from one 400k-sample IS (bias ~C / N ~ 1e-5); IS-inf from
    N = 4000 within 1% (measured 0.13%; with 10 classes the bias at 4000 is below the noise,
    so this checks the fit's wiring and stability, not a bias removal)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 10)) * 2

    def logits(n, seed):
        r = np.random.default_rng(seed)
        return centres[r.integers(0, 10, n)] + r.normal(size=(n, 10))

    truth = intervals.inception_score_single(logits(400_000, 1))
    sample = logits(4000, 2)
    fit = intervals.is_infinity(sample, seed=0)
    assert fit["value"] == pytest.approx(truth, rel=0.01)
    assert len(fit["sizes"]) >= 5 and fit["sizes"][-1] == 4000


def test_infinity_needs_enough_samples_and_says_why():
    x = np.zeros((16, 2048))
    fit = intervals.fid_infinity(x, {"mu": np.zeros(2048), "sigma": np.eye(2048)})
    assert fit["value"] is None and "too small" in fit["reason"] and "N = 16" in fit["reason"]


def test_infinity_subsets_start_one_above_the_feature_width():
    """FID's smallest subset is D + 1 (a full-rank covariance), IS's is C + 1 (more samples
    than classes), when N / 10 is smaller."""
    rng = np.random.default_rng(2)
    pool, logits = rng.normal(size=(40, 6)), rng.normal(size=(40, 9))
    fid = intervals.fid_infinity(pool, {"mu": np.zeros(6), "sigma": np.eye(6)})
    assert fid["sizes"][0] == 7 and fid["sizes"][-1] == 40
    assert intervals.is_infinity(logits)["sizes"][0] == 10


# ------------------------------------------------------------------------------ (e) end to end


def test_evaluate_writes_intervals_infinity_and_features_and_reruns_as_a_no_op(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(inception, "load_extractor", lambda **kwargs: "stand-in extractor")
    monkeypatch.setattr(inception, "extract_features", fake_extract_features)
    weights = tmp_path / "fake.pth"
    weights.write_bytes(b"not an inception")
    ref_images = np.random.default_rng(0).integers(0, 256, (60, 6, 6, 3), dtype=np.uint8)
    ref_npz = write_npz(
        tmp_path / "ref.npz",
        **reference.build_reference(images=ref_images, weights=weights, device="cpu"),
    )
    samples = collapsed_copies(ref_images, sources=8, copies=10, seed=1)  # N = 80 > 2 (D + 1)
    result, samples_npz = run_evaluate(
        tmp_path, samples=samples, reference_npz=ref_npz, weights=weights
    )
    out = tmp_path / "metrics.json"
    for metric in ("fid", "sfid", "is", "precision", "recall", "kid"):
        band = result["intervals"][metric]
        # precision is 1 in every resample of these copies (inside the reference): se 0
        assert band["low"] <= band["high"] and band["se"] >= 0, metric
        assert band["se"] > 0 or metric == "precision", metric
        # N = 80 > D = 32: the Frechet ones take the dense path, capped on a CPU
        dense = metric in ("fid", "sfid")
        want = intervals.DENSE_MAX_RESAMPLES if dense else intervals.DEFAULT_RESAMPLES
        assert band["level"] == 0.95 and band["resamples"] == want, metric
        assert band["method"].startswith(intervals.METHOD)
    assert result["intervals"]["fid"]["low"] <= result["fid"] <= result["intervals"]["fid"]["high"]
    for metric in ("fid", "sfid", "is"):  # the normal interval: centred on the file's value
        band = result["intervals"][metric]
        assert (band["low"] + band["high"]) / 2 == pytest.approx(result[metric], rel=1e-6)
        assert band["percentile_low"] <= band["percentile_high"], metric
    assert isinstance(result["fid_infinity"], float) and result["fid_infinity_fit"]["sizes"]
    assert isinstance(result["is_infinity"], float)  # stand-in logits: 10 wide, fits at N = 80

    feats_file = evaluate.features_path(out)
    assert feats_file.name == "metrics.features.npz"
    fresh = fake_extract_features(NpzImages(samples_npz), extractor=None)
    with np.load(feats_file) as saved:
        assert saved["pool_3"].dtype == np.float32 and saved["spatial"].dtype == np.float16
        np.testing.assert_array_equal(saved["pool_3"], fresh[inception.POOL])
        np.testing.assert_array_equal(saved["logits"], fresh[inception.LOGITS])
        np.testing.assert_array_equal(saved["spatial"], fresh[inception.SPATIAL].astype(np.float16))
    assert not list(tmp_path.glob(".metrics.*tmp"))  # atomic writes left no temp file

    stamp = (out.stat().st_mtime_ns, feats_file.stat().st_mtime_ns)
    argv = ["--samples", str(samples_npz), "--reference", str(ref_npz)]
    argv += ["--inception-weights", str(weights), "--out", str(out), "--device", "cpu"]
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out.stat().st_mtime_ns, feats_file.stat().st_mtime_ns) == stamp

    assert evaluate.main([*argv, "--bootstrap", "50"]) == 2  # other options: refused
    assert "bootstrap 1000 -> 50" in capsys.readouterr().err
    feats_file.unlink()  # a lost features file is written again
    assert evaluate.main(argv) == 0
    assert feats_file.is_file() and json.loads(out.read_text())["fid"] == result["fid"]
    assert evaluate.main([*argv, "--bootstrap", "0", "--overwrite"]) == 0
    assert json.loads(out.read_text())["intervals"] == {}


def test_bootstrap_flag_is_range_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--bootstrap", "-1", "--samples", "s", "--reference", "r", "--out", "o"])
    assert exit_info.value.code == 2 and "--bootstrap" in capsys.readouterr().err


def test_interval_coverage_counts_each_kind_against_the_others_mean():
    """benchmarks/interval_coverage.py: seed i's interval is judged against the mean of the
    other seeds' values; the basic interval mirrors the percentile one around the value."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "interval_coverage.py"
    spec = importlib.util.spec_from_file_location("interval_coverage", path)
    ic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ic)
    # values 10, 12, 14: the others' means are 13, 12, 11
    draws = [
        {"fid": 10.0, "intervals": {"fid": {"low": 11.0, "high": 15.0, "se": 2.0, "level": 0.95}}},
        {"fid": 12.0, "intervals": {"fid": {"low": 13.0, "high": 14.0, "se": 0.1, "level": 0.95}}},
        {"fid": 14.0, "intervals": {"fid": {"low": 10.5, "high": 14.5, "se": 1.0, "level": 0.95}}},
    ]
    row = ic.coverage(draws, "fid")
    assert row["coverage_percentile"] == pytest.approx(2 / 3)  # 13 in [11, 15]; 11 in [10.5, ..]
    # normal: 10 +- 3.92 holds 13; 12 +- 0.196 holds 12; 14 +- 1.96 misses 11
    assert row["coverage_normal"] == pytest.approx(2 / 3)
    # basic: [5, 9] misses 13; [10, 11] misses 12; [13.5, 17.5] misses 11
    assert row["coverage_basic"] == 0
    assert row["sd_over_seeds"] == pytest.approx(2.0) and row["mean"] == pytest.approx(12.0)
    # the pooled t interval over 3 sampling seeds: {0, 0, 0} is [0, 0] and misses the rest's 10;
    # each subset holding the 10 is 3.33 +- 4.303 x 5.77 / sqrt 3 and holds the rest's 0
    assert ic.pooled_coverage([0.0, 0.0, 0.0, 10.0], 3) == pytest.approx(3 / 4)
    assert math.isnan(ic.pooled_coverage([1.0, 2.0, 3.0], 3))  # nothing left to cover


def test_intervals_stay_inside_what_each_metric_can_take():
    """A recall near 0 or a precision near 1 (the smoke run's toy values) +- 1.96 se would leave
    [0, 1]; an IS near 1 would go below exp(0) = 1. The written interval is clipped."""
    reps = np.array([0.0, 0.02, 0.04, 0.0, 0.06])
    recall = intervals.summarize(reps, point=0.01, metric="recall")
    assert recall["low"] == 0.0 and recall["high"] == pytest.approx(
        0.01 + 1.96 * reps.std(ddof=1), rel=1e-3
    )
    precision = intervals.summarize(1 - reps, point=0.99, metric="precision")
    assert precision["high"] == 1.0 and precision["low"] < 0.99
    assert intervals.summarize(1 + reps, point=1.01, metric="is")["low"] == 1.0
    kid = intervals.summarize(reps - 0.03, point=-0.01, metric="kid")  # unbiased: may be < 0
    assert kid["low"] < -0.01 - 0.05


def test_a_rerun_compares_every_recorded_input_old_files_included(tmp_path, monkeypatch, capsys):
    """`udit evaluate` over an existing metrics file: a no-op for the same --first, refused
    naming the change for another; a file of an older format (num_samples_requested, no
    interval options, no hashes) is compared field by field, never a traceback."""
    argv = _scored(tmp_path, monkeypatch, ref_weights=b"A", weights=b"A", calls=[])
    out = tmp_path / "m.json"
    assert evaluate.main([*argv, "--first", "30"]) == 0
    assert json.loads(out.read_text())["protocol"]["N"] == 30
    capsys.readouterr()
    assert evaluate.main([*argv, "--first", "30"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert evaluate.main([*argv, "--first", "20"]) == 2
    assert "(first 30 -> 20)" in capsys.readouterr().err
    assert evaluate.main([*argv, "--first", "30", "--seed", "3"]) == 2
    assert "(seed 0 -> 3)" in capsys.readouterr().err

    data = json.loads(out.read_text())
    data["num_samples_requested"] = data.pop("first_requested")  # the older spelling
    del data["uncertainty_options"]  # from before the intervals
    out.write_text(json.dumps(data))
    assert evaluate.main([*argv, "--first", "30"]) == 2
    assert "(bootstrap None -> 20, seed None -> 0)" in capsys.readouterr().err
    del data["provenance"]["sha256"], data["provenance"]["inception_weights"]
    out.write_text(json.dumps(data))
    assert evaluate.main([*argv, "--first", "30"]) == 2
    err = capsys.readouterr().err
    assert "samples None -> '" in err and "inception_weights None -> '" in err


def _scored(tmp_path, monkeypatch, *, ref_weights: bytes, weights: bytes, calls: list):
    """Reference built with Inception file `ref_weights`, samples scored with `weights`; the
    stand-in extractor is named after its weights file and every pass is recorded."""
    monkeypatch.setattr(inception, "load_extractor", lambda weights, **kw: Path(weights).name)

    def recording(dataset, *, extractor, batch_size=64, num_workers=0, progress=False):
        calls.append((len(dataset), extractor, batch_size, num_workers))
        return fake_extract_features(dataset, extractor=extractor)

    monkeypatch.setattr(inception, "extract_features", recording)
    (tmp_path / "a.pth").write_bytes(ref_weights)
    (tmp_path / "b.pth").write_bytes(weights)
    images = np.random.default_rng(0).integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    ref_npz = write_npz(
        tmp_path / "ref.npz",
        **reference.build_reference(images=images, weights=tmp_path / "a.pth", device="cpu"),
    )
    calls.clear()
    samples_npz = write_npz(tmp_path / "samples.npz", arr_0=images[:30])
    argv = ["--samples", str(samples_npz), "--reference", str(ref_npz), "--bootstrap", "20"]
    argv += ["--inception-weights", str(tmp_path / "b.pth"), "--out", str(tmp_path / "m.json")]
    return argv + ["--batch-size", "7", "--num-workers", "0", "--device", "cpu"]


@pytest.mark.parametrize("same", [True, False])
def test_reference_features_are_reused_only_from_the_same_inception(tmp_path, monkeypatch, same):
    """The reference npz's pool_3 rows are features of the weights it was built with: reused
    when the scoring weights are those, else computed again from its images with the scoring
    extractor (and the metrics file says which)."""
    calls = []
    argv = _scored(tmp_path, monkeypatch, ref_weights=b"A", weights=b"A" if same else b"B",
                   calls=calls)  # fmt: skip
    assert evaluate.main(argv) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    if same:
        assert calls == [(30, "b.pth", 7, 0)]  # the samples only
        assert result["protocol"]["reference_pool_3"] == "read from reference npz (same weights)"
    else:
        assert calls == [(30, "b.pth", 7, 0), (40, "b.pth", 7, 0)]
        assert result["protocol"]["reference_pool_3"] == "computed from reference arr_0"


def test_a_reference_whose_features_miss_rows_is_refused(tmp_path, monkeypatch, capsys):
    argv = _scored(tmp_path, monkeypatch, ref_weights=b"A", weights=b"A", calls=[])
    ref_npz = tmp_path / "ref.npz"
    with np.load(ref_npz) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["pool_3"] = arrays["pool_3"][:-1]
    write_npz(ref_npz, **arrays)
    assert evaluate.main(argv) == 2
    assert "reference pool_3 has 39 rows for 40 images" in capsys.readouterr().err


def test_the_metrics_name_the_samples_udit_sample_recorded(tmp_path, monkeypatch):
    """SAMPLES.npz.json (written by `udit sample`) is copied into the metrics file: its N and
    every config field; a missing or unreadable one gives None, never a failure."""
    argv = _scored(tmp_path, monkeypatch, ref_weights=b"A", weights=b"A", calls=[])
    summary = tmp_path / "samples.npz.json"
    summary.write_text(json.dumps({"num_samples": 30, "config": {"cfg_scale": 1.5, "seed": 3}}))
    out = tmp_path / "m.json"
    assert evaluate.main(argv) == 0
    assert json.loads(out.read_text())["samples"] == {
        "num_samples": 30,
        "cfg_scale": 1.5,
        "seed": 3,
    }
    for text in ("{torn", None):
        summary.unlink(missing_ok=True)
        if text:
            summary.write_text(text)
        out.unlink()  # the same inputs again would be a no-op
        assert evaluate.main(argv) == 0
        assert json.loads(out.read_text())["samples"] is None


def test_intervals_and_infinity_fits_are_a_function_of_the_seed(tmp_path, monkeypatch):
    """--seed fixes every resample: the same seed gives the same intervals and N = inf fits,
    another seed other ones; --bootstrap 1 still records its one-resample interval."""
    argv = _scored(tmp_path, monkeypatch, ref_weights=b"A", weights=b"A", calls=[])
    out = tmp_path / "m.json"

    def uncertainty(*extra) -> dict:
        out.unlink(missing_ok=True)
        assert evaluate.main([*argv, *extra]) == 0
        data = json.loads(out.read_text())
        return {k: data[k] for k in ("intervals", "fid_infinity_fit", "is_infinity_fit")}

    first = uncertainty("--seed", "5")
    assert uncertainty("--seed", "5") == first
    other = uncertainty("--seed", "6")
    for key in first:
        assert other[key] != first[key], key
    one = uncertainty("--bootstrap", "1")["intervals"]
    assert one["fid"]["resamples"] == 1 and one["fid"]["se"] is None


def test_the_protocol_record_holds_every_setting_under_its_key(tmp_path, monkeypatch):
    """The metrics file's `protocol` (read by the report and by anyone comparing runs): every
    key present, with the numbers of this run."""
    argv = _scored(tmp_path, monkeypatch, ref_weights=b"A", weights=b"A", calls=[])
    assert evaluate.main(argv) == 0
    protocol = json.loads((tmp_path / "m.json").read_text())["protocol"]
    assert set(protocol) == {
        "N", "N_reference", "sample_resolution", "k", "splits", "split_size", "shuffle",
        "seeds", "kid_subsets", "kid_subset_size", "resize", "features",
        "reference_statistics", "reference_pool_3", "prc_distance_dtype", "batch_size",
    }  # fmt: skip
    assert (protocol["N"], protocol["N_reference"], protocol["batch_size"]) == (30, 40, 7)
    assert protocol["sample_resolution"] == [6, 6] and protocol["k"] == scores.PRC_K
    assert protocol["splits"] == math.ceil(30 / protocol["split_size"]) and not protocol["shuffle"]
    assert set(protocol["features"]) == {"fid", "sfid", "is", "precision_recall", "kid"}
    assert "TF1-compatible" in protocol["resize"]


def _intervals(n: int, d: int = 8, **kw) -> dict:
    rng = np.random.default_rng(0)
    pool, ref = rng.normal(size=(n, d)), rng.normal(size=(60, d)) + 0.5
    stats, spatial_stats = scores.gaussian_stats(ref), scores.gaussian_stats(ref[::-1] * 2)
    reference = {"mu": stats["mu"], "sigma": stats["sigma"]}
    reference |= {"mu_s": spatial_stats["mu"], "sigma_s": spatial_stats["sigma"]}
    return intervals.metric_intervals(
        pool=pool, logits=rng.normal(size=(n, 10)) * 3, spatial=rng.normal(size=(n, d)),
        reference=reference, ref_pool=ref, **kw,
    )  # fmt: skip


def test_metric_intervals_take_the_level_clip_to_the_range_and_say_why_not():
    """What `udit evaluate` writes per metric: the level asked for (narrower at 80%), each
    interval inside what its metric can take (N = 3: recall's normal interval passes 1), the
    KID method named, and a metric that cannot be resampled recorded with its reason."""
    wide, narrow = _intervals(3, resamples=50), _intervals(3, resamples=50, level=0.8)
    for name, band in wide.items():
        low, high = metrics.RANGES[name]
        assert (band["level"], narrow[name]["level"]) == (0.95, 0.8), name
        assert narrow[name]["high"] - narrow[name]["low"] <= band["high"] - band["low"], name
        assert (low is None or band["low"] >= low) and (high is None or band["high"] <= high)
    assert wide["recall"]["high"] == 1.0  # clipped: value + 1.96 se is above 1
    assert (
        wide["kid"]["method"]
        == intervals.METHOD + "; all-pairs unbiased MMD^2, not the subset mean"
    )
    assert {wide[m]["method"] for m in ("fid", "sfid", "is", "precision", "recall")} == {
        intervals.METHOD
    }


def test_a_metric_too_big_to_resample_is_recorded_with_its_reason(monkeypatch):
    monkeypatch.setattr(intervals, "PRC_MAX_PAIRS", 10)
    out = _intervals(40, resamples=20)
    assert out["recall"] == {
        "reason": "recall bootstrap needs over 10 candidate pairs",
        "method": intervals.METHOD,
    }
    assert out["fid"]["resamples"] == 20  # the others unaffected


def test_n_equal_to_d_takes_every_resample_on_the_exact_path():
    """N <= D: the Frechet replicates come from N x N Gram matrices (cheap), so all resamples
    are taken; only N > D on a CPU is capped at DENSE_MAX_RESAMPLES."""
    cap = intervals.DENSE_MAX_RESAMPLES
    assert _intervals(8, resamples=cap + 10)["fid"]["resamples"] == cap + 10
    assert _intervals(9, resamples=cap + 10)["fid"]["resamples"] == cap


@pytest.mark.parametrize("block", [7, intervals.BLOCK])  # many blocks, and the default's one
def test_recall_and_precision_replicates_hold_across_blocks(monkeypatch, block):
    """The k-NN and kernel sums run in blocks of rows (50K samples do not fit one matrix): with
    blocks of 7 every replicate still equals the metric of its resampled array, and the
    candidate-pair cap counts the pairs of every block."""
    monkeypatch.setattr(intervals, "BLOCK", block)
    rng = np.random.default_rng(5)
    gen = (rng.normal(size=(12, 4)) + 0.3).astype(np.float32)
    ref = rng.normal(size=(23, 4)).astype(np.float32)
    counts = np.vstack([np.ones(12), intervals.bootstrap_counts(12, 6, seed=4)])
    recall = intervals.RecallResampler(gen, ref, k=3)
    precision = intervals.precision_replicates(gen, ref, counts, k=3)
    for b, row in enumerate(counts):
        pr = scores.precision_recall(resampled(gen, row), ref)
        assert (precision[b], recall(counts)[b]) == pytest.approx((pr["precision"], pr["recall"]))
    kid = intervals.kid_replicates(gen, ref, counts)
    for b, row in enumerate(counts):  # torch-fidelity's kernel, all-pairs unbiased MMD^2
        x, y = resampled(gen, row).astype(np.float64), ref.astype(np.float64)
        kxx, kyy, kxy = ((a @ c.T / 4 + 1) ** 3 for a, c in ((x, x), (y, y), (x, y)))
        mmd = (kxx.sum() - np.trace(kxx)) / (12 * 11) + (kyy.sum() - np.trace(kyy)) / (23 * 22)
        assert kid[b] == pytest.approx(mmd - 2 * kxy.mean(), rel=1e-6)
    pairs = len(recall.pair_ref)
    monkeypatch.setattr(intervals, "PRC_MAX_PAIRS", pairs)
    intervals.RecallResampler(gen, ref, k=3)  # exactly at the cap: kept
    monkeypatch.setattr(intervals, "PRC_MAX_PAIRS", pairs - 1)
    with pytest.raises(MemoryError, match=f"needs over {pairs - 1} candidate pairs"):
        intervals.RecallResampler(gen, ref, k=3)


def test_a_non_square_mismatch_names_height_and_width_in_order(tmp_path):
    """check_same_resolution reads (N, H, W, C) arrays: 32 x 48 samples against a 64 x 80
    reference name each side where it belongs, and the size to build a reference at."""
    samples, ref = np.zeros((2, 32, 48, 3), np.uint8), np.zeros((2, 64, 80, 3), np.uint8)
    with pytest.raises(evaluate.ResolutionMismatchError) as err:
        evaluate.check_same_resolution(samples, ref, samples=Path("s.npz"), reference=Path("r"))
    assert str(err.value) == (
        "samples s.npz are 32x48 px but the reference r is 64x80 px; sample at the reference's "
        "resolution or build a reference at 32 px (udit build-reference --image-size 32)"
    )


def test_infinity_subset_sizes_run_from_a_tenth_of_n_to_n():
    """Chong & Forsyth's 15 sizes from N/10 (rounded up, at least min_size) to N, each once; at
    least 2 x the smallest size and 5 distinct sizes, else a reason naming both bounds."""
    assert intervals.subset_sizes(291, min_size=3) == [round(s) for s in np.linspace(30, 291, 15)]
    assert intervals.subset_sizes(100, min_size=50) == [50, 54, 57, 61, 64, 68, 71, 75, 79, 82,
                                                        86, 89, 93, 96, 100]  # fmt: skip
    assert intervals.subset_sizes(8, min_size=4) == [4, 5, 6, 7, 8]  # N = 2 x low, 5 sizes: kept
    assert intervals.subset_sizes(9, min_size=5) == (
        "N = 9 is too small for the 1/N fit: it needs subsets from 5 to at least "
        "2 x 5 = 10 samples (5+ sizes)"
    )
    assert isinstance(intervals.subset_sizes(10, min_size=3, count=4), str)  # 4 sizes < 5


def test_two_replicates_have_a_standard_error_one_has_none():
    """summarize: the sample sd (ddof 1) of the finite replicates; one replicate gives none."""
    assert intervals.summarize(np.array([1.0, 3.0, np.nan]))["se"] == pytest.approx(math.sqrt(2))
    assert intervals.summarize(np.array([2.0, np.inf]))["se"] is None


def test_a_sample_exactly_at_a_radius_counts_as_inside(monkeypatch):
    """Points on an integer grid tie exactly with k-NN radii (sqrt of an integer, rounded the
    same on every path): a sample at exactly a reference radius is inside the manifold
    (torch-fidelity's and ADM's <=), for precision and for recall, in every replicate; and
    with one neighbour kept per sample, a reference point at exactly that neighbour's distance
    is still a recall candidate."""
    ref = np.array([(i, j) for i in range(5) for j in range(5)], np.float32)
    gen = np.array([(i, j) for i in range(3, 9) for j in range(0, 5, 2)], np.float32)
    counts = np.vstack([np.ones(len(gen)), intervals.bootstrap_counts(len(gen), 40, seed=6)])
    precision = intervals.precision_replicates(gen, ref, counts, k=1)
    recall = intervals.RecallResampler(gen, ref, k=1)(counts)
    assert precision[0] == 9 / 18  # x = 3, 4 inside; x = 5 at distance 1 = radius; x > 5 out
    for b, row in enumerate(counts):
        pr = scores.precision_recall(resampled(gen, row), ref, k=1)
        assert (precision[b], recall[b]) == pytest.approx((pr["precision"], pr["recall"]))
    monkeypatch.setattr(intervals, "PRC_CANDIDATES", 1)  # the k-th neighbour is the last kept
    identity = intervals.RecallResampler(gen, ref, k=1)(counts[:1])[0]
    # inside: every reference point with x >= 3, and x = 2 at even y (distance 1 to x = 3)
    assert identity == scores.precision_recall(gen, ref, k=1)["recall"] == 13 / 25


def test_the_kid_of_the_samples_is_torch_fidelitys():
    """Replicate 0 (every sample once) against torch-fidelity's KID where its subsets are the
    whole sets (equal sizes: every subset a permutation of all), its own polynomial kernel."""
    rng = np.random.default_rng(8)
    gen, ref = rng.normal(size=(30, 6)) + 0.4, rng.normal(size=(30, 6))
    ours = intervals.kid_replicates(gen, ref, np.ones((1, 30)))[0]
    assert ours == pytest.approx(scores.kid(gen, ref)["mean"], rel=1e-4)


def test_a_sample_whose_candidates_fall_short_of_k_takes_its_farthest_one(monkeypatch):
    """Only PRC_CANDIDATES neighbours are kept per sample: when a resample leaves fewer than
    k of them, the radius is the farthest candidate's (improbable at 20 candidates and k = 3),
    whatever the other samples reach. Points on a line, 2 candidates, k = 3."""
    monkeypatch.setattr(intervals, "PRC_CANDIDATES", 2)
    gen = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]], np.float32)
    resampler = intervals.RecallResampler(gen, gen, k=3)
    w = np.array([3.0, 1.0, 1.0, 1.0, 1.0])  # sample 0: its 2 extra copies leave 1 to find
    radii = resampler.radii(w)
    assert radii[0] == 1.0  # reached at its nearest candidate
    assert radii[4] == 8.0  # candidates 3 (d 7) and 2 (d 8) hold 2 < 3: the farthest


def test_recall_of_a_resample_with_k_plus_1_copies_of_a_sample():
    """A sample drawn k + 1 times has its k nearest neighbours at distance 0 (its copies): its
    ball holds only points on it, such as a reference image it reproduced exactly. Checked
    against torch-fidelity's recall on the resampled array."""
    rng = np.random.default_rng(2)
    gen = np.vstack([[10.0, 10.0], rng.normal(size=(5, 2))]).astype(np.float32)
    ref = np.vstack([[10.5, 10.0], [10.0, 10.0], rng.normal(size=(6, 2))]).astype(np.float32)
    w = np.array([[4, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [3, 2, 1, 1, 1, 1]], np.float64)
    got = intervals.RecallResampler(gen, ref, k=3)(w)
    for b, row in enumerate(w):
        want = scores.precision_recall(resampled(gen, row), ref)["recall"]
        assert got[b] == pytest.approx(want), b


def test_is_replicates_over_several_adm_splits(monkeypatch):
    """At 50K samples the ADM IS averages 10 splits of 5000; here splits of 10 over N = 30:
    each replicate equals the ADM IS of its resampled array split the same way."""
    monkeypatch.setattr(scores, "IS_SPLIT_SIZE", 10)
    logits = np.random.default_rng(4).normal(size=(30, 7)) * 2
    counts = np.vstack([np.ones(30), intervals.bootstrap_counts(30, 5, seed=6)])
    assert all(row[s : s + 10].sum() == 10 for row in counts for s in (0, 10, 20))
    got = intervals.inception_score_replicates(logits, counts)
    for b, row in enumerate(counts):
        want = scores.inception_score_adm(resampled(logits, row), split_size=10)
        assert want["splits"] == 3 and got[b] == pytest.approx(want["mean"], rel=1e-9)


def test_the_stand_in_is_uncalibrated_and_the_official_weights_are_not(tmp_path, monkeypatch):
    """`uncalibrated` (every toy table's warning) is true unless the Inception file is the
    official one (its sha256 prefix)."""
    from udit.metrics import provenance

    argv = _scored(tmp_path, monkeypatch, ref_weights=b"A", weights=b"A", calls=[])
    out = tmp_path / "m.json"
    assert evaluate.main(argv) == 0
    assert json.loads(out.read_text())["uncalibrated"] is True
    official = provenance.sha256_file(tmp_path / "b.pth")[:8]
    monkeypatch.setattr(provenance, "OFFICIAL_WEIGHTS_SHA256_PREFIX", official)
    out.unlink()
    assert evaluate.main(argv) == 0
    assert json.loads(out.read_text())["uncalibrated"] is False


def test_single_split_inception_score_is_the_exp_mean_kl_to_the_class_marginal():
    """IS = exp(mean_i KL(p(y|x_i) || p(y))), p(y) the mean over samples of each class's
    probability, written out with numpy on a small case; and two textbook values: identical
    predictions give 1, one-hot predictions spread evenly over C classes give C."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(50, 7)) * 2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    marginal = p.mean(0)
    want = math.exp(np.mean([np.sum(row * (np.log(row) - np.log(marginal))) for row in p]))
    assert intervals.inception_score_single(z) == pytest.approx(want, rel=1e-9)
    assert intervals.inception_score_single(np.tile(z[:1], (20, 1))) == pytest.approx(1.0)
    one_hot = np.where(np.eye(5, dtype=bool), 60.0, -60.0)  # 5 classes, one confident each
    assert intervals.inception_score_single(np.tile(one_hot, (3, 1))) == pytest.approx(5.0)
