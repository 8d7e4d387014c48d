"""The DAG side of `udit export`: `snakemake export` builds a diffusers folder per trained
milestone (not part of `all`), with the run's metrics in its model card."""

import hashlib
import json

import numpy as np
import pytest
import torch
from test_workflow import (
    EXPORTED,
    PAIR_STEP,
    ROOT,
    job_counts,
    run_snakemake,
)

from udit import experiments as ex

DIT, UDIT = EXPORTED  # toy DiT-S/4 and U-DiT-S of the smoke config, trained once per session
STEP = PAIR_STEP
IMAGE_SIDE = 32  # smoke's toy32 dataset
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def exports_planned(*args) -> int:
    result = run_snakemake("-n", "--forceall", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return job_counts(result.stdout + result.stderr).get("export_checkpoint", 0)


def test_snakemake_export_target_covers_every_milestone_and_stays_out_of_all():
    """`snakemake export` plans one export per trained milestone of the config; the default
    target (the smoke run) plans none."""
    for config in ("smoke.yaml", "paper.yaml"):
        experiments = ex.resolve_experiments(ex.load_config(ROOT / "config" / config))
        milestones = sum(len(exp.milestones) for exp in experiments.values())
        assert exports_planned("export", "--configfile", f"config/{config}") == milestones
    assert exports_planned() == 0


def sample(folder, labels):
    from diffusers import DiTPipeline

    pipe = DiTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        class_labels=labels,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.manual_seed(0),
        output_type="np",
    )
    return pipe, out.images  # (N, H, W, 3) in [0, 1]


def check_folder(folder, metrics):
    """No pickles, safetensors weights, and a card with this run's metrics file and FID."""
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix.lower() in PICKLES], files
    assert sum(p.suffix == ".safetensors" for p in files) == 2  # transformer, VAE
    card = (folder / "README.md").read_text()
    scores = json.loads(metrics.read_text())
    assert f"| fid | {scores['fid']:.4g} |" in card
    assert hashlib.sha256(metrics.read_bytes()).hexdigest() in card
    assert "uncalibrated" in card  # the smoke run's stand-in Inception


@pytest.mark.slow
def test_snakemake_export_builds_folders_diffusers_loads_and_samples(smoke_pair, one_thread):
    results, config = smoke_pair
    targets = [f"{results}/{e}/export/{STEP}" for e in (DIT, UDIT)]
    ran = run_snakemake(*targets, "--cores", "2", *config, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert job_counts(ran.stdout + ran.stderr)["export_checkpoint"] == 2
    for eid in (DIT, UDIT):
        check_folder(
            results / eid / "export" / STEP, results / eid / "metrics" / f"{STEP}-cfg1.0.json"
        )

    pipe, images = sample(results / DIT / "export" / STEP, [0])  # diffusers' own DiT class
    assert type(pipe.transformer).__name__ == "DiTTransformer2DModel"
    assert images.shape == (1, IMAGE_SIDE, IMAGE_SIDE, 3) and np.isfinite(images).all()

    import udit.export.hub_model  # noqa: F401  (registers UDiTTransformer2DModel)

    pipe, images = sample(results / UDIT / "export" / STEP, [1])
    assert type(pipe.transformer).__name__ == "UDiTTransformer2DModel"
    assert images.shape == (1, IMAGE_SIDE, IMAGE_SIDE, 3) and np.isfinite(images).all()
