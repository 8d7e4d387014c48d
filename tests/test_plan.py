"""udit plan: per-family T11 rates, speed JSON, precision, chunking to max_job_hours."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from udit import experiments as ex
from udit import plan
from udit.errors import UserError

PAPER = "config/paper.yaml"


def test_family_rates_are_t11():
    """MACs/s per GPU = GFLOPs x 3 x 256 x steps/s / 8 GPUs, from the T11 rows (T10 GFLOPs)."""
    rates = plan.t11_rates()
    assert rates["dit"]["DiT-XL/2 (replicated)"][1] == pytest.approx(118.64e9 * 3 * 256 * 1.71 / 8)
    vanilla = rates["udit-vanilla"]
    assert vanilla["U-DiT-B vanilla"][1] == pytest.approx(21.96e9 * 3 * 256 * 3.14 / 8)
    assert vanilla["U-DiT-L vanilla"][1] == pytest.approx(84.48e9 * 3 * 256 * 1.55 / 8)
    udit = rates["udit"]["U-DiT-L all modifications"][1]
    assert udit == pytest.approx(85.00e9 * 3 * 256 * 0.84 / 8)


def test_families_of_registry_models():
    assert plan.family_of("DiT-XL/2") == "dit"
    assert plan.family_of("U-DiT-L") == "udit"
    assert plan.family_of("U-DiT-L vanilla") == "udit-vanilla"
    assert plan.family_of("U-DiT-T") == "udit-vanilla"
    assert plan.family_of("U-DiT-T + cos") == "udit"


def test_u_dit_l_stretch_is_planned_at_the_papers_speed():
    """200K steps of U-DiT-L on 8 GPUs: 200000 / 0.84 steps/s = 66 h (was 23 h at DiT's rate)."""
    config = ex.load_config(PAPER)
    exps = ex.resolve_experiments(config)
    tp = plan.Throughput.from_config(config)
    per_step, source = plan.hours_per_step(exps["u-dit-l"], config, tp)
    assert 200_000 * per_step == pytest.approx(200_000 / 0.84 / 3600, rel=1e-3)
    assert "U-DiT-L all modifications" in source
    per_step, _ = plan.hours_per_step(exps["u-dit-l-vanilla"], config, tp)
    assert 400_000 * per_step == pytest.approx(400_000 / 1.55 / 3600, rel=1e-3)
    per_step, _ = plan.hours_per_step(exps["dit-xl-2"], config, tp)
    assert per_step == pytest.approx(1 / 1.71 / 3600, rel=1e-3)


def test_fp32_is_slower_and_given_rate_wins():
    config = ex.load_config(PAPER)
    config["experiments"]["u-dit-l"]["precision"] = "fp32"
    exp = ex.resolve_experiments(config)["u-dit-l"]
    tf32, _ = plan.hours_per_step(exp, ex.load_config(PAPER), plan.Throughput.from_config(config))
    fp32, source = plan.hours_per_step(exp, config, plan.Throughput.from_config(config))
    assert fp32 == pytest.approx(tf32 * 8) and "fp32" in source
    given = plan.Throughput(gpu_macs_per_s=1e12)
    assert given.train(model="U-DiT-L", gmacs=85.0, precision="tf32") == (1e12, "given")


def test_speed_json_rate_is_used(tmp_path):
    row = {
        "model": "U-DiT-L",
        "path": "harness-tf32",
        "precision": "tf32",
        "images_per_s": 50.0,
        "gmacs_per_image": 85.0,
    }
    ref = dict(row, path="reference", images_per_s=500.0)  # not a harness row: ignored
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"schema": 1, "quick": False, "train": [row, ref]}))
    tp = plan.Throughput(speed=plan.load_speed_json(path))
    rate, source = tp.train(model="U-DiT-L", gmacs=85.0, precision="tf32")
    assert rate == pytest.approx(85e9 * 3 * 50.0) and source == "measured harness-tf32"
    _, source = tp.train(model="U-DiT-L", gmacs=85.0, precision="bf16")  # no bf16 row
    assert source.startswith("T11")
    path.write_text(json.dumps({"schema": 1, "train": [dict(row, images_per_s=0)]}))
    with pytest.raises(UserError, match="train\\[0\\]"):
        plan.load_speed_json(path)


@pytest.mark.parametrize(
    "start,end,max_steps,ends",
    [
        (200_000, 400_000, 80_000, [266_000, 333_000, 400_000]),
        (0, 400_000, 400_000, [400_000]),
        (0, 8, 3, [2, 5, 8]),
        (0, 7, 1, [1, 2, 3, 4, 5, 6, 7]),
    ],
)
def test_split_stretch(start, end, max_steps, ends):
    got = plan.split_stretch(start, end, max_steps)
    assert got == ends
    assert all(b - a <= max_steps for a, b in zip([start, *got], got))


def test_paper_plan_fits_max_job_hours():
    """Every training job of config/paper.yaml is <= its partition's max_job_hours, every
    milestone is still a node, and each chunk resumes where the previous one stopped."""
    config = ex.load_config(PAPER)
    limit = config["partitions"]["gpu"]["max_job_hours"]
    rows = plan.plan_rows(config, throughput=plan.Throughput.from_config(config))
    assert max(r.hours for r in rows) <= limit
    exps = ex.resolve_experiments(config)
    for eid, exp in exps.items():
        mine = [r for r in rows if r.experiment == eid]
        assert [r.from_step for r in mine] == [0, *[r.to_step for r in mine[:-1]]]
        assert {r.to_step for r in mine if r.milestone} == set(exp.milestones)
    udit_l = [r.to_step for r in rows if r.experiment == "u-dit-l"]
    assert len(udit_l) == 5 * math.ceil(66.1 / limit)  # 5 stretches of 200K at 0.84 steps/s
    no_limits = {k: v for k, v in config.items() if k != "partitions"}
    assert len(plan.plan_rows(no_limits, throughput=plan.Throughput())) == len(
        [m for exp in exps.values() for m in exp.milestones]
    )  # one node per milestone without partition limits


def test_sampling_hours_count_guidance_and_vae():
    config = ex.load_config(PAPER)
    samples = plan.sample_rows(config, throughput=plan.Throughput(gpu_macs_per_s=1e12))
    by = {(s.experiment, s.tag): s for s in samples}
    plain, guided = by[("u-dit-l", "0400000-cfg1.0")], by[("u-dit-l", "0400000-cfg1.5")]
    gmacs = plan.macs_index()["models"]["U-DiT-L"]["gmacs"]["32"]
    vae = plan.macs_index()["vae_decode_gmacs"]["32"]
    assert plain.sample_gpu_hours == pytest.approx((gmacs * 250 + vae) * 1e9 * 50_000 / 1e12 / 3600)
    assert guided.sample_gpu_hours == pytest.approx(
        (gmacs * 250 * 2 + vae) * 1e9 * 50_000 / 1e12 / 3600
    )
    assert plain.eval_gpu_hours > 0


def test_partition_limits_checked():
    config = ex.load_config(PAPER)
    config["partitions"]["gpu"]["max_mem_mb"] = 100_000  # below resources/train/S mem_mb
    with pytest.raises(ex.ConfigError, match="mem_mb 128000 exceeds"):
        plan.check_partitions(config)
    config = ex.load_config(PAPER)
    config["partitions"]["gpu"]["max_job_hours"] = 100  # longer than max_runtime 2880 min
    with pytest.raises(ex.ConfigError, match="max_job_hours 100"):
        plan.check_partitions(config)


def test_retry_scaling_stops_at_the_partition():
    limits = {"max_runtime": 2880, "max_mem_mb": 512_000, "max_job_hours": 24}
    assert plan.scaled("mem_mb", 256_000, 1, limits) == 256_000
    assert plan.scaled("mem_mb", 256_000, 3, limits) == 512_000
    assert plan.scaled("runtime", 1700, 2, limits) == 2880
    assert plan.scaled("runtime", 30, 2, None) == 60
    assert plan.runtime_minutes(22.0, limits) == math.ceil(22 * 60 * 1.25) + 15
    assert plan.runtime_minutes(60.0, limits) == 2880


def test_macs_index_matches_a_live_count():
    live = plan.model_gflops(model="DiT-S/8", input_size=32, in_channels=4, model_kw={})
    assert plan.macs_index()["models"]["DiT-S/8"]["gmacs"]["32"] == pytest.approx(live, rel=1e-3)


def chunked_smoke_config(tmp_path, *, results, chunk: bool) -> Path:
    """The smoke config reduced to toy-dit-s-4 (8 steps); with chunk, max_job_hours fits three
    steps at the given rate, so training runs as three chained nodes (0->2->5->8)."""
    import yaml

    raw = yaml.safe_load(Path("config/smoke.yaml").read_text())
    raw["base"] = str(Path("config/paper.yaml").resolve())
    raw["scale"]["only"] = ["toy-dit-s-4"]
    raw["results"] = str(results)
    raw["plan"] = {"gpu_macs_per_s": 1e9}
    if chunk:
        path = tmp_path / "probe.yaml"
        path.write_text(yaml.safe_dump(raw))
        config = ex.load_config(path)
        exp = ex.resolve_experiments(config)["toy-dit-s-4"]
        per_step, _ = plan.hours_per_step(exp, config, plan.Throughput.from_config(config))
        hours = 3.5 * per_step
        raw["partitions"] = {
            "default": {"max_job_hours": hours, "max_runtime": 60, "max_mem_mb": 4000}
        }
    path = tmp_path / ("chunked.yaml" if chunk else "plain.yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_chunk_nodes_resume_to_the_same_weights(tmp_path):
    """Three chained chunk nodes train to the same final checkpoint as one node, each chunk end
    is kept, and --forcerun of the milestone re-runs only its last chunk."""
    import subprocess
    import sys

    from udit.training.store import load_checkpoint_state

    def snakemake(config, target, *extra):
        cmd = [sys.executable, "-m", "snakemake", target, *extra, "--configfile", str(config)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)

    final = {}
    for chunk in (False, True):
        results = tmp_path / f"results-{chunk}"
        config = chunked_smoke_config(tmp_path, results=results, chunk=chunk)
        target = f"{results}/toy-dit-s-4/train/checkpoints/ckpt-0000008.pt"
        run = snakemake(config, target, "--cores", "2")
        assert run.returncode == 0, run.stderr[-3000:]
        out = run.stdout + run.stderr
        trains = re.findall(r"rule train:", out)
        assert len(trains) == (3 if chunk else 1), out[-3000:]
        final[chunk] = load_checkpoint_state(Path(target))
    ckpts = sorted(p.name for p in (results / "toy-dit-s-4/train/checkpoints").glob("ckpt-*.pt"))
    assert {"ckpt-0000002.pt", "ckpt-0000005.pt", "ckpt-0000008.pt"} <= set(ckpts)
    for key in ("model", "ema"):
        for name, tensor in final[False][key].items():
            torch.testing.assert_close(final[True][key][name], tensor, rtol=0, atol=0)
    again = snakemake(config, target, "-n", "--forcerun", target)
    assert re.findall(r"rule train:", again.stdout + again.stderr) == ["rule train:"]
    assert "ckpt-0000005.pt" in again.stdout  # the last chunk resumes from the 5-step end


def test_macs_index_families_are_the_registry_s():
    from udit.models import MODELS
    from udit.models.macs import family

    stored = plan.macs_index()["models"]
    assert {name: family(spec) for name, spec in MODELS.items()} == {
        name: entry["family"] for name, entry in stored.items()
    }


def test_train_steps_never_exceed_max_job_hours(tmp_path):
    """3.5 steps' worth of max_job_hours -> chunks of at most 3 steps: 0->2->5->8."""
    path = chunked_smoke_config(tmp_path, results=tmp_path / "r", chunk=True)
    config = ex.load_config(path)
    exp = ex.resolve_experiments(config)["toy-dit-s-4"]
    assert plan.train_steps(exp, config) == [2, 5, 8]
