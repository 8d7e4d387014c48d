"""The training lottery: `replicates: K` trains K seeds as separate DAG nodes, the report pools
them (mean and t interval over seeds) and the claims compare them seed by seed."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_report import metrics_json, write_json  # the report tests' metrics files

from udit import experiments as ex
from udit import paths
from udit.dag import Dag
from udit.report import claims, tolerances

ROOT = Path(__file__).resolve().parents[1]


def paper_config(**defaults) -> dict:
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    config["defaults"].update(defaults)
    return config


def test_replicates_are_separate_runs_with_their_own_seeds():
    config = paper_config(replicates=3)
    config["experiments"]["u-dit-t"]["seed"] = 5
    exps = ex.resolve_experiments(config)
    runs = ex.replicate_groups(exps)["u-dit-t"]
    assert [(r.id, r.seed, r.replicate, r.group) for r in runs] == [
        ("u-dit-t", 5, 0, "u-dit-t"),
        ("u-dit-t-seed6", 6, 1, "u-dit-t"),
        ("u-dit-t-seed7", 7, 2, "u-dit-t"),
    ]
    # everything else of the run is the experiment's own: the same recipe, milestones, paper rows
    assert runs[1].evaluations == runs[0].evaluations and runs[1].model == runs[0].model
    assert len(exps) == 3 * len(config["experiments"])
    folders = {paths.train_dir("results", e.id) for e in exps.values()}
    assert len(folders) == len(exps)  # no two replicates share a run folder


def test_an_experiment_sets_its_own_count_and_one_is_the_default():
    config = paper_config()
    config["experiments"]["u-dit-t"]["replicates"] = 2
    groups = ex.replicate_groups(ex.resolve_experiments(config))
    assert len(groups["u-dit-t"]) == 2 and len(groups["u-dit-s"]) == 1


def test_a_replicate_id_that_is_an_experiment_already_is_refused():
    config = paper_config()
    config["experiments"]["u-dit-t"]["replicates"] = 2
    config["experiments"]["u-dit-t-seed1"] = config["experiments"]["u-dit-s"]
    with pytest.raises(ex.ConfigError, match="replicate id 'u-dit-t-seed1'"):
        ex.resolve_experiments(config)


def test_the_schema_bounds_the_count():
    config = paper_config(replicates=0)
    with pytest.raises(ex.ConfigError, match="replicates"):
        ex.validate_config(config)


def smoke(tmp_path, replicates: dict) -> dict:
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    raw["scale"]["replicated"] = replicates
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return ex.load_config(path)


def test_scale_replicates_names_only_experiments_it_runs(tmp_path):
    assert (
        len(ex.replicate_groups(ex.resolve_experiments(smoke(tmp_path, {"u-dit-t": 3})))["u-dit-t"])
        == 3
    )
    with pytest.raises(
        ex.ConfigError, match="scale.replicated names experiments not in .*: u-dit-tt"
    ):
        smoke(tmp_path, {"u-dit-tt": 2})


def test_each_replicate_node_trains_with_its_own_seed(tmp_path):
    """What the train jobs get (`--options`): one seed per replicate, its own run folder."""
    dag = Dag(smoke(tmp_path, {"ablation-cosine": 3}))
    resources = SimpleNamespace(cpus_per_task=1, gpu=0, nodes=1)
    options = [
        json.loads(dag.train_options(SimpleNamespace(experiment=eid, step="0000008"), resources))
        for eid in ("ablation-cosine", "ablation-cosine-seed1", "ablation-cosine-seed2")
    ]
    assert [o["seed"] for o in options] == [0, 1, 2]
    assert len({o["run_dir"] for o in options}) == 3
    assert len({json.dumps({**o, "seed": 0, "run_dir": ""}) for o in options}) == 1  # else same
    evaluation = dag.evaluation(
        SimpleNamespace(experiment="ablation-cosine-seed2", tag="0000008-cfg1.0")
    )
    assert evaluation.paper  # a replicate's samples are judged against the same paper row


def test_plan_prices_every_replicate():
    """`udit plan` sees the replicates as runs: three seeds cost three times one (the paper
    config: registry models, whose FLOPs are tabulated, so no model is traced)."""
    from udit import plan

    one = paper_config()
    three = paper_config()
    three["experiments"]["u-dit-t"]["replicates"] = 3
    hours = {}
    for name, config in (("one", one), ("three", three)):
        rows = plan.plan_rows(config, throughput=plan.Throughput.from_config(config))
        hours[name] = sum(r.gpu_hours for r in rows if r.experiment.startswith("u-dit-t"))
    assert hours["one"] > 0 and hours["three"] == pytest.approx(3 * hours["one"])


# --- pooling: the report's number and interval over seeds ----------------------------------------
def test_seeds_interval_is_student_t():
    got = tolerances.seeds_interval([10.0, 11.0, 12.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(K)
    assert got["low"] == pytest.approx(11 - half) and got["high"] == pytest.approx(11 + half)
    assert got["runs"] == 3 and got["sd"] == pytest.approx(1.0)
    # more seeds with the same spread: a narrower interval (the sample size is not ignored)
    wide = tolerances.seeds_interval([10.0, 12.0])
    narrow = tolerances.seeds_interval([10.0, 12.0] * 4)
    assert narrow["high"] - narrow["low"] < (wide["high"] - wide["low"]) / 4


def number(values: dict, **kw) -> claims.Number:
    mean = sum(values.values()) / len(values)
    spread = tolerances.seeds_interval(list(values.values()))
    return claims.Number(mean, spread["low"], spread["high"], "n", values, **kw)


FID_LOWER = claims.Comparison("fid", ("t", "A"), ("t", "B"))


def test_claims_pair_replicates_seed_by_seed():
    """A shared seed effect cancels in the paired difference: A is better than B on every
    seed by about 1, while the seeds move both by 10. Unpaired, that is inconclusive."""
    a = number({0: 20.0, 1: 30.0, 2: 40.0})
    b = number({0: 21.0, 1: 31.1, 2: 40.9})
    outcome = claims.compare(FID_LOWER, a, b)
    assert outcome.status == "holds" and "paired over 3 training seeds" in outcome.basis
    unpaired = claims.compare(FID_LOWER, claims.Number(a.value, a.low, a.high),
                              claims.Number(b.value, b.low, b.high))  # fmt: skip
    assert unpaired.status == "inconclusive"
    # the claim's direction matters: B < A fails on the same numbers
    flipped = claims.Comparison("fid", ("t", "B"), ("t", "A"))
    assert claims.compare(flipped, b, a).status == "fails"


def test_paired_needs_two_shared_seeds_and_one_inception():
    a = number({0: 20.0, 1: 21.0})
    b = number({2: 30.0, 3: 31.0})
    assert "paired" not in claims.compare(FID_LOWER, a, b).basis  # no seed in common
    stand_in = number({0: 20.0, 1: 21.0}, uncalibrated=True)
    assert claims.compare(FID_LOWER, stand_in, number({0: 30.0, 1: 31.0})).status == "pending"
    both = claims.compare(FID_LOWER, stand_in, number({0: 30.0, 1: 31.0}, uncalibrated=True))
    assert both.status == "holds" and "uncalibrated" in both.basis


def test_the_report_pools_a_rows_replicates(tmp_path):
    """Three replicate metrics files -> one record per metric: their mean, a t interval over
    the seeds, runs 3; the verdict says what it rests on."""
    from udit.report import tables

    config = paper_config()
    config["experiments"]["u-dit-s"]["replicates"] = 3
    exps = ex.resolve_experiments(config)
    results = tmp_path / "results"
    fids = {"u-dit-s": 30.0, "u-dit-s-seed1": 31.0, "u-dit-s-seed2": 32.5}
    for eid, fid in fids.items():
        data = metrics_json(fid=fid, sfid=6, is_=60, precision=0.6, recall=0.6,
                            uncalibrated=False, n=50_000)  # fmt: skip
        write_json(Path(paths.metrics(results, eid, "0400000-cfg1.0")), data)
    records = tables.collect_records(experiments=exps, released={}, results=results).records
    fid = records[(records["table"] == "main_400k_T2") & (records["row"] == "U-DiT-S")
                  & (records["metric"] == "fid")]  # fmt: skip
    assert len(fid) == 1
    rec = fid.iloc[0]
    assert rec["reproduced"] == pytest.approx(sum(fids.values()) / 3) and rec["runs"] == 3
    want = tolerances.seeds_interval(list(fids.values()))
    assert (rec["low"], rec["high"]) == (pytest.approx(want["low"]), pytest.approx(want["high"]))
    assert rec["replicates"] == {0: 30.0, 1: 31.0, 2: 32.5}
    assert "runs: 3" in rec["basis"] and "t over 3 training seeds" in rec["basis"]


# --- the generation lottery: `sample_seeds: M` -----------------------------------------------


def test_sampling_seeds_are_evaluation_nodes_with_their_own_seeds(tmp_path):
    """Each sampling seed of an evaluation is its own sample/evaluate node: its own tag (so its
    own files) and its own `--options` seed; the first keeps the plain tag."""
    config = paper_config(sample_seed=4)
    config["experiments"]["u-dit-s"]["sample_seeds"] = 3
    exps = ex.resolve_experiments(config)
    first = [e for e in exps["u-dit-s"].evaluations if e.step == 400000 and e.cfg == 1.0]
    assert [(e.tag, e.sample_seed, e.draw) for e in first] == [
        ("0400000-cfg1.0", 4, 0),
        ("0400000-cfg1.0-seed5", 5, 1),
        ("0400000-cfg1.0-seed6", 6, 2),
    ]
    assert {e.base_tag for e in first} == {"0400000-cfg1.0"}
    assert len(exps["u-dit-b"].evaluations) == len(config["experiments"]["u-dit-b"]["evaluations"])
    dag = Dag(config)
    seeds = [
        json.loads(dag.sample_options(SimpleNamespace(experiment="u-dit-s", tag=e.tag)))["seed"]
        for e in first
    ]
    assert seeds == [4, 5, 6]
    assert dag.sample_checkpoint(SimpleNamespace(experiment="u-dit-s", tag=first[2].tag)) == (
        paths.checkpoint(dag.results, "u-dit-s", 400000)
    )  # one checkpoint, three draws
    assert paths.parse_eval_tag(first[2].tag) == ("0400000", 1.0, 6)


def test_scale_resampled_sets_the_seeds_of_the_experiments_it_names(tmp_path):
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    raw["scale"]["resampled"] = {"toy-dit-unet": 2}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    exps = ex.resolve_experiments(ex.load_config(path))
    tags = [e.tag for e in exps["toy-dit-unet"].evaluations]
    assert tags == ["0000008-cfg1.0", "0000008-cfg1.0-seed1"]
    raw["scale"]["resampled"] = {"toy-dit-unet-x": 2}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ex.ConfigError, match="scale.resampled names experiments not in"):
        ex.load_config(path)


def _write_fids(results: Path, fids: dict) -> None:
    for (eid, tag), fid in fids.items():
        data = metrics_json(fid=fid, sfid=6, is_=60, precision=0.6, recall=0.6,
                            uncalibrated=False, n=50_000)  # fmt: skip
        write_json(Path(paths.metrics(results, eid, tag)), data)


def _fid_record(config, results):
    from udit.report import tables

    exps = ex.resolve_experiments(config)
    records = tables.collect_records(experiments=exps, released={}, results=results).records
    fid = records[(records["table"] == "main_400k_T2") & (records["row"] == "U-DiT-S")
                  & (records["metric"] == "fid")]  # fmt: skip
    assert len(fid) == 1  # the draws and replicates answer one row, not one each
    return fid.iloc[0]


def test_the_report_pools_one_runs_sampling_seeds(tmp_path):
    config = paper_config()
    config["experiments"]["u-dit-s"]["sample_seeds"] = 3
    values = [30.0, 30.4, 31.1]
    tags = ["0400000-cfg1.0", "0400000-cfg1.0-seed1", "0400000-cfg1.0-seed2"]
    _write_fids(tmp_path, {("u-dit-s", t): v for t, v in zip(tags, values)})
    rec = _fid_record(config, tmp_path)
    want = tolerances.seeds_interval(values)
    assert rec["reproduced"] == pytest.approx(sum(values) / 3) and rec["runs"] == 1
    assert (rec["low"], rec["high"]) == (pytest.approx(want["low"]), pytest.approx(want["high"]))
    assert "sampling seeds: 3" in rec["basis"] and "t over 3 sampling seeds" in rec["basis"]


def test_replicates_enter_with_the_mean_of_their_sampling_seeds(tmp_path):
    """Two levels: each run's draws are averaged first, then the t interval is over runs (a
    draw is not a training seed: 2 runs x 2 draws is K = 2, not 4)."""
    config = paper_config()
    config["experiments"]["u-dit-s"].update(replicates=2, sample_seeds=2)
    fids = {
        ("u-dit-s", "0400000-cfg1.0"): 30.0,
        ("u-dit-s", "0400000-cfg1.0-seed1"): 32.0,
        ("u-dit-s-seed1", "0400000-cfg1.0"): 34.0,
        ("u-dit-s-seed1", "0400000-cfg1.0-seed1"): 35.0,
    }
    _write_fids(tmp_path, fids)
    rec = _fid_record(config, tmp_path)
    want = tolerances.seeds_interval([31.0, 34.5])
    assert rec["reproduced"] == pytest.approx(32.75) and rec["runs"] == 2
    assert rec["replicates"] == {0: 31.0, 1: 34.5}  # the claims pair these run means
    assert (rec["low"], rec["high"]) == (pytest.approx(want["low"]), pytest.approx(want["high"]))


def test_an_uncalibrated_verdict_still_says_what_its_number_rests_on():
    interval = tolerances.seeds_interval([10.0, 11.0, 12.0]) | {"runs": 1, "sampling_seeds": 3}
    tol = tolerances.TOLERANCES["fid"]
    judged = tolerances.verdict(
        "fid", 9.0, 11.0, uncalibrated=True, tol=tol, interval=interval, samples=16
    )
    assert judged.status == "uncalibrated"
    assert "runs: 1; sampling seeds: 3; samples: 16; interval [" in judged.basis
    assert "t over 3 sampling seeds of one run" in judged.basis


def test_a_scale_without_replicated_runs_each_experiment_once(tmp_path):
    """`replicated` is optional in a scale: without it no experiment is replicated."""
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    del raw["scale"]["replicated"], raw["scale"]["log_every"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    experiments = ex.resolve_experiments(ex.load_config(path))
    assert all(len(runs) == 1 for runs in ex.replicate_groups(experiments).values())
    # no log_every in the scale: the recipe's, not the smoke's every step
    assert {e.log_every for e in experiments.values()} == {ex.recipe().log_every} != {1}


def test_scale_log_every_reaches_every_experiment(tmp_path):
    experiments = ex.resolve_experiments(smoke(tmp_path, {}))
    assert {e.log_every for e in experiments.values()} == {1}


@pytest.mark.parametrize(
    ("divisor", "toy_steps"),
    [(50_000, 8), (100_000, 4), (400_000, 1), (1_000_000, 1), (10**9, 1)],
)
def test_a_scaled_step_count_rounds_and_never_falls_below_one(tmp_path, divisor, toy_steps):
    """400K iterations / step_divisor, rounded; a divisor above twice the count would round to
    0 steps: it trains 1 step instead."""
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    raw["scale"].update(step_divisor=divisor, only=["toy-dit-s-4"], replicated={}, resampled={})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    exp = ex.resolve_experiments(ex.load_config(path))["toy-dit-s-4"]
    assert exp.iterations == toy_steps
    assert exp.milestones[-1] == toy_steps
