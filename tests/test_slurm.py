"""The SLURM profile against a real SLURM (scripts/local-slurm/start.sh): real sbatch, real job
states, a representative part of the smoke DAG, a fake-GPU request and a failed job retried.

Skips only when SLURM is not installed AND UDIT_REQUIRE_SLURM is unset; CI sets it (after
running scripts/local-slurm/start.sh), so a missing or stopped SLURM fails there.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = bool(os.environ.get("UDIT_REQUIRE_SLURM"))
RUN_LIMIT_S = 900        # snakemake ignores SIGTERM while jobs run: kill it (local-slurm pitfall 7)
FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None and not REQUIRED,
                       reason="SLURM not installed and UDIT_REQUIRE_SLURM unset (run scripts/local-slurm/start.sh)"),
]


@pytest.fixture(scope="module", autouse=True)
def slurm_up():
    """A reachable controller with an idle node; with UDIT_REQUIRE_SLURM anything else fails."""
    if shutil.which("sbatch") is None:
        pytest.fail("UDIT_REQUIRE_SLURM is set but sbatch is not installed: run scripts/local-slurm/start.sh")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(f"slurmctld not reachable (run scripts/local-slurm/start.sh): {ping.stdout}{ping.stderr}")


def snakemake(*args, cwd=ROOT):
    cmd = ["timeout", "-s", "KILL", str(RUN_LIMIT_S), sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def sacct_states(job_ids, *, settle_s=60):
    """Final states from accounting; slurmdbd records job ends asynchronously, so wait until
    no job is still PENDING/RUNNING/COMPLETING there."""
    deadline = time.monotonic() + settle_s
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, check=True).stdout
        states = dict(line.split("|")[:2] for line in out.split())
        settled = set(states) == set(job_ids) and not {"PENDING", "RUNNING", "COMPLETING"} & set(states.values())
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


def test_smoke_part_runs_through_sbatch(tmp_path):
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    raw["scale"]["only"] = ["toy-dit-s-4"]
    raw["datasets"]["toy32"]["per_class"] = 4
    config = tmp_path / "smoke-part.yaml"
    config.write_text(yaml.safe_dump(raw))
    results = tmp_path / "results"
    targets = [f"{results}/data/toy32/latents/manifest.json",
               f"{results}/toy-dit-s-4/train/checkpoints/ckpt-0000008.pt"]
    # --profile slurm as a user writes it, from the repository root (./slurm/)
    run = snakemake("--profile", "slurm", "--configfile", str(config), "--directory", str(tmp_path),
                    "--snakefile", str(ROOT / "Snakefile"), *FAST_STATUS, *targets)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    for target in targets:
        assert Path(target).is_file(), target
    ids = submitted_job_ids(out)
    assert len(ids) >= 4, out[-3000:]        # toy data, tiny VAE, latents, train: each its own sbatch
    states = sacct_states(ids)
    assert all(state == "COMPLETED" for state in states.values()), states


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
    run = snakemake("--profile", str(ROOT / "slurm"), "--retries", "1", "--directory", str(tmp_path),
                    "--snakefile", str(tmp_path / "Snakefile"), *FAST_STATUS)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    attempts = [line.split() for line in (tmp_path / "attempts.txt").read_text().splitlines()]
    assert len(attempts) == 2, attempts
    (first, gpu1), (second, gpu2) = attempts
    assert first != second                       # the retry is a new sbatch job
    assert gpu1 == gpu2 == "0"                   # the fake GRES granted one GPU to each
    states = sacct_states([first, second])
    assert states[first] == "FAILED" and states[second] == "COMPLETED", states
