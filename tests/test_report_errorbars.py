"""Error bars in the report's figures and the training lottery on the page.

Every reproduced point of FID vs GFLOPs, FID vs iterations and the ablation ladder that has an
interval (a bootstrap over samples, or a t interval over K training seeds) is drawn with an
asymmetric error bar (value - low, high - value, clipped at 0); points without one have none,
paper points never. The bars are read back from the matplotlib figure (its ErrorbarContainers'
segments), not from pixels. The lottery table: K, each seed's FID, mean, sd, CoV, t interval.
"""

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from test_report import SMOKE, metrics_json, smoke_results, write_json

from udit import experiments as ex
from udit import paths
from udit.report import build_report, figures, lottery, tables, tolerances

ROOT = Path(__file__).resolve().parents[1]
TAG = "0000008-cfg1.0"  # the smoke config's 400K milestone
# node -> (FID, interval low, high): u-dit-b's interval sits above its point (bootstrap FID can)
INTERVALS = {
    ("u-dit-s", TAG): (250.0, 245.0, 256.0),
    ("u-dit-b", TAG): (240.0, 241.0, 245.0),
    ("u-dit-b", "0000004-cfg1.0"): (280.0, 270.0, 281.5),
}
SEED_FIDS = [30.0, 31.0, 32.5]  # ablation-cosine's three training seeds


def with_interval(fid: float, low: float, high: float) -> dict:
    data = metrics_json(fid=fid, sfid=90.0, is_=1.5, precision=0.01, recall=0.0, uncalibrated=True)
    data["intervals"] = {"fid": {"low": low, "high": high, "level": 0.95, "resamples": 50}}
    return data


def interval_results(root: Path) -> Path:
    """The smoke fixture's partial run, three of its nodes with bootstrap FID intervals."""
    results = smoke_results(root)
    for (eid, tag), values in INTERVALS.items():
        write_json(Path(paths.metrics(results, eid, tag)), with_interval(*values))
    return results


def replicated_config(root: Path, eid: str = "ablation-cosine") -> Path:
    """config/smoke.yaml with `eid` trained on 3 seeds (scale.replicated)."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    raw["scale"]["replicated"] = {eid: 3}
    path = root / f"replicated-{eid}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def seed_runs(config: Path, eid: str = "ablation-cosine") -> list[ex.Experiment]:
    return ex.replicate_groups(ex.resolve_experiments(ex.load_config(config)))[eid]


def write_seeds(results: Path, runs: list[ex.Experiment]) -> None:
    """One stand-in metrics file per replicate at the 400K milestone: FIDs SEED_FIDS."""
    for run, fid in zip(runs, SEED_FIDS, strict=True):
        data = metrics_json(fid=fid, sfid=9.0, is_=2.0, precision=0.1, recall=0.1,
                            uncalibrated=True)  # fmt: skip
        write_json(Path(paths.metrics(results, run.id, TAG)), data)


def records_of(config: Path, results: Path):
    cfg = ex.load_config(config)
    return tables.collect_records(
        experiments=ex.resolve_experiments(cfg),
        released=ex.resolve_released(cfg),
        results=results,
        datasets=cfg["datasets"],
    ).records


@pytest.fixture(scope="module")
def interval_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("errorbars")
    results = interval_results(root)
    return root, results, records_of(SMOKE, results)


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    """Smoke results plus ablation-cosine's 3 replicate metrics files; the report built."""
    root = tmp_path_factory.mktemp("lottery")
    results = smoke_results(root)
    config = replicated_config(root)
    write_seeds(results, seed_runs(config))
    build_report(config=config, results=results, out=root / "report")
    html = (root / "report" / "index.html").read_text()
    return root, results, config, html


def bars(ax) -> list[np.ndarray]:
    """Each error bar drawn on `ax`: its segment [[x0, y0], [x1, y1]] in data coordinates."""
    out = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            for collection in container.lines[2]:
                out += [np.asarray(seg) for seg in collection.get_segments()]
    return out


def vertical(segments) -> dict[float, tuple[float, float]]:
    """x -> (bottom, top) of vertical bars."""
    return {float(s[0, 0]): (float(s[:, 1].min()), float(s[:, 1].max())) for s in segments}


# --- the bar lengths ----------------------------------------------------------------------------


def test_bar_lengths_are_each_side_of_the_value_clipped_at_zero():
    got = figures.bar_lengths([10.0, 10.0], [8.0, 10.5], [13.0, 12.0])
    assert got.tolist() == [[2.0, 0.0], [3.0, 2.0]]  # below, above; an interval above: 0 below


def test_fid_vs_gflops_bars_are_the_intervals(interval_run, tmp_path):
    _, _, records = interval_run
    drawn = figures.fid_vs_gflops(records, tmp_path)
    assert drawn.name == "fid_vs_gflops.png" and (tmp_path / drawn.name).is_file()
    paper, repro = drawn.figure.axes
    assert bars(paper) == []  # the paper reports one run, no interval
    gflops = {"u-dit-s": 6.05, "u-dit-b": 22.3}  # the fixture's flops.json
    got = vertical(bars(repro))
    assert set(got) == set(gflops.values())  # dit-s-2 (no interval) has no bar
    for eid, x in gflops.items():
        fid, low, high = INTERVALS[(eid, TAG)]
        bottom, top = got[x]
        assert (fid - bottom, top - fid) == pytest.approx((max(fid - low, 0), max(high - fid, 0)))
    assert got[6.05] == pytest.approx((245.0, 256.0))
    assert got[22.3] == pytest.approx((240.0, 245.0))  # low 241 above the point: from the point
    legend = [t.get_text() for t in repro.get_legend().texts]
    assert legend == [
        "95% interval: bootstrap over samples, or t over K training seeds where K > 1"
    ]


def test_fid_vs_iterations_bars_on_each_evaluated_milestone(interval_run, tmp_path):
    _, _, records = interval_run
    milestones = {eid: exp.milestones for eid, exp in ex.resolve_experiments(
        ex.load_config(SMOKE)).items()}  # fmt: skip
    drawn = figures.fid_vs_iterations(records, milestones, tmp_path)
    paper, repro = drawn.figure.axes
    assert bars(paper) == []
    got = vertical(bars(repro))
    assert got == {4.0: pytest.approx((270.0, 281.5)), 8.0: pytest.approx((240.0, 245.0))}


def test_a_point_without_an_interval_has_no_bar(tmp_path):
    results = smoke_results(tmp_path)  # no metrics file carries an interval
    records = records_of(SMOKE, results)
    for drawn in (
        figures.fid_vs_gflops(records, tmp_path / "f"),
        figures.ablation_ladder(records, tmp_path / "f"),
    ):
        assert all(bars(ax) == [] for ax in drawn.figure.axes), drawn.name
        assert drawn.figure.axes[1].get_legend() is None  # nothing to explain


# --- seeds: the ladder and the lottery ----------------------------------------------------------


def test_ladder_bar_is_the_t_interval_over_seeds(seeds_run, tmp_path):
    _, results, config, _ = seeds_run
    records = records_of(config, results)
    drawn = figures.ablation_ladder(records, tmp_path)
    paper, repro = drawn.figure.axes
    assert bars(paper) == []
    rows = list(dict.fromkeys(records.loc[records["table"] == "ablation_T9", "row"]))
    rung = rows.index("+ cosine similarity")
    (segment,) = bars(repro)  # U-DiT-T's rung (FID 310, no interval) has none
    assert segment[:, 1].tolist() == [rung, rung]
    want = tolerances.seeds_interval(SEED_FIDS)
    mean = statistics.fmean(SEED_FIDS)
    assert segment[:, 0].min() == pytest.approx(want["low"])
    assert (mean - segment[:, 0].min(), segment[:, 0].max() - mean) == pytest.approx(
        (mean - want["low"], want["high"] - mean)
    )
    face = repro.patches[rung].get_facecolor()
    assert face == (1.0, 1.0, 1.0, 1.0)  # pooled seeds: hollow
    assert repro.patches[rows.index("U-DiT-T (DiT-UNet + downsampling)")].get_facecolor() != face
    assert any(t.get_text().strip() == "n=3" for t in repro.texts)


def test_a_pooled_gflops_point_is_hollow_with_n_and_its_t_bar(tmp_path):
    results = smoke_results(tmp_path)
    config = replicated_config(tmp_path, "u-dit-s")
    write_seeds(results, seed_runs(config, "u-dit-s"))
    repro = figures.fid_vs_gflops(records_of(config, results), tmp_path / "f").figure.axes[1]
    want = tolerances.seeds_interval(SEED_FIDS)
    assert vertical(bars(repro)) == {6.05: pytest.approx((want["low"], want["high"]))}
    points = [c for c in repro.collections if isinstance(c, PathCollection)]  # the scatters
    hollow = [c for c in points if tuple(c.get_facecolor()[0]) == (1, 1, 1, 1)]
    assert len(points) == 3 and len(hollow) == 1  # dit-s-2 and u-dit-b: one run each, filled
    assert [tuple(c.get_offsets()[0]) for c in hollow] == [
        pytest.approx((6.05, statistics.fmean(SEED_FIDS)))
    ]
    assert "u-dit-s n=3" in [t.get_text() for t in repro.texts]
    assert figures.SEEDS_NOTE in [t.get_text() for t in repro.get_legend().texts]


def test_lottery_measures_k_cov_and_the_t_interval(seeds_run):
    _, results, config, _ = seeds_run
    measured = lottery.measure(ex.resolve_experiments(ex.load_config(config)), results)
    (line,) = measured.lines
    sd = statistics.stdev(SEED_FIDS)  # 1.258: sample sd, K - 1
    assert (line.group, line.tag, line.k) == ("ablation-cosine", TAG, 3)
    assert [s.seed for s in line.seeds] == [0, 1, 2]
    assert line.sd == pytest.approx(sd)
    assert line.cov == pytest.approx(sd / statistics.fmean(SEED_FIDS))  # 4.0%, not variance
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2)
    assert (line.interval["low"], line.interval["high"]) == pytest.approx(
        (statistics.fmean(SEED_FIDS) - half, statistics.fmean(SEED_FIDS) + half)
    )
    assert measured.median_cov == pytest.approx(line.cov) and measured.groups == 1
    assert measured.uncalibrated and line.in_median and line.samples == 16
    assert measured.assumed_cov == 0.013


def test_lottery_table_on_the_page(seeds_run):
    _, _, _, html = seeds_run
    table = html.split('id="lottery-table"')[1].split("</table>")[0]
    mean, sd = statistics.fmean(SEED_FIDS), statistics.stdev(SEED_FIDS)
    want = tolerances.seeds_interval(SEED_FIDS)
    assert '<td class="k">3</td>' in table
    assert "seed 0: 30.00, seed 1: 31.00, seed 2: 32.50" in table
    assert f"{sd / mean:.1%} (uncalibrated)" in table  # 4.0%
    assert f"[{want['low']:.2f}, {want['high']:.2f}] at 95%" in table
    median = html.split('id="lottery-median"')[1].split("</p>")[0]
    assert f"{sd / mean:.1%}" in median and "1.3%" in median and "The FID Lottery" in median
    assert 'id="lottery-uncalibrated"' in median
    assert "lottery-none" not in html


def test_without_replicates_one_line_says_so(interval_run):
    root, results, _ = interval_run
    build_report(config=SMOKE, results=results, out=root / "report")
    html = (root / "report" / "index.html").read_text()
    assert 'id="lottery-none"' in html and 'id="lottery-table"' not in html
    assert "No experiment group has two or more replicates" in html
    captions = [c.split("</figcaption>")[0] for c in html.split("<figcaption>")[1:]]
    says = [c for c in captions if "t interval over K training seeds where K &gt; 1" in c]
    assert len(says) == 3  # FID vs GFLOPs, FID vs iterations, the ablation ladder
