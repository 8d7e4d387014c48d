"""`udit report`: tables, pending cells, tolerance summary, the uncalibrated banner, and the page
rendered by a real headless Chromium from disk.

The inputs are written here in the report's input contract (the files udit flops / evaluate /
train / sample write): results/flops/flops.json, results/{exp}/metrics/{step}-cfg{cfg}.json,
results/{exp}/train/log.jsonl, results/{exp}/samples/{step}-cfg{cfg}.png.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from udit import experiments as ex
from udit.report import build_report, main, tolerances

SMOKE = Path(__file__).resolve().parents[1] / "config" / "smoke.yaml"
SHA_STANDIN = "0123abcd" * 8  # not the official 6726825d... prefix
SHA_OFFICIAL = "6726825d" + "0" * 56  # prefix of the official torch-fidelity weights
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
BROWSER_TIMEOUT_S = 90


def metrics_json(*, fid, sfid, is_, precision, recall, uncalibrated, n=16) -> dict:
    """The shape `udit evaluate` writes (udit/metrics/evaluate.py)."""
    return {
        "fid": fid,
        "sfid": sfid,
        "is": is_,
        "precision": precision,
        "recall": recall,
        "kid": 0.01,
        "kid_std": 0.001,
        "uncalibrated": uncalibrated,
        "protocol": {"N": n, "N_reference": 64, "k": 3},
        "provenance": {
            "versions": {"python": "3.11", "torch": "2.x", "torch_fidelity": "0.4.0"},
            "device": "cpu",
            "inception_weights": {
                "file": "standin.pth" if uncalibrated else "weights-inception-2015-12-05-6726825d.pth",
                "sha256": SHA_STANDIN if uncalibrated else SHA_OFFICIAL,
                "official": not uncalibrated,
            },
            "sha256": {"samples": "ab" * 32, "reference": "cd" * 32},
            "git_commit": "f" * 40,
            "time_utc": "2026-01-01T00:00:00+00:00",
        },
    }


def flops_row(model: str, gflops: float, input_size: int = 32) -> dict:
    return {
        "model": model,
        "slug": model.lower(),
        "input_size": input_size,
        "params_M": 1.0,
        "gflops": gflops,
        "paper_gflops": None,
        "rel_err": None,
        "source": "",
        "note": "",
    }


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_grid(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (34, 34, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def smoke_results(root: Path) -> Path:
    """A partial smoke run: some nodes evaluated (stand-in Inception), the rest not run."""
    results = root / "results"
    write_json(
        results / "flops" / "flops.json",
        [
            flops_row("DiT-S/2", 6.07),
            flops_row("U-DiT-S", 6.05),
            flops_row("U-DiT-B", 22.3),
            flops_row("DiT-UNet", 1.39),
            flops_row("U-DiT-T", 0.908),
        ],
    )
    done = {
        ("dit-s-2", "0000008-cfg1.0"): 300.0,
        ("u-dit-s", "0000008-cfg1.0"): 250.0,
        ("u-dit-b", "0000004-cfg1.0"): 280.0,
        ("u-dit-b", "0000008-cfg1.0"): 240.0,
        ("u-dit-t", "0000008-cfg1.0"): 310.0,
        ("downsampler-dense-conv", "0000008-cfg1.0"): 333.0,  # no paper row references it
    }
    for (eid, tag), fid in done.items():
        write_json(
            results / eid / "metrics" / f"{tag}.json",
            metrics_json(
                fid=fid, sfid=90.0, is_=1.5, precision=0.01, recall=0.0, uncalibrated=True
            ),
        )
        write_grid(results / eid / "samples" / f"{tag}.png")
    torn = results / "u-dit-l" / "metrics" / "0000008-cfg1.0.json"  # evaluate killed mid-write
    torn.parent.mkdir(parents=True)
    torn.write_text('{"fid": 1')
    log = results / "u-dit-b" / "train" / "log.jsonl"
    log.parent.mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "step": s,
                "loss": 1.0 / s,
                "mse": 0.5 / s,
                "vb": 0.5 / s,
                "grad_norm": 1.0,
                "lr": 1e-4,
                "images_per_sec": 10.0,
            }
        )
        for s in range(1, 17)
    ]
    log.write_text("\n".join(lines) + '\n{"step": 17, "lo')  # torn last line of a killed job
    return results


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    results = smoke_results(root)
    summary = build_report(config=SMOKE, results=results, out=root / "report")
    return root / "report", results, summary


def test_partial_results_show_pending_not_zero(smoke_report):
    out, _, summary = smoke_report
    t2 = pd.read_csv(out / "tables" / "main_400k_T2.csv", header=[0, 1], keep_default_na=False)
    t2 = t2.set_index(t2.columns[1])  # ('', 'run')
    assert t2.loc["dit-b-2/0000008-cfg1.0", ("FID", "reproduced")].iloc[0] == "pending"  # not run
    assert (
        t2.loc["dit-b-2/0000008-cfg1.0", ("GFLOPs", "reproduced")].iloc[0] == "pending"
    )  # not in flops.json
    assert t2.loc["u-dit-s/0000008-cfg1.0", ("FID", "reproduced")] == "250.00 (uncalibrated)"
    assert t2.loc["u-dit-s/0000008-cfg1.0", ("GFLOPs", "reproduced")] == "6.05"
    assert t2.loc["u-dit-l/0000008-cfg1.0", ("FID", "reproduced")] == "pending"  # unreadable JSON
    records = pd.read_csv(out / "tables" / "records.csv")
    pend = records[(records["status"] == "pending")]
    assert pend["reproduced"].isna().all()  # pending is never a number, let alone 0
    torn = records[(records["node"] == "u-dit-l/0000008-cfg1.0") & (records["metric"] == "fid")]
    assert torn["note"].str.startswith("unreadable metrics file").all()
    assert summary["pending"] == len(pend) > 0
    html = (out / "index.html").read_text()
    assert "pending" in html and "Table 5" in html and "Table 10" in html
    for name in ["fid_vs_gflops", "fid_vs_iterations", "ablation_ladder", "training_loss"]:
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
        assert (out / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "dit-s-2-0000008-cfg1.0.png",
        "downsampler-dense-conv-0000008-cfg1.0.png",
        "u-dit-b-0000004-cfg1.0.png",
        "u-dit-b-0000008-cfg1.0.png",
        "u-dit-s-0000008-cfg1.0.png",
        "u-dit-t-0000008-cfg1.0.png",
    ]


def test_uncalibrated_numbers_banner_and_never_counted(smoke_report):
    out, _, summary = smoke_report
    html = (out / "index.html").read_text()
    assert 'id="uncalibrated-banner"' in html
    for node in ["dit-s-2/0000008-cfg1.0", "u-dit-b/0000004-cfg1.0"]:
        assert f"<li><code>{node}</code></li>" in html
    # a run no paper row references is still listed, with its scores and provenance
    assert "<li><code>downsampler-dense-conv/0000008-cfg1.0</code></li>" in html
    assert 'id="no-paper-number-table"' in html and "333.000 (uncalibrated)" in html
    assert 'id="prov-downsampler-dense-conv-0000008-cfg1.0"' in html
    records = pd.read_csv(out / "tables" / "records.csv")
    inception = records[records["metric"] != "gflops"]
    assert not (
        inception["uncalibrated"] & inception["status"].isin(["reproduced", "disagrees"])
    ).any()
    assert summary["uncalibrated"] == (records["status"] == "uncalibrated").sum() > 0


def calibrated_results(root: Path, *, one_uncalibrated: bool) -> Path:
    """u-dit-s evaluated with the official weights, values chosen per tolerance band."""
    results = root / "results"
    write_json(results / "flops" / "flops.json", [flops_row("U-DiT-S", 6.05)])  # paper 6.04: +0.17%
    paper = ex.paper_row(table="main_400k_T2", row="U-DiT-S")
    write_json(
        results / "u-dit-s" / "metrics" / "0000008-cfg1.0.json",
        metrics_json(
            fid=paper["fid"] * 1.04,  # within 5%             -> reproduced
            sfid=paper["sfid"] * 1.2,  # outside 10% / 0.5     -> disagrees
            is_=paper["is"] * 0.90,  # outside 5%            -> disagrees
            precision=paper["precision"] + 0.015,  # within 0.02 absolute  -> reproduced
            recall=paper["recall"] - 0.05,  # outside 0.02          -> disagrees
            uncalibrated=False,
        ),
    )
    if one_uncalibrated:
        write_json(
            results / "dit-s-2" / "metrics" / "0000008-cfg1.0.json",
            metrics_json(
                fid=70.0, sfid=12.0, is_=20.0, precision=0.37, recall=0.56, uncalibrated=True
            ),
        )
    return results


def test_tolerance_summary_counts(tmp_path):
    results = calibrated_results(tmp_path, one_uncalibrated=False)
    summary = build_report(config=SMOKE, results=results, out=tmp_path / "report")
    # u-dit-s answers two paper rows with these numbers (T2 U-DiT-S, T10 "all modifications"):
    # gflops, fid, precision agree and sfid, is, recall disagree in each.
    assert summary["reproduced"] == 2 * 3
    assert summary["disagrees"] == 2 * 3
    assert summary["uncalibrated"] == 0
    assert summary["pending"] == summary["total"] - 12
    html = (tmp_path / "report" / "index.html").read_text()
    assert "uncalibrated-banner" not in html
    assert re.search(r'id="count-reproduced">6<', html) and re.search(
        r'id="count-disagrees">6<', html
    )


def test_banner_appears_with_one_uncalibrated_node(tmp_path):
    results = calibrated_results(tmp_path, one_uncalibrated=True)
    build_report(config=SMOKE, results=results, out=tmp_path / "report")
    html = (tmp_path / "report" / "index.html").read_text()
    banner = html[
        html.index('id="uncalibrated-banner"') : html.index(
            "</div>", html.index("uncalibrated-banner")
        )
    ]
    assert "dit-s-2/0000008-cfg1.0" in banner and "u-dit-s" not in banner


def test_tolerance_bands():
    fid = tolerances.TOLERANCES["fid"]
    assert fid.allows(20.0, 20.99) and not fid.allows(20.0, 21.01)  # 1.0 absolute floor
    assert fid.allows(100.0, 104.9) and not fid.allows(100.0, 105.1)  # 5% relative
    assert tolerances.judge("fid", None, 3.0, uncalibrated=False, tol=fid) == "no paper value"
    assert (
        tolerances.judge("gflops", 1.0, 1.0, uncalibrated=True, tol=fid) == "reproduced"
    )  # fvcore needs no Inception


def test_cli_empty_results_and_clear_errors(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert (
        main(
            [
                "--config",
                str(SMOKE),
                "--results",
                str(tmp_path / "results"),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    html = (tmp_path / "r" / "index.html").read_text()
    assert "uncalibrated-banner" not in html and "pending: no sample grid yet" in html
    assert (
        main(
            [
                "--config",
                str(SMOKE),
                "--results",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "results folder" in capsys.readouterr().err
    assert (
        main(["--config", str(tmp_path / "missing.yaml"), "--results", str(tmp_path / "results")])
        == 2
    )
    assert "missing.yaml does not exist" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(args: list[str], *, profile: Path) -> subprocess.CompletedProcess:
    cmd = [
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S
    )


@pytest.mark.slow
def test_page_renders_in_headless_chromium(smoke_report, tmp_path):
    if chromium() is None:
        if os.environ.get("UDIT_REQUIRE_BROWSER"):
            pytest.fail(
                "UDIT_REQUIRE_BROWSER is set but chromium is not installed (apt-get install chromium)"
            )
        pytest.skip("chromium not installed")
    out, _, _ = smoke_report
    page = (out / "index.html").resolve().as_uri()  # file://: no server
    dom = run_chromium(["--dump-dom", page], profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    check = re.search(r'<div id="render-check"([^>]*)>', dom.stdout)
    assert check, "page did not render the self-check element"
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', check.group(1)))
    shown = len(re.findall(r'<h3 id="[^"]+">Table \d+', dom.stdout))
    assert attrs["done"] == "1", attrs  # the load handler ran
    assert attrs["broken"] == "0", attrs  # every <img> decoded
    assert int(attrs["images"]) == 4 + 6  # 4 figures + 6 sample grids
    assert int(attrs["tables"]) == shown == 8  # T1 T9 T7 T2 T4 T5 T10 T6 (smoke runs them all)
    assert "{{" not in dom.stdout and "{%" not in dom.stdout
    assert 'id="uncalibrated-banner"' in dom.stdout
    shot = tmp_path / "report.png"
    res = run_chromium(
        [f"--screenshot={shot}", "--window-size=1300,2400", page], profile=tmp_path / "profile2"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1300, 2400)
        assert (
            len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 10
        )  # not blank
