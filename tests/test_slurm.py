"""The SLURM profile against a real SLURM (scripts/local-slurm/start.sh): real sbatch, real job
states, a representative part of the smoke DAG, a fake-GPU request and a failed job retried.

Skips only when SLURM is not installed AND UDIT_REQUIRE_SLURM is unset; CI sets it (after
running scripts/local-slurm/start.sh), so a missing or stopped SLURM fails there.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = bool(os.environ.get("UDIT_REQUIRE_SLURM"))
RUN_LIMIT_S = 900  # snakemake ignores SIGTERM while jobs run: kill it (local-slurm pitfall 7)
FAST_STATUS = [
    "--slurm-init-seconds-before-status-checks",
    "5",
    "--seconds-between-status-checks",
    "5",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("sbatch") is None and not REQUIRED,
        reason="SLURM not installed and UDIT_REQUIRE_SLURM unset "
        "(run scripts/local-slurm/start.sh)",
    ),
]


@pytest.fixture(scope="module", autouse=True)
def slurm_up():
    """A reachable controller with an idle node; with UDIT_REQUIRE_SLURM anything else fails."""
    if shutil.which("sbatch") is None:
        pytest.fail(
            "UDIT_REQUIRE_SLURM is set but sbatch is not installed: "
            "run scripts/local-slurm/start.sh"
        )
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(
            "slurmctld not reachable (run scripts/local-slurm/start.sh): "
            f"{ping.stdout}{ping.stderr}"
        )


def snakemake(*args, cwd=ROOT, env=None):
    cmd = ["timeout", "-s", "KILL", str(RUN_LIMIT_S), sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=env)


def sacct_states(job_ids, *, settle_s=60):
    """Final states from accounting; slurmdbd records job ends asynchronously, so wait until
    no job is still PENDING/RUNNING/COMPLETING there."""
    deadline = time.monotonic() + settle_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        states = dict(line.split("|")[:2] for line in out.split())
        settled = set(states) == set(job_ids) and not {"PENDING", "RUNNING", "COMPLETING"} & set(
            states.values()
        )
        if settled or time.monotonic() > deadline:
            return states
        time.sleep(2)


def submitted_job_ids(output: str) -> list[str]:
    # plugin log line: "Job N has been submitted with SLURM jobid 12 (log: ...)."
    ids = []
    for line in output.splitlines():
        if "SLURM jobid" in line:
            ids.append(line.split("SLURM jobid")[1].split()[0].strip(".,"))
    return ids


def test_failed_job_is_retried_with_a_fake_gpu(tmp_path):
    (tmp_path / "Snakefile").write_text('''
rule all:
    input: "flaky.txt"

rule flaky:
    output: "flaky.txt"
    log: "flaky.log"
    resources: gpu=1, runtime=5, mem_mb=500
    shell:
        """
        echo "$SLURM_JOB_ID $CUDA_VISIBLE_DEVICES" >> attempts.txt
        if [ ! -e first-attempt-failed ]; then touch first-attempt-failed; exit 3; fi
        echo done > {output}
        """
''')
    run = snakemake(
        "--profile",
        str(ROOT / "slurm"),
        "--retries",
        "1",
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(tmp_path / "Snakefile"),
        *FAST_STATUS,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    attempts = [line.split() for line in (tmp_path / "attempts.txt").read_text().splitlines()]
    assert len(attempts) == 2, attempts
    (first, gpu1), (second, gpu2) = attempts
    assert first != second  # the retry is a new sbatch job
    assert gpu1 == gpu2 == "0"  # the fake GRES granted one GPU to each
    states = sacct_states([first, second])
    assert states[first] == "FAILED" and states[second] == "COMPLETED", states


def slurm_run(config: Path, tmp_path: Path, *targets, env=None):
    """`snakemake --profile slurm` as a user writes it, from the repository root (./slurm/), on
    a config whose results lie under tmp_path."""
    return snakemake(
        "--profile",
        "slurm",
        "--configfile",
        str(config),
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(ROOT / "Snakefile"),
        *FAST_STATUS,
        *targets,
        env=env,
    )


def _smoke_part_config(tmp_path, **train_resources) -> Path:
    """The smoke config cut to one experiment (toy-dit-s-4, 8 steps), results under tmp_path."""
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    raw["scale"]["only"] = ["toy-dit-s-4"]
    raw["scale"]["ckpt_every"] = 100  # the only ordinary checkpoint is the stop's
    raw["datasets"]["toy32"]["per_class"] = 4
    raw["resources"]["train"]["default"].update(train_resources)
    config = tmp_path / "smoke-part.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def _printed_train_command(output: str) -> list[str]:
    """The launch.sh line of the train job as Snakemake printed it (printshellcmds)."""
    text = output.replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if "launch.sh" in ln and " train " in ln)
    return shlex.split(line.split(">")[0])


def test_train_job_stops_before_its_time_limit_and_the_retry_resumes(tmp_path):
    """A 2-minute train job gets SIGUSR1 90 s before its limit (launch.sh reads the end time
    from squeue), checkpoints the step in flight and fails; Snakemake (the profile's retries)
    submits it again with 4 minutes, which resumes from that checkpoint and ends with the
    weights of an uninterrupted run, bitwise. (The signal comes 30 s into the job: after the
    ~5-15 s start-up, during the 8 x 8 s of training.) The smoke part's data jobs (toy data,
    tiny VAE, latents) run through sbatch on the way, each its own job."""
    config = _smoke_part_config(tmp_path, runtime=2, stop_lead_s=90)
    results = tmp_path / "results"
    run_dir = results / "toy-dit-s-4" / "train"
    target = run_dir / "checkpoints" / "ckpt-0000008.pt"
    # 8 steps take > 64 s: the timer (~30 s in) fires mid-run even on a quiet, fast-starting machine
    env = {**os.environ, "UDIT_PAUSE_AFTER_STEP": "8"}
    run = slurm_run(config, tmp_path, str(target), env=env)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    steps = [int(p.name[5:12]) for p in sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))]
    assert len(steps) == 2 and steps[1] == 8 and 1 <= steps[0] < 8, steps  # stop ckpt + final
    log = (results / "logs" / "train" / "toy-dit-s-4-0000008.log").read_text()
    assert f"at step {steps[0]}" in log  # the retry resumed from the stop checkpoint
    ids = submitted_job_ids(out)
    assert len(ids) == len(set(ids)) >= 5, out[-3000:]  # 3 data jobs + train twice
    assert (results / "data" / "toy32" / "latents" / "manifest.json").is_file()
    states = sacct_states(ids)
    assert states[ids[-2]] == "FAILED" and states[ids[-1]] == "COMPLETED"
    assert all(states[i] == "COMPLETED" for i in ids[:-2]), states  # the data jobs

    # the same job (its --options document) into another folder: a flag given after
    # --options overrides that key
    cmd = [*_printed_train_command(out), "--run-dir", str(tmp_path / "reference")]
    ref = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert ref.returncode == 0, ref.stderr[-3000:]
    got = torch.load(target, map_location="cpu", weights_only=True)
    want = torch.load(tmp_path / "reference" / "checkpoints" / "ckpt-0000008.pt", weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(got[part][k], v) for k, v in want[part].items()), part


def test_two_agent_job_stops_before_its_limit_and_matches_one_process(tmp_path):
    """launch.sh with nodes=2 in a 2-task SLURM job: two torchrun agents (on this one host)
    meet through the c10d rendezvous, 1 CPU rank each (gloo). The first job (2 minutes) gets
    SIGUSR1 90 s before its end: srun and the agents pass it on, both ranks stop after the same
    step and checkpoint it; the job run again ends with the weights of one process that
    trained with the whole global batch."""
    from udit.data.toy import generate_toy_data

    generate_toy_data(out=str(tmp_path / "toy"), num_classes=4, per_class=4, size=16, seed=0)
    args = [
        *("train", "--model", "DiT-S/2", "--images", str(tmp_path / "toy"), "--pixel"),
        *("--image-size", "16", "--num-classes", "4", "--global-batch", "8"),
        *("--total-steps", "8", "--ckpt-every", "100", "--num-workers", "0", "--device", "cpu"),
        *("--model-kw", "hidden_size=32", "depth=2", "num_heads=2"),
        *("--stop-poll-every", "2"),  # 8 steps: the default 10 would never poll
    ]
    launch = ["bash", str(ROOT / "workflow" / "scripts" / "launch.sh")]
    one = subprocess.run(
        [*launch, "1", "0", "1", "0", sys.executable, *args, "--run-dir", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two_cmd = [*launch, "2", "0", "1", "90", sys.executable, *args]
    two_cmd += ["--run-dir", str(tmp_path / "two")]

    def sbatch(name: str, **env) -> tuple[subprocess.CompletedProcess, str]:
        out = tmp_path / f"{name}.out"
        job = subprocess.run(
            [
                *("timeout", "-s", "KILL", "600", "sbatch", "--wait", "--nodes=1", "--ntasks=2"),
                *("--cpus-per-task=1", "--mem=3000", "--time=2", "-o", str(out)),
                "--wrap",
                shlex.join(two_cmd),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **env},
        )
        return job, job.stdout + job.stderr + (out.read_text() if out.exists() else "")

    # 8 steps > 64 s: the timer (30 s in) fires mid-run. With 4 s a step a quiet machine finished
    # all 8 just before it, and the signal then hit the torchrun agents on their way out.
    first, log = sbatch("first", UDIT_PAUSE_AFTER_STEP="8")
    assert first.returncode != 0, log[-4000:]
    assert "SIGUSR1: stopped after step" in log, log[-4000:]
    assert "another rank's stop signal" not in log  # srun + agents reached both ranks
    ckpts = sorted((tmp_path / "two" / "checkpoints").glob("ckpt-*.pt"))
    assert len(ckpts) == 1 and "ckpt-0000008" not in ckpts[0].name, ckpts
    second, log = sbatch("second")
    assert second.returncode == 0, log[-4000:]
    assert f"at step {int(ckpts[0].name[5:12])}" in log  # resumed from the stop checkpoint
    two = torch.load(tmp_path / "two/checkpoints/ckpt-0000008.pt", weights_only=True)
    ref = torch.load(tmp_path / "one/checkpoints/ckpt-0000008.pt", weights_only=True)
    assert len(two["rng"]["ranks"]) == 2  # really two ranks
    for part in ("model", "ema"):
        diff = max((two[part][k] - v).abs().max().item() for k, v in ref[part].items())
        assert diff <= 1e-6, (part, diff)


def test_profile_retries_a_user_gets(tmp_path):
    """Which `retries` a user gets from `snakemake --profile slurm` in this repository's layout
    (Snakefile at the root, the workflow profile profiles/default/config.yaml, the global
    profile slurm/config.yaml with retries 2): a rule that fails on its first two attempts and
    succeeds on the third tells them apart. Snakemake loads both profiles and the workflow
    profile wins key by key, so it must not set `retries` (README)."""
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "Snakefile").write_text('''
rule all:
    input: "flaky.txt"

rule flaky:
    output: "flaky.txt"
    resources: runtime=5, mem_mb=500
    shell:
        """
        echo "$SLURM_JOB_ID" >> attempts.txt
        if [ "$(wc -l < attempts.txt)" -lt 3 ]; then exit 3; fi
        echo done > {output}
        """
''')
    run = snakemake(
        "--profile",
        str(ROOT / "slurm"),
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(tmp_path / "Snakefile"),
        *FAST_STATUS,
    )
    out = run.stdout + run.stderr
    assert "workflow specific profile" in out, out[-3000:]  # both profiles were loaded
    assert "retries" not in yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    attempts = (tmp_path / "attempts.txt").read_text().split()
    assert yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())["retries"] == 2
    assert len(attempts) == 3, (attempts, out[-3000:])  # first try + 2 retries
    assert run.returncode == 0, out[-3000:]


def test_missing_reference_stops_the_slurm_run_before_any_sbatch(tmp_path):
    """`snakemake --profile slurm` on the paper config with one reference batch missing: no job
    is submitted, the message names the file, its config key and its URL."""
    from test_inputs import paper_config_with_inputs

    config = paper_config_with_inputs(tmp_path)
    started = time.monotonic()
    run = snakemake("--profile", str(ROOT / "slurm"), "--configfile", str(config), *FAST_STATUS)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out[-3000:]
    assert "missing512.npz (config datasets/imagenet512/reference): missing" in out
    assert not submitted_job_ids(out), out[-3000:]
    assert time.monotonic() - started < 120
