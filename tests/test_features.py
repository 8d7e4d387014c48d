"""udit import-features: fast-DiT feature folders -> the latent cache the trainer reads."""

import numpy as np
import pytest
import torch

from udit.data import features
from udit.data.latents import LatentDataset, sample_latent
from udit.errors import BadValueError

SIDE = 4  # image_size 32 -> 4x4 latents


def write_features(root, n, *, ranks=2, side=SIDE, seed=0):
    """n + 1 files named '{i}_{rank}.npy' (the last one: the sampler's padding duplicate)."""
    rng = np.random.default_rng(seed)
    (root / "imagenet32_features").mkdir(parents=True)
    (root / "imagenet32_labels").mkdir()
    written = {}
    for k in range(n + 1):
        name = f"{k // ranks}_{k % ranks}.npy"
        feature = rng.standard_normal((1, 4, side, side)).astype(np.float32)
        label = np.array([k % 3], dtype=np.int64)
        np.save(root / "imagenet32_features" / name, feature)
        np.save(root / "imagenet32_labels" / name, label)
        written[name] = (feature[0], int(label[0]))
    return written


def test_imported_cache_yields_the_official_latents(tmp_path):
    written = write_features(tmp_path / "feat", 11)
    out = tmp_path / "latents"
    manifest = features.import_features(
        features=str(tmp_path / "feat"), out=str(out), image_size=32, shard_size=4
    )
    assert manifest["num_images"] == 11 and len(manifest["shards"]) == 3
    order = sorted(written, key=features._official_key)[:-1]  # the last one is dropped
    assert order[:3] == ["0_0.npy", "0_1.npy", "1_0.npy"] and "5_1.npy" not in order
    data = LatentDataset(str(out))
    assert len(data) == 22  # two flip slots per image
    for i, name in enumerate(order):
        feature, label = written[name]
        for flip in (0, 1):
            moments, got_label = data[2 * i + flip]
            noise = torch.randn(4, SIDE, SIDE)  # any draw gives the stored sample
            latent = sample_latent(moments, noise)
            torch.testing.assert_close(latent, torch.from_numpy(feature), rtol=1e-6, atol=1e-6)
            assert got_label == label


def test_bad_feature_folders(tmp_path):
    write_features(tmp_path / "feat", 3)
    (tmp_path / "feat" / "imagenet32_labels" / "0_0.npy").unlink()
    with pytest.raises(BadValueError, match="pair by name"):
        features.feature_files(tmp_path / "feat")
    write_features(tmp_path / "wide", 3, side=8)
    with pytest.raises(BadValueError, match="expected finite \\(1, 4, 4, 4\\)"):
        features.import_features(
            features=str(tmp_path / "wide"), out=str(tmp_path / "o"), image_size=32
        )
    with pytest.raises(BadValueError, match="_features and a \\*_labels"):
        features.feature_files(tmp_path)


def test_rerun_keeps_finished_shards_and_rewrites_a_corrupt_one(tmp_path):
    write_features(tmp_path / "feat", 11)
    out = tmp_path / "latents"
    kw = {"features": str(tmp_path / "feat"), "out": str(out), "image_size": 32, "shard_size": 4}
    first = features.import_features(**kw)
    shard0, shard1 = out / first["shards"][0]["file"], out / first["shards"][1]["file"]
    before = shard0.stat().st_mtime_ns
    shard1.write_bytes(b"torn")  # as if a reader found garbage there
    second = features.import_features(**kw)
    assert shard0.stat().st_mtime_ns == before  # kept, not rewritten
    assert second["shards"] == first["shards"]  # the corrupt one is rewritten byte-identical


def test_dry_run_counts_pairs_and_writes_nothing(tmp_path, capsys):
    write_features(tmp_path / "feat", 11)
    out = tmp_path / "latents"
    argv = ["--features", str(tmp_path / "feat"), "--out", str(out), "--dry-run"]
    assert features.main(argv) == 0
    assert "11 feature/label pairs" in capsys.readouterr().out
    assert not out.exists()


def test_rerun_at_another_image_size_does_not_keep_the_old_shards(tmp_path):
    write_features(tmp_path / "feat", 11)
    kw = {"features": str(tmp_path / "feat"), "out": str(tmp_path / "latents"), "shard_size": 4}
    features.import_features(image_size=32, **kw)
    # the shards hold 4x4 latents: refused before any feature is read, as extract-latents does
    with pytest.raises(BadValueError, match="other settings \\(image_size, moments_shape\\)"):
        features.import_features(image_size=64, **kw)
