"""External inputs checked before any job: reference batches, Inception, VAE, ImageNet folder;
`udit download` offline."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from udit import download, inputs

ROOT = Path(__file__).resolve().parents[1]


def write_reference(path, *, side=256, sigma=(2048, 2048)):
    np.savez(
        path,
        arr_0=np.zeros((2, side, side, 3), np.uint8),
        mu=np.zeros(2048, np.float32),
        sigma=np.zeros(sigma, np.float32),
        mu_s=np.zeros(2023, np.float32),
        sigma_s=np.zeros((2023, 2023), np.float32),
    )


def test_reference_checks(tmp_path):
    good, bad = tmp_path / "ref.npz", tmp_path / "bad.npz"
    write_reference(good)
    assert inputs.reference_problem(str(good), image_size=256) is None
    assert "expected uint8 (N, 512, 512, 3)" in inputs.reference_problem(str(good), image_size=512)
    write_reference(bad, sigma=(2048, 7))
    assert "sigma has shape (2048, 7)" in inputs.reference_problem(str(bad), image_size=256)
    np.savez(bad, arr_0=np.zeros((1, 256, 256, 3), np.uint8))
    assert "no mu, sigma" in inputs.reference_problem(str(bad), image_size=256)
    bad.write_bytes(b"not a zip")
    assert "not a readable npz" in inputs.reference_problem(str(bad), image_size=256)
    assert inputs.reference_problem(str(tmp_path / "none.npz"), image_size=256) == "missing"


def test_inception_vae_images_checks(tmp_path):
    weights = tmp_path / inputs.INCEPTION_FILENAME
    weights.write_bytes(b"\0" * 1000)
    assert "1000 bytes" in inputs.inception_problem(str(weights))
    weights.write_bytes(b"\0" * inputs.INCEPTION_BYTES)  # right size, wrong content
    assert "does not start with 6726825d" in inputs.inception_problem(str(weights))
    vae = tmp_path / "vae"
    vae.mkdir()
    assert "no config.json" in inputs.vae_problem(str(vae))
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    assert "no diffusion_pytorch_model" in inputs.vae_problem(str(vae))
    (vae / inputs.VAE_WEIGHTS[0]).write_bytes(b"")
    assert inputs.vae_problem(str(vae)) is None
    images = tmp_path / "imagenet"
    for c in range(3):
        (images / f"n{c:08d}").mkdir(parents=True)
    assert inputs.images_problem(str(images), num_classes=3) is None
    assert "1000 class folders expected, found 3" in inputs.images_problem(
        str(images), num_classes=1000
    )


def paper_config_with_inputs(tmp_path) -> Path:
    """config/paper.yaml with every external input present (small stand-ins) except the
    512 px reference batch."""
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    images, vae = tmp_path / "imagenet", tmp_path / "vae"
    for c in range(1000):
        (images / f"n{c:08d}").mkdir(parents=True)
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (vae / inputs.VAE_WEIGHTS[0]).write_bytes(b"")
    write_reference(tmp_path / "ref256.npz")
    for spec in raw["datasets"].values():
        spec.update(images=str(images), vae=str(vae))
    raw["datasets"]["imagenet256"]["reference"] = str(tmp_path / "ref256.npz")
    raw["datasets"]["imagenet512"]["reference"] = str(tmp_path / "missing512.npz")
    raw["inception"] = {"weights": "standin", "standin_seed": 0}  # the real file is 95 MB
    raw["results"] = str(tmp_path / "results")
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.slow
def test_missing_reference_stops_the_paper_run_before_any_job(tmp_path):
    """A real (not dry) paper run with one reference batch missing stops at once, naming the
    file, its config key and its URL; no job (train, sample or other) starts."""
    config = paper_config_with_inputs(tmp_path)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", str(config), "--cores", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0, out[-3000:]
    problems = [line for line in out.splitlines() if "(config " in line]
    assert len(problems) == 1, out[-3000:]
    assert "missing512.npz (config datasets/imagenet512/reference): missing" in problems[0]
    assert inputs.REFERENCE_URLS[512] in problems[0]
    assert "rule train" not in out and "localrule" not in out  # no job was started
    assert not (tmp_path / "results").exists()
    print(f"stopped after {time.monotonic() - started:.1f} s")


def test_download_offline_fails_fast_with_the_list(tmp_path):
    """Offline (HF_HUB_OFFLINE=1 and no route), `udit download` exits 2 at once listing
    every missing input and its source."""
    config = paper_config_with_inputs(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "udit.cli", "download", "--configfile", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    took = time.monotonic() - started
    assert run.returncode == 2, run.stderr
    assert "offline" in run.stderr and "Traceback" not in run.stderr
    assert f"missing512.npz  <-  {inputs.REFERENCE_URLS[512]}" in run.stderr
    assert "data/released/U-DiT-B.pt  <-  huggingface.co/yuchuantian/U-DiT" in run.stderr
    assert took < 30, took  # the host probes time out after 3 s each, nothing hangs


def test_pick_checkpoint_uses_the_real_listing():
    files = ["README.md", "U-DiT-B.pt", "U-DiT-L.pt", "udit_models.py"]
    assert download.pick_checkpoint(files, "U-DiT-B") == "U-DiT-B.pt"
    with pytest.raises(Exception, match="cannot tell which file"):
        download.pick_checkpoint(["README.md", "model.safetensors"], "U-DiT-B")
