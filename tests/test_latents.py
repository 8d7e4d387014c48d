"""VAE loading and the sharded latent cache, on a tiny random-init AutoencoderKL."""

import json
import shutil
import time
from types import SimpleNamespace

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch.utils.data import DataLoader

from udit.data import latents as latents_module
from udit.data.imagenet import build_image_dataset
from udit.data.latents import CorruptCacheError, LatentDataset, sample_latent, sha256_file
from udit.data.toy import generate_toy_data
from udit.data.vae import (
    VaeNotAvailableError,
    load_vae,
    save_tiny_vae,
    tiny_vae_config,
    vae_fingerprint,
)
from udit.training.data import build_train_data
from udit.training.loop import TrainOptions

SIZE, CLASSES, PER_CLASS, SHARD = 32, 3, 5, 4  # 15 images -> shards of 4, 4, 4, 3
# The SD-VAE latent scale as a literal (DiT train.py `.mul_(0.18215)`), not udit's constant:
# a wrong constant must fail here instead of appearing on both sides.
SD_VAE_SCALE = 0.18215


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The CI machine is shared: 2 threads fighting over busy cores made a tiny encode ~50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    images, vae_dir, cache = root / "images", root / "vae", root / "cache"
    generate_toy_data(out=str(images), num_classes=CLASSES, per_class=PER_CLASS, size=SIZE, seed=0)
    save_tiny_vae(out_dir=str(vae_dir), seed=0)
    args = [
        "--images",
        str(images),
        "--out",
        str(cache),
        "--image-size",
        str(SIZE),
        "--vae",
        str(vae_dir),
        "--batch-size",
        "3",
        "--shard-size",
        str(SHARD),
        "--device",
        "cpu",
    ]
    assert latents_module.main(args) == 0
    return {"images": images, "vae": vae_dir, "cache": cache, "args": args}


def test_tiny_vae_roundtrip_through_load_vae(tmp_path):
    save_tiny_vae(out_dir=str(tmp_path / "a"), seed=0)
    save_tiny_vae(out_dir=str(tmp_path / "b"), seed=1)
    vae = load_vae(str(tmp_path / "a"))
    assert list(vae.config.block_out_channels) == tiny_vae_config()["block_out_channels"]
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    dist = vae.encode(torch.rand(2, 3, SIZE, SIZE) * 2 - 1).latent_dist
    assert dist.mean.shape == (2, 4, SIZE // 4, SIZE // 4) and torch.isfinite(dist.logvar).all()
    again, other = load_vae(str(tmp_path / "a")), load_vae(str(tmp_path / "b"))
    assert vae_fingerprint(vae) == vae_fingerprint(again)
    assert vae_fingerprint(vae)["config_sha256"] == vae_fingerprint(other)["config_sha256"]
    assert vae_fingerprint(vae)["weights_sha256"] != vae_fingerprint(other)["weights_sha256"]


def test_missing_vae_fails_fast_with_instructions(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(VaeNotAvailableError) as error:
        load_vae("udit-tests/no-such-vae")
    assert time.perf_counter() - start < 5.0
    message = str(error.value)
    assert "udit-tests/no-such-vae" in message and "`vae`" in message and "--vae" in message
    assert (
        "huggingface-cli download udit-tests/no-such-vae" in message
        and "save_pretrained" in message
    )
    with pytest.raises(VaeNotAvailableError, match="no such local directory"):
        load_vae(str(tmp_path / "missing" / "vae"))
    generate_toy_data(out=str(tmp_path / "img"), num_classes=1, per_class=1, size=SIZE, seed=0)
    code = latents_module.main(
        [
            "--images",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "c"),
            "--image-size",
            str(SIZE),
            "--vae",
            "udit-tests/no-such-vae",
        ]
    )
    assert code == 2 and "udit-tests/no-such-vae" in capsys.readouterr().err


def test_shards_and_manifest(setup):
    manifest = json.loads((setup["cache"] / "manifest.json").read_text())
    assert manifest["num_images"] == CLASSES * PER_CLASS and manifest["flips"] == [False, True]
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 4, 3]
    assert sorted(p.name for p in setup["cache"].glob("shard_*")) == [
        s["file"] for s in manifest["shards"]
    ]
    for entry in manifest["shards"]:
        path = setup["cache"] / entry["file"]
        assert sha256_file(str(path)) == entry["sha256"] and path.stat().st_size == entry["bytes"]
    assert manifest["moments_shape"] == [8, SIZE // 4, SIZE // 4] and manifest["dtype"] == "float32"
    assert (
        manifest["vae"]["weights_sha256"]
        == vae_fingerprint(load_vae(str(setup["vae"])))["weights_sha256"]
    )
    assert not list(setup["cache"].glob("*.tmp"))


def test_moments_equal_online_encoding_for_both_flips(setup):
    dataset = LatentDataset(str(setup["cache"]))
    images = build_image_dataset(str(setup["images"]), SIZE, flip=False)
    assert len(dataset) == 2 * len(images) and dataset.num_classes == CLASSES
    vae = load_vae(str(setup["vae"]))
    x = torch.stack([images[i][0] for i in range(len(images))])  # (15, 3, 32, 32)
    for flip in (0, 1):
        dist = vae.encode(x.flip(-1) if flip else x).latent_dist
        cached = torch.stack(
            [dataset[2 * i + flip][0] for i in range(len(images))]
        )  # (15, 8, 8, 8)
        torch.testing.assert_close(cached[:, :4], dist.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached[:, 4:], dist.logvar, atol=1e-5, rtol=1e-5)
    assert [dataset[2 * i + 1][1] for i in range(len(images))] == [y for _, y in images.samples]
    assert not torch.equal(dataset[0][0], dataset[1][0])  # the flips really differ


def test_sample_latent_matches_diffusers_sample(setup):
    dataset = LatentDataset(str(setup["cache"]))
    moments = torch.stack([dataset[i][0] for i in range(6)])  # (6, 8, 8, 8)
    noise = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    online = DiagonalGaussianDistribution(moments).sample(
        generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(sample_latent(moments, noise), online * SD_VAE_SCALE)
    torch.testing.assert_close(sample_latent(moments[0], noise[0]), online[0] * SD_VAE_SCALE)
    with pytest.raises(ValueError, match="noise shape"):
        sample_latent(moments, noise[:, :3])
    batch, labels = next(iter(DataLoader(dataset, batch_size=5, shuffle=True, num_workers=1)))
    assert (
        batch.shape == (5, 8, 8, 8) and batch.dtype == torch.float32 and labels.dtype == torch.int64
    )


def test_resume_skips_finished_shards(setup, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(setup["cache"], cache)
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard_*")}
    (cache / "shard_00002.safetensors").unlink()
    calls = []
    encode = latents_module._encode_shard
    monkeypatch.setattr(
        latents_module, "_encode_shard", lambda **kw: calls.append(kw["start"]) or encode(**kw)
    )
    args = [a if a != str(setup["cache"]) else str(cache) for a in setup["args"]]
    assert latents_module.main(args) == 0
    assert calls == [2 * SHARD]
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard_*")}
    assert {k: v for k, v in after.items() if k != "shard_00002.safetensors"} == {
        k: v for k, v in before.items() if k != "shard_00002.safetensors"
    }
    assert (cache / "manifest.json").read_text() == (setup["cache"] / "manifest.json").read_text()
    assert latents_module.main(args) == 0 and calls == [2 * SHARD]  # all done: nothing encoded


def test_corrupt_shard_detected_and_repaired(setup, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(setup["cache"], cache)
    shard = cache / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF  # same size, one float changed
    shard.write_bytes(bytes(data))
    LatentDataset(str(cache), verify="size")  # a size check cannot see it...
    with pytest.raises(CorruptCacheError, match="shard_00001.*sha256"):
        LatentDataset(str(cache))  # ...the checksum does
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(CorruptCacheError, match="shard_00001.*bytes"):
        LatentDataset(str(cache), verify="size")
    # a run killed while writing shard 2 and the manifest left their temp files (io.atomic_open)
    stale = [cache / ".shard_00002.safetensors.k9.tmp", cache / ".manifest.json.k9.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    args = [a if a != str(setup["cache"]) else str(cache) for a in setup["args"]]
    assert latents_module.main(args) == 0  # re-run re-encodes the bad shard
    assert shard.read_bytes() == (setup["cache"] / shard.name).read_bytes()
    assert not any(path.exists() for path in stale)  # and deletes what the killed run left
    assert len(LatentDataset(str(cache))) == 2 * CLASSES * PER_CLASS


def test_other_settings_refused_and_build_train_data(setup, capsys):
    args = list(setup["args"])
    args[args.index("--shard-size") + 1] = "5"
    assert latents_module.main(args) == 2 and "shard_size" in capsys.readouterr().err
    args[args.index("--image-size") + 1] = "30"
    assert latents_module.main(args) == 2 and "not divisible" in capsys.readouterr().err
    source = {
        "pixel": False,
        "vae": "unused",
        "num_classes": CLASSES,
        "device": torch.device("cpu"),
    }
    dataset, kind, shape, _ = build_train_data(
        latents=str(setup["cache"]), images=None, image_size=SIZE, **source
    )
    assert kind == "latents" and len(dataset) == 30
    assert shape == (dataset.latent_channels, dataset.latent_size, dataset.latent_size)
    dataset, kind, shape, _ = build_train_data(
        latents=None, images=str(setup["images"]), image_size=SIZE, **{**source, "pixel": True}
    )
    assert kind == "pixels" and len(dataset) == 15 and dataset[0][0].shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match="extracted at 32 px"):
        build_train_data(latents=str(setup["cache"]), images=None, image_size=64, **source)
    both = TrainOptions(model="DiT-S/2", run_dir="unused", total_steps=1, images="a", latents="b")
    with pytest.raises(ValueError, match="exactly one"):
        both.validate()
    with pytest.raises(FileNotFoundError, match="extract-latents"):
        LatentDataset(str(setup["images"]))


def test_online_encoding_hands_the_model_the_cached_latents(setup):
    """The training sources meet here: `--images` with a VAE flips and encodes online,
    `--latents` samples the cached moments of the same flip; for the same images, coins and
    latent noise the model must get the same latents. `--pixel` gets the flipped pixels."""
    common = {"vae": str(setup["vae"]), "image_size": SIZE, "num_classes": CLASSES}
    common["device"] = torch.device("cpu")
    images, kind, shape, encode = build_train_data(
        latents=None, images=str(setup["images"]), pixel=False, **common
    )
    cache, cache_kind, cache_shape, sample = build_train_data(
        latents=str(setup["cache"]), images=None, pixel=False, **common
    )
    assert (kind, cache_kind, shape) == ("vae", "latents", cache_shape)
    x = torch.stack([images[i][0] for i in range(4)])  # (4, 3, 32, 32)
    flips = torch.tensor([False, True, True, False])
    noise = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    draws = SimpleNamespace(flip=flips, latent_noise=noise)
    moments = torch.stack([cache[2 * i + int(f)][0] for i, f in enumerate(flips)])  # 2i + flip
    torch.testing.assert_close(encode(x, draws), sample(moments, draws), atol=1e-5, rtol=1e-5)
    _, pixel_kind, _, flip = build_train_data(
        latents=None, images=str(setup["images"]), pixel=True, **common
    )
    assert pixel_kind == "pixels"
    want = torch.stack([xi.flip(-1) if f else xi for xi, f in zip(x, flips, strict=True)])
    assert torch.equal(flip(x, draws), want)
