"""`udit plan`'s printed plans, line for line, against files a person has read.

The plan is how a researcher budgets a cluster: every number, label and note in it is read by a
person deciding what to run. The other plan tests check its arithmetic from outside (T11 rates,
fvcore counts, JSON read back); these hold the whole text (tests/printed/plans/), so a wrong
label, a dropped note or a changed column shows as a diff (tests/printed_text.py).
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from printed_text import check_printed

from udit import paths, plan

ROOT = Path(__file__).resolve().parents[1]

# A measured speed file (benchmarks/speed.py --json --quick): one harness row and one
# non-harness row (not read: the plan reads harness paths only), both forward-only rates.
SPEED = {
    "schema": 1,
    "quick": True,
    "train": [
        {
            "model": "U-DiT-B",
            "path": "harness-tf32",
            "precision": "tf32",
            "images_per_s": 400.0,
            "gmacs_per_image": 22.2,
        },
        {
            "model": "DiT-XL/2",
            "path": "official-tf32",
            "precision": "tf32",
            "images_per_s": 9999.0,
            "gmacs_per_image": 118.7,
        },
    ],
    "inception": {"images_per_s": 2000.0},
    "vae_decode": {"images_per_s": 150.0},
}

CASES = {
    "paper": ["--configfile", "config/paper.yaml"],
    "paper-claims": ["--configfile", "config/paper.yaml", "--claims"],
    "paper-claims-noise": ["--configfile", "config/paper.yaml", "--claims", "--noise-cov", "0.02"],
    "paper-speed": ["--configfile", "config/paper.yaml", "--speed-json", "SPEED"],
    "paper-given-rate": ["--configfile", "config/paper.yaml", "--gpu-macs-per-s", "5e12"],
    "smoke": ["--configfile", "config/smoke.yaml"],
    "smoke-claims": ["--configfile", "config/smoke.yaml", "--claims"],
    "measured-noise": ["--configfile", "MEASURED", "--claims", "--measured-noise"],
    # no defaults, resources or partitions section: the recipe's defaults, one GPU, no chunks
    "minimal": ["--configfile", "MINIMAL"],
    "minimal-claims": ["--configfile", "MINIMAL", "--claims"],
    # the smoke scale on four experiments, without `replicated`: most claims lack an arm
    "smoke-four-claims": ["--configfile", "FOUR", "--claims"],
    "smoke-four": ["--configfile", "FOUR"],
}

MINIMAL = {
    "datasets": {
        "toy32": {"source": "toy", "image_size": 32, "num_classes": 4, "vae": "tiny"},
    },
    "inception": {"weights": "standin"},
    "experiments": {
        "toy-dit-s-4": {
            "model": "DiT-S/4",
            "table": "T1",
            "size": "toy",
            "dataset": "toy32",
            "iterations": 400_000,
            "evaluations": [{"step": 400_000, "paper": [{"table": "toy_T1", "row": "DiT-S/4"}]}],
        },
        "u-dit-t": {
            "model": "U-DiT-T",
            "table": "T1",
            "size": "toy",
            "dataset": "toy32",
            "iterations": 400_000,
            "evaluations": [
                {
                    "step": 400_000,
                    "paper": [{"table": "toy_T1", "row": "DiT-UNet + token downsampling"}],
                }
            ],
        },
    },
}


def measured_config(tmp_path: Path) -> Path:
    """config/paper.yaml with u-dit-s replicated twice and both seeds evaluated (FID 30, 31.1)
    in a results folder of its own: the claims plan takes FID's noise from them."""
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    config["results"] = "results-measured"
    config["experiments"]["u-dit-s"]["replicates"] = 2
    last = max(e["step"] for e in config["experiments"]["u-dit-s"]["evaluations"])
    for eid, fid in (("u-dit-s", 30.0), ("u-dit-s-seed1", 31.1)):
        out = Path(paths.metrics(tmp_path / "results-measured", eid, paths.eval_tag(last, 1.0)))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics_doc(fid)))
    path = tmp_path / "measured.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def metrics_doc(fid: float) -> dict:
    from test_report import metrics_json

    return metrics_json(
        fid=fid, sfid=6, is_=60, precision=0.6, recall=0.6, uncalibrated=False, n=50_000
    )


def printed(name: str, tmp_path: Path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(ROOT)
    args = list(CASES[name])
    if "SPEED" in args:
        speed = tmp_path / "speed.json"
        speed.write_text(json.dumps(SPEED))
        args[args.index("SPEED")] = str(speed)
    if "MINIMAL" in args:
        config = tmp_path / "minimal.yaml"
        config.write_text(yaml.safe_dump(MINIMAL))
        args[args.index("MINIMAL")] = str(config)
    if "FOUR" in args:
        config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
        config["scale"]["only"] = ["toy-dit-unet", "u-dit-t", "ablation-cosine", "u-dit-l"]
        del config["scale"]["replicated"]
        (tmp_path / "four.yaml").write_text(yaml.safe_dump(config))
        args[args.index("FOUR")] = str(tmp_path / "four.yaml")
    if "MEASURED" in args:
        args[args.index("MEASURED")] = str(measured_config(tmp_path))
        monkeypatch.chdir(tmp_path)  # the config's results folder is relative
    capsys.readouterr()
    assert plan.main(args) == 0
    return capsys.readouterr().out.replace(str(tmp_path), "TMP")


@pytest.mark.parametrize("name", sorted(CASES))
def test_printed_plan_is_the_one_read(name, tmp_path, monkeypatch, capsys):
    check_printed(printed(name, tmp_path, monkeypatch, capsys), f"plans/{name}.txt")


def _columns(block: list[str]) -> list[dict]:
    """The rows of one `udit plan` table, each a dict keyed by its header (cells are two or
    more spaces apart; a name may hold single spaces)."""
    header = re.split(r" {2,}", block[0])
    assert set(block[1]) == {"-"} and len(block[1]) == len(block[0])
    return [dict(zip(header, re.split(r" {2,}", line.strip()), strict=True)) for line in block[2:]]


@pytest.mark.parametrize(
    "configfile", ["config/smoke.yaml", "config/paper.yaml"]
)  # the paper's has chunk ends
def test_plan_table_reads_back_to_the_json(configfile, capsys):
    """What `udit plan` prints, read back through its column headers, is what `--format json`
    holds, node by node, and its totals are the JSON's sums: a mislabelled or shifted column,
    a lost chunk-end star or a wrong total shows here."""
    plan.main(["--configfile", configfile, "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    plan.main(["--configfile", configfile])
    text = capsys.readouterr().out.rstrip("\n")
    train, sample, totals = text.split("\n\n")
    assert train.splitlines()[0] == "training nodes (* = chunk end added for max_job_hours)"
    assert sample.splitlines()[0] == "sampling and evaluation nodes"
    close = {"rel": 1e-3}  # the table shows 4 significant digits
    nodes = _columns(train.splitlines()[1:])
    assert len(nodes) == len(doc["nodes"]) > 0
    for shown, row in zip(nodes, doc["nodes"], strict=True):
        assert (shown["experiment"], shown["model"], shown["tab"], shown["rate"]) == (
            row["experiment"], row["model"], row["table"], row["rate_source"])  # fmt: skip
        star = "" if row["milestone"] else "*"
        assert shown["steps"] == f"{row['from_step']}->{row['to_step']}{star}"
        assert int(shown["GPUs"]) == row["gpus"]
        assert float(shown["GFLOPs"]) == pytest.approx(row["gflops"], abs=6e-4)  # 3 decimals
        for column, key in (("PFLOPs", "train_pflops"),
                            ("GPU-h", "gpu_hours"), ("job h", "hours")):  # fmt: skip
            assert float(shown[column]) == pytest.approx(row[key], **close), column
    evals = _columns(sample.splitlines()[1:])
    assert len(evals) == len(doc["sampling"]) > 0
    for shown, row in zip(evals, doc["sampling"], strict=True):
        assert (shown["experiment"], shown["evaluation"]) == (row["experiment"], row["tag"])
        assert (int(shown["samples"]), int(shown["steps"]), int(shown["GPUs"])) == (
            row["samples"], row["steps"], row["gpus"])  # fmt: skip
        assert float(shown["cfg"]) == row["cfg"]
        for column, key in (("PFLOPs", "sample_pflops"), ("sample GPU-h", "sample_gpu_hours"),
                            ("eval GPU-h", "eval_gpu_hours"), ("job h", "hours")):  # fmt: skip
            assert float(shown[column]) == pytest.approx(row[key], **close), column
    numbers = [
        float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e[-+]\d+)?", totals.split("\ncompute")[0])
    ]
    milestones = sum(r["milestone"] for r in doc["nodes"])
    sample_h, eval_h = doc["total_sample_gpu_hours"], doc["total_eval_gpu_hours"]
    want = [len(nodes), milestones, len(nodes) - milestones, doc["total_pflops"],
            doc["total_gpu_hours"], max(r["hours"] for r in doc["nodes"]), len(evals), sample_h,
            eval_h, doc["total_gpu_hours"] + sample_h + eval_h]  # fmt: skip
    assert numbers == pytest.approx(want, **close)
    assert totals.splitlines()[-1].endswith(f"rates: {doc['throughput_source']}")
