"""The workflow as data: schema, both configs, every paper node in the DAG, lint, `udit plan`."""

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from udit import experiments as ex

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Paper tables every row of which must be reproduced by some evaluation of config/paper.yaml
# (the DiT paper's own numbers and 7M-iteration rows come from runs the U-DiT paper did not do).
TABLES_FULLY_COVERED = [
    "toy_T1",
    "downsampler_T7",
    "ablation_T9",
    "main_400k_T2",
    "cfg_1.5_T4",
    "imagenet512_T6",
    "vanilla_vs_all_T10",
    "other_architectures_T3",
]
# job counts of `snakemake -n --configfile config/paper.yaml` (recorded in the closing note)
PAPER_JOB_COUNTS = {
    "train": 80,  # 37 milestones + 43 chunk ends (partitions.gpu.max_job_hours 24, udit plan)
    "sample": 41,
    "evaluate": 41,
    "extract_latents": 2,
    "count_flops": 1,
}


def run_snakemake(*args, cwd=ROOT, timeout=120):
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@functools.cache
def forced_dry_run(config: str) -> str:
    """What `snakemake -n -p --forceall` prints for config/<config>: the whole DAG, whatever a
    previous run left in results/, with every job's shell command. Run once per test process
    for the tests that read it (each snakemake start costs seconds)."""
    result = run_snakemake("-n", "-p", "--forceall", "--configfile", f"config/{config}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def job_counts(output: str) -> dict[str, int]:
    block = output.split("Job stats:")[1].split("total")[0]
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.MULTILINE)
    }


@pytest.mark.parametrize("name", ["paper.yaml", "smoke.yaml"])
def test_schema_accepts_both_configs(name):
    raw = yaml.safe_load((ROOT / "config" / name).read_text())
    validate(raw, str(SCHEMA))  # what the Snakefile does at start-up
    config = ex.load_config(ROOT / "config" / name)
    experiments = ex.resolve_experiments(config)
    from udit.models import MODEL_NAMES

    assert {e.model for e in experiments.values()} <= set(MODEL_NAMES)  # the live registry's
    assert len(experiments) >= 25


def test_smoke_maps_the_same_experiments_to_toy_sizes():
    paper = ex.resolve_experiments(ex.load_config(ROOT / "config" / "paper.yaml"))
    smoke = ex.resolve_experiments(ex.load_config(ROOT / "config" / "smoke.yaml"))
    leads = [eid for eid, exp in smoke.items() if not exp.replicate]
    assert leads == list(paper)  # plus the replicates `scale.replicated` asks for
    assert sorted(set(smoke) - set(leads)) == [
        f"{eid}-seed{k}"
        for eid in ("ablation-cosine", "ablation-rope2d", "u-dit-t")
        for k in (1, 2)
    ]
    for exp in smoke.values():
        assert exp.model == paper[exp.group].model
        assert len(exp.milestones) == len(paper[exp.group].milestones)  # same node structure
        assert exp.iterations <= 40 and exp.global_batch <= 8 and exp.size == "toy"
        assert all(e.fid_samples <= 16 for e in exp.evaluations)


def test_bad_key_is_rejected_with_its_name(tmp_path):
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["scale"]["step_divizor"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ex.ConfigError, match="step_divizor"):
        ex.load_config(bad)
    result = run_snakemake("-n", "--configfile", str(bad))
    assert result.returncode != 0
    assert "step_divizor" in result.stdout + result.stderr


def test_bad_value_and_bad_paper_reference_are_named(tmp_path):
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["experiments"]["u-dit-b"]["size"] = "huge"
    with pytest.raises(ex.ConfigError, match=r"experiments/u-dit-b/size"):
        ex.validate_config(raw)
    raw["experiments"]["u-dit-b"]["size"] = "B"
    raw["experiments"]["u-dit-b"]["evaluations"][0]["paper"][0]["row"] = "U-DiT-Z"
    with pytest.raises(ex.ConfigError, match="U-DiT-Z"):
        ex.resolve_experiments(raw)


def job_options(out: str, kind: str) -> list[dict]:
    """The `--options` document of every train or sample job a `snakemake -n -p` prints (each
    job's one launch.sh line)."""
    found = []
    for line in out.splitlines():
        if "launch.sh" in line and f" {kind} " in line and "--options" in line:
            words = shlex.split(line.split(">")[0])
            found.append(json.loads(words[words.index("--options") + 1]))
    return found


def test_multi_node_and_grad_accum_reach_the_train_command(tmp_path):
    """nodes: 2 and grad_accum: 4 plan a train job that launch.sh starts on 2 nodes (one
    torchrun agent each) with --grad-accum 4; a grad_accum that does not divide the global
    batch stops at validation, naming the experiment."""
    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    raw["resources"]["train"]["XL"].update(nodes=2, gpu=8, stop_lead_s=600)
    raw["experiments"]["dit-xl-2"]["grad_accum"] = 4
    config = tmp_path / "multi-node.yaml"
    config.write_text(yaml.safe_dump(raw))
    target = "results/dit-xl-2/train/checkpoints/ckpt-0400000.pt"
    plan = run_snakemake(target, "-n", "-p", "--forceall", "--configfile", str(config))
    assert plan.returncode == 0, plan.stderr[-3000:]
    text = (plan.stdout + plan.stderr).replace("\\\n", " ")
    launch = next(ln for ln in text.splitlines() if "launch.sh" in ln)
    # nodes, GPUs of the job, threads per rank (64 CPUs of a node / its 4 ranks), lead_s
    assert " 2 8 16 600 " in " ".join(launch.split()), launch
    jobs = job_options(text, "train")  # the 400K node and the chunk ends before it
    assert jobs and all(o["grad_accum"] == 4 and o["checkpoint_minutes"] == 30 for o in jobs)
    raw["experiments"]["dit-xl-2"]["grad_accum"] = 3  # 256 % 3 != 0
    with pytest.raises(ex.ConfigError, match=r"dit-xl-2.*grad_accum 3"):
        ex.resolve_experiments(raw)


def test_paper_config_references_every_paper_row():
    experiments = ex.resolve_experiments(ex.load_config(ROOT / "config" / "paper.yaml"))
    referenced = {
        (r.table, r.row, r.key)
        for e in experiments.values()
        for ev in e.evaluations
        for r in ev.paper
    }
    numbers = ex.paper_numbers()
    missing = [
        (t, row)
        for t in TABLES_FULLY_COVERED
        for row in numbers[t]
        if not any(rt == t and rr == str(row) for rt, rr, _ in referenced)
    ]
    assert not missing, f"paper rows no experiment reproduces: {missing}"
    for model in ("U-DiT-B", "U-DiT-L"):  # T5: every milestone of the 1M runs
        keys = {k for t, r, k in referenced if t == "longer_training_T5" and r == model}
        assert keys == {"200K", "400K", "600K", "800K", "1M"}
    assert experiments["u-dit-b"].milestones == [200_000, 400_000, 600_000, 800_000, 1_000_000]


def test_paper_dry_run_lists_every_node():
    out = forced_dry_run("paper.yaml")
    counts = job_counts(out)
    for rule, n in PAPER_JOB_COUNTS.items():
        assert counts.get(rule) == n, (rule, counts)
    experiments = ex.resolve_experiments(ex.load_config(ROOT / "config" / "paper.yaml"))
    for eid, exp in experiments.items():
        for e in exp.evaluations:
            assert f"results/{eid}/metrics/{e.tag}.json" in out
    # 1M continues the 800K checkpoint of the same run: no retraining from scratch
    assert re.search(
        r"input: .*results/u-dit-b/train/checkpoints/ckpt-0800000\.pt[\s\S]*?"
        r"output: results/u-dit-b/train/checkpoints/ckpt-1000000\.pt",
        out,
    )


def test_paper_dry_run_passes_a_precision_to_every_train_and_sample_command():
    """TF32 (or bf16) on every paper job, as the official train.py / sample_ddp.py: plain fp32
    ran 2-8x slower than the paper's own setup (issue 13)."""
    out = forced_dry_run("paper.yaml")
    counts = {kind: job_options(out, kind) for kind in ("train", "sample")}
    assert {k: len(v) for k, v in counts.items()} == {
        "train": PAPER_JOB_COUNTS["train"],
        "sample": PAPER_JOB_COUNTS["sample"],
    }
    for kind, jobs in counts.items():
        assert all(o["precision"] in ("tf32", "bf16") for o in jobs), kind


@pytest.mark.parametrize(("config", "every"), [("paper.yaml", 100), ("smoke.yaml", 1)])
def test_train_commands_log_as_configured(config, every):
    """DiT's 100 steps between log lines at paper scale; every step in smoke, whose 8-step runs
    would otherwise log one line each and draw no loss curve in the report."""
    jobs = job_options(forced_dry_run(config), "train")
    assert jobs and all(o["log_every"] == every for o in jobs)


@pytest.mark.slow
def test_smoke_dry_run_and_slurm_profile_resolve():
    result = run_snakemake("-n", "--forceall")  # default configfile = smoke; whole DAG
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    for rule in (
        "make_toy_data",
        "make_tiny_vae",
        "extract_latents",
        "make_standin_inception",
        "build_reference",
        "train",
        "sample",
        "evaluate",
        "count_flops",
        "make_report",
    ):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    assert counts["extract_latents"] == 1  # latents extracted once, shared
    result = run_snakemake("-n", "--profile", "slurm")  # ./slurm/ resolves from the repo root
    assert result.returncode == 0, result.stderr[-3000:]


# Smoke experiments run end to end once per session: an ablation node and a DiT (the forcerun
# test), and U-DiT-S (with the DiT, the exports tests/test_export_dag.py loads with diffusers).
PAIR = ("ablation-cosine", "toy-dit-s-4")
EXPORTED = ("toy-dit-s-4", "u-dit-s")
PAIR_STEP = "0000008"


def run_smoke_pair(results: Path) -> list[str]:
    """Run the experiments of PAIR and EXPORTED train -> sample -> evaluate for real into
    `results`; -> the --config args that point the DAG at it (tests/conftest.py smoke_pair)."""
    config = ["--config", f"results={results}"]
    metrics = [f"{results}/{e}/metrics/{PAIR_STEP}-cfg1.0.json" for e in {*PAIR, *EXPORTED}]
    ran = run_snakemake(*metrics, "--cores", "2", *config, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert all(Path(m).is_file() for m in metrics)
    return config


@pytest.mark.slow
def test_forcerun_of_one_ablation_node_touches_no_other_experiment(smoke_pair):
    """The README's re-run command, for real: after two smoke experiments ran end to end into a
    scratch results folder, `--forcerun train` on one metrics file plans that experiment's
    train, sample and evaluate nodes and nothing of the other one."""
    results, config = smoke_pair
    cosine, dit = (f"{results}/{e}/metrics/{PAIR_STEP}-cfg1.0.json" for e in PAIR)
    plan = run_snakemake(cosine, "-n", "--forcerun", "train", *config)
    assert plan.returncode == 0, plan.stderr[-3000:]
    out = plan.stdout + plan.stderr
    assert job_counts(out) == {"train": 1, "sample": 1, "evaluate": 1}
    assert "ablation-cosine/train/checkpoints/ckpt-0000008.pt" in out
    assert "toy-dit-s-4" not in out
    idle = run_snakemake(dit, "-n", *config)  # the other experiment is still complete
    assert "Nothing to be done" in idle.stdout + idle.stderr


def test_lint_is_clean():
    result = run_snakemake("--lint")
    assert result.returncode == 0
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_released_target_lists_what_to_download():
    result = run_snakemake("-n", "released", "--configfile", "config/paper.yaml")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "released checkpoints missing" in out
    assert (
        "data/released/DiT-XL-2-256x256.pt  <-  https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt"
        in out
    )


def test_speed_target_runs_the_benchmark_as_configured():
    """`snakemake speed` plans benchmarks/speed.py with the config's `speed` options: quick on
    CPU in the smoke config (whose report requires it), full size on CUDA in the paper's."""
    smoke = run_snakemake("-n", "-p", "--forceall", "speed")  # whatever results/ holds
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    out = smoke.stdout + smoke.stderr
    assert job_counts(out) == {"measure_speed": 1, "speed": 1}
    assert "benchmarks/speed.py --json results/speed/speed.json --quick --device cpu" in out
    paper = run_snakemake("-n", "-p", "--forceall", "speed", "--configfile", "config/paper.yaml")
    assert paper.returncode == 0, paper.stderr[-3000:]
    out = paper.stdout + paper.stderr
    assert "benchmarks/speed.py --json results/speed/speed.json --device cuda" in out
    assert "--quick" not in out


@pytest.mark.slow
def test_plan_prints_nodes_and_total(tmp_path):
    from udit import plan

    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["scale"]["only"] = ["toy-dit-s-4", "u-dit-b"]
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    cfg = tmp_path / "plan.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "udit.plan",
            "--configfile",
            str(cfg),
            "--format",
            "json",
            "--gpu-macs-per-s",
            "1e9",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    report = json.loads(result.stdout)
    nodes = report["nodes"]
    assert [(n["experiment"], n["to_step"]) for n in nodes] == [
        ("toy-dit-s-4", 8),
        ("u-dit-b", 4),
        ("u-dit-b", 8),
        ("u-dit-b", 12),
        ("u-dit-b", 16),
        ("u-dit-b", 20),
    ]
    for n in nodes:
        assert n["gflops"] > 0 and n["images"] == (n["to_step"] - n["from_step"]) * 8
        assert n["train_pflops"] == pytest.approx(
            n["gflops"] * 1e9 * 3 * n["images"] / 1e15, rel=1e-3
        )
        assert n["gpu_hours"] == pytest.approx(n["train_pflops"] * 1e15 / 1e9 / 3600)
    assert report["total_gpu_hours"] == pytest.approx(sum(n["gpu_hours"] for n in nodes))
    # the default throughput is the paper's T11 DiT-XL/2 rate:
    # 118.64 GFLOPs x 3 x 256 x 1.71 / 8 GPUs
    rate = plan.t11_rates()["dit"]["DiT-XL/2 (replicated)"][1]
    assert rate == pytest.approx(118.64e9 * 3 * 256 * 1.71 / 8)
