"""Power planning (udit/power.py, `udit plan --claims`): runs per arm for a decisive answer."""

import json
import math
import re
from pathlib import Path

import pytest

from udit import experiments as ex
from udit import plan, power
from udit.report import claims, tolerances

PAPER = "config/paper.yaml"
ROOT = Path(__file__).resolve().parents[1]
FID_COV = tolerances.PAPER_NOISE["fid"][0]  # the FID Lottery's 1.3%
# z_{0.975} + z_{0.8} to 16 digits (tables: 1.959964 + 0.841621), not from statistics.NormalDist
Z_TOTAL = 1.959963984540054 + 0.8416212335729143


# --------------------------------------------------------------------------- the statistics
def test_z_total_is_the_two_sided_level_plus_the_power_quantile():
    assert power.z_total() == pytest.approx(Z_TOTAL, abs=1e-12)
    assert power.z_total(0.05, 0.8) == pytest.approx(2.8016, abs=1e-4)


@pytest.mark.parametrize(
    ("d", "s", "expected"),
    [
        # 2 x 2.8016^2 = 15.698;  x (s / d)^2, rounded up
        (0.05, 0.013, 2),  # 15.698 x 0.0676 = 1.061
        (0.02, 0.013, 7),  # 15.698 x 0.4225 = 6.632
        (0.01, 0.013, 27),  # 15.698 x 1.69 = 26.53
        (0.013, 0.013, 16),  # 15.698
        (0.5, 0.013, 1),  # 0.0106: at least one run
        (0.0049081, 0.013, 111),  # T7's 89.43 vs 89.87 (O3)
    ],
)
def test_replicates_match_hand_computed_values(d, s, expected):
    assert power.replicates(d, s) == expected
    assert expected == max(1, math.ceil(2 * Z_TOTAL**2 * (s / d) ** 2))


def test_replicates_grow_with_noise_and_shrink_with_effect():
    noises = [0.005, 0.01, 0.013, 0.02, 0.04]
    by_noise = [power.replicates(0.02, s) for s in noises]
    assert by_noise == sorted(by_noise) and by_noise[0] < by_noise[-1]
    effects = [0.005, 0.01, 0.02, 0.05, 0.2]
    by_effect = [power.replicates(d, 0.013) for d in effects]
    assert by_effect == sorted(by_effect, reverse=True) and by_effect[0] > by_effect[-1]
    # quadratic: twice the noise needs about four times the runs
    assert power.replicates(0.005, 0.026) == pytest.approx(4 * power.replicates(0.005, 0.013), 0.02)


def test_no_noise_needs_one_run_and_a_reversed_order_none():
    assert power.replicates(0.01, 0.0) == 1
    for d in (0.0, -0.05):
        with pytest.raises(ValueError, match="claimed order"):
            power.replicates(d, 0.013)
    with pytest.raises(ValueError, match="noise"):
        power.replicates(0.05, -0.01)


def test_relative_effect_is_the_gap_over_the_mean_and_signed():
    assert power.relative_effect(89.43, 93.48) == pytest.approx(4.05 / 91.455)
    assert power.relative_effect(93.48, 89.43) == pytest.approx(-4.05 / 91.455)
    assert power.relative_effect(10.0, 30.0) == pytest.approx(1.0)


def test_a_released_arm_needs_more_runs_of_the_other_or_none():
    # k = 2.8016^2 x (0.013 / 0.05)^2 = 0.5306;  n = ceil(k / (1 - k)) = ceil(1.130) = 2
    assert power.replicates_one_fixed(0.05, 0.013) == 2
    # k = 7.849 x (0.013 / 0.1)^2 = 0.1326 -> ceil(0.153) = 1
    assert power.replicates_one_fixed(0.1, 0.013) == 1
    # k = 7.849 x (0.013 / 0.03)^2 = 1.474 >= 1: the fixed arm's own noise is never averaged away
    assert power.replicates_one_fixed(0.03, 0.013) is None
    assert power.replicates_one_fixed(0.02, 0.0) == 1


def test_a_deterministic_metric_needs_one_count_whatever_the_noise():
    assert power.metric_replicates("gflops", 0.001, 0.5) == 1
    assert power.metric_replicates("fid", 0.001, 0.013) > 1
    with pytest.raises(ValueError, match="claimed order"):
        power.metric_replicates("gflops", -0.3, 0.0)


def test_a_claim_needs_the_most_runs_of_its_comparisons():
    assert power.claim_replicates([1, 4, 2]) == 4
    assert power.claim_replicates([3]) == 3
    assert power.claim_replicates([2, None]) is None
    with pytest.raises(ValueError):
        power.claim_replicates([])


# ------------------------------------------------------------------------ the claims plan
@pytest.fixture(scope="module")
def paper():
    config = ex.load_config(PAPER)
    throughput = plan.Throughput.from_config(config)
    rows = plan.plan_rows(config, throughput=throughput)
    samples = plan.sample_rows(config, throughput=throughput)
    return config, rows, samples


def planned(paper, noise_cov=None) -> tuple[dict, float]:
    config, rows, samples = paper
    plans = plan.plan_claims(config, noise_cov=noise_cov)
    total = plan.cost_claims(plans, rows, samples)
    return {p.id: p for p in plans}, total


def test_every_comparison_of_claims_yaml_goes_the_claimed_way_on_the_paper(paper):
    plans, _ = planned(paper)
    assert set(plans) == {c.id for c in claims.load()}
    for p in plans.values():
        for c in p.comparisons:
            assert c.lower < c.higher, (p.id, c.text)
            assert c.effect == pytest.approx(power.relative_effect(c.lower, c.higher))
            assert c.effect > 0 and c.runs is not None, (p.id, c.text)


def test_gflops_only_claim_needs_one_count_and_no_gpu_hours(paper):
    plans, _ = planned(paper)
    c2 = plans["C2"]
    assert [c.metric for c in c2.comparisons] == ["gflops"]
    assert c2.runs == 1 and c2.gpu_hours == 0
    assert c2.comparisons[0].arms == () and "no training" in c2.comparisons[0].note


def test_a_claim_takes_the_most_runs_of_its_comparisons(paper):
    plans, _ = planned(paper)
    o3 = plans["O3"]  # 89.43 < 96.15 (d 7.2%) and 89.43 < 89.87 (d 0.49%)
    assert [c.runs for c in o3.comparisons] == [1, 111]
    assert o3.runs == 111
    o1 = plans["O1"]  # FID d 4.4% and 5.4%, and a GFLOPs count
    assert [c.runs for c in o1.comparisons] == [2, 1, 1] and o1.runs == 2


def test_runs_follow_the_noise(paper):
    """A plan whose runs ignored the noise would give the same numbers at 1.3% and 2.6%."""
    base, base_total = planned(paper)
    doubled, doubled_total = planned(paper, noise_cov=2 * FID_COV)
    d = base["O3"].comparisons[1].effect
    assert base["O3"].runs == power.replicates(d, FID_COV)
    assert doubled["O3"].runs == power.replicates(d, 2 * FID_COV) > 4 * base["O3"].runs - 4
    assert doubled["C2"].runs == 1  # GFLOPs stay deterministic
    assert doubled_total > base_total


def test_a_flipped_direction_has_no_run_count():
    comparison = claims.Comparison(
        "fid", ("main_400k_T2", "DiT-XL/2 (replicated)"), ("main_400k_T2", "U-DiT-L")
    )
    out = plan.plan_comparison(comparison, {}, FID_COV)
    assert out.effect < 0 and out.runs is None and "claimed order" in out.note


def test_gpu_hours_are_runs_times_the_plan_rows_of_the_arms(paper):
    """C4 needs u-dit-l and dit-xl-2 trained to 400K and sampled there (no guidance)."""
    _, rows, samples = paper
    plans, _ = planned(paper, noise_cov=0.05)  # d 66% at 5%: 1 run; the check is the sum
    c4 = plans["C4"]
    train = sum(
        r.gpu_hours
        for r in rows
        if r.experiment in ("u-dit-l", "dit-xl-2") and r.to_step <= 400_000
    )
    sample = sum(
        s.sample_gpu_hours + s.eval_gpu_hours
        for s in samples
        if s.experiment in ("u-dit-l", "dit-xl-2") and s.tag == "0400000-cfg1.0"
    )
    assert c4.gpu_hours == pytest.approx(c4.runs * (train + sample))
    arms = [arm for c in c4.comparisons for arm in c.arms]
    assert plan.needs_hours([(a, 3) for a in arms], rows, samples) == pytest.approx(
        3 * (train + sample)
    )


def test_the_total_counts_a_shared_experiment_once(paper):
    plans, total = planned(paper)
    costed = [p.gpu_hours for p in plans.values() if p.gpu_hours is not None]
    assert max(costed) <= total < sum(costed)  # u-dit-b and dit-xl-2 serve several claims
    assert plans["C1"].gpu_hours is None and plans["C1"].note.startswith("pending:")


def test_a_released_arm_is_not_retrained_and_uses_the_one_fixed_formula(paper):
    plans, _ = planned(paper)
    (c6,) = plans["C6"].comparisons
    assert [a.released for a in c6.arms] == [False, True]
    assert c6.runs == power.replicates_one_fixed(c6.effect, FID_COV)
    _, rows, samples = paper
    only_trained = plan.needs_hours([(c6.arms[0], 1)], rows, samples)
    assert plans["C6"].gpu_hours == pytest.approx(only_trained) and only_trained > 0
    # d 9.9%: at 3% noise k = 7.85 x (0.03 / 0.099)^2 = 0.72, 3 runs (two free arms: 2); at 4%
    # k = 1.27: no number of U-DiT-L runs decides it against the one released DiT-XL/2
    at_3, _ = planned(paper, noise_cov=0.03)
    assert at_3["C6"].runs == power.replicates_one_fixed(c6.effect, 0.03) == 3
    assert power.replicates(c6.effect, 0.03) == 2
    at_4, _ = planned(paper, noise_cov=0.04)
    assert at_4["C6"].runs is None and at_4["C6"].gpu_hours is None
    assert "released network" in at_4["C6"].comparisons[0].note


# ------------------------------------------------------------------------------- the CLI
def test_cli_prints_every_claim_a_total_and_where_the_noise_comes_from(capsys):
    assert plan.main(["--claims", "--configfile", PAPER]) == 0
    out = capsys.readouterr().out
    ids = {line.split()[0] for line in out.splitlines() if re.match(r"[A-Z]\d+ ", line)}
    assert ids == {c.id for c in claims.load()}
    assert re.search(r"^all decisive: [0-9.e+]+ GPU-hours", out, re.MULTILINE)
    assert "assumed:" in out and "FID Lottery" in out and "1.3%" in out
    assert "toy scale" not in out
    o3 = next(line for line in out.splitlines() if line.startswith("O3 "))
    assert o3.split()[1] == "111"


def test_cli_noise_cov_changes_the_runs(capsys):
    assert plan.main(["--claims", "--configfile", PAPER, "--noise-cov", "0.026"]) == 0
    out = capsys.readouterr().out
    o3 = next(line for line in out.splitlines() if line.startswith("O3 "))
    assert int(o3.split()[1]) == power.replicates(0.44 / 89.65, 0.026)
    assert "given: --noise-cov" in out


def test_cli_json_has_every_claim(capsys):
    assert plan.main(["--claims", "--configfile", PAPER, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in data["claims"]] == [c.id for c in claims.load()]
    assert data["all_decisive_gpu_hours"] > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--claims", "--noise-cov", "0"],
        ["--claims", "--noise-cov", "-0.013"],
        ["--claims", "--noise-cov", "nan"],
        ["--noise-cov", "0.02"],  # without --claims it would be ignored
    ],
)
def test_cli_refuses_a_bad_noise_cov_in_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        plan.main(["--configfile", PAPER, *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("udit plan: error:")]
    assert len(errors) == 1 and "--noise-cov" in errors[0] and "Traceback" not in err


def test_cli_claims_on_the_smoke_config_says_the_hours_are_toy(capsys, tmp_path):
    """A scaled config (four of the smoke experiments: each toy model is traced for its
    FLOPs, 24 s for all of them) prices its claims in toy GPU-hours."""
    import yaml

    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    raw["scale"]["only"] = ["toy-dit-unet", "u-dit-t", "ablation-cosine", "u-dit-l"]
    config = tmp_path / "smoke3.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert plan.main(["--claims", "--configfile", str(config)]) == 0
    out = capsys.readouterr().out
    assert "toy scale" in out
    assert all(re.search(rf"^{c.id} ", out, re.MULTILINE) for c in claims.load())
    assert re.search(r"^all decisive: [0-9.e+-]+ GPU-hours", out, re.MULTILINE)
    assert "not in this config: DiT-XL/2 @ 7M" in out  # released checkpoints stay in the base


def test_measured_noise_is_the_lottery_measured_in_the_results(tmp_path, paper):
    """--measured-noise: FID's CoV from the config's own replicates (the report's median over
    groups), so a run that measured 2.6% plans with 2.6%, not the assumed 1.3%."""
    from test_report import metrics_json, write_json

    from udit import paths

    config = dict(paper[0], results=str(tmp_path))
    with pytest.raises(plan.BadValueError) as err:
        plan.measured_noise(config)
    assert str(err.value) == (
        f"--measured-noise: no replicated experiment has two evaluated seeds in {tmp_path}; "
        "set `replicates: K` (K >= 2) and run them, or give --noise-cov"
    )
    config["experiments"] = {**config["experiments"]}
    config["experiments"]["u-dit-s"] = {**config["experiments"]["u-dit-s"], "replicates": 2}
    # u-dit-s's last unguided milestone: FIDs 30 and 31.1 (mean 30.55, sd 0.778: CoV 2.55%)
    last = max(e["step"] for e in config["experiments"]["u-dit-s"]["evaluations"])
    for eid, fid in (("u-dit-s", 30.0), ("u-dit-s-seed1", 31.1)):
        data = metrics_json(fid=fid, sfid=6, is_=60, precision=0.6, recall=0.6,
                            uncalibrated=False, n=50_000)  # fmt: skip
        write_json(Path(paths.metrics(tmp_path, eid, paths.eval_tag(last, 1.0))), data)
    cov, why = plan.measured_noise(config)
    assert cov == pytest.approx(math.sqrt(1.1**2 / 2) / 30.55)
    assert why == (
        f"CoV {cov * 100:.3g}% per training run (measured: median over 1 replicated groups in "
        f"{tmp_path}; calibrated Inception)"
    )
    assert why.startswith("CoV 2.55% ")
    plans = {p.id: p for p in plan.plan_claims(config, noise_cov=None, measured=(cov, why))}
    d = plans["O3"].comparisons[1].effect
    assert plans["O3"].comparisons[1].runs == power.replicates(d, cov) > 111


def test_measured_noise_reads_results_by_default_and_labels_toy_scale(tmp_path, paper, monkeypatch):
    """A config without `results` is measured in ./results (the Snakefile's default), and a
    lottery measured with the stand-in Inception says it is not the paper's noise."""
    from test_report import metrics_json, write_json

    from udit import paths

    config = {k: v for k, v in paper[0].items() if k != "results"}
    config["experiments"] = {**config["experiments"]}
    config["experiments"]["u-dit-s"] = {**config["experiments"]["u-dit-s"], "replicates": 2}
    last = max(e["step"] for e in config["experiments"]["u-dit-s"]["evaluations"])
    monkeypatch.chdir(tmp_path)
    for eid, fid in (("u-dit-s", 30.0), ("u-dit-s-seed1", 31.1)):
        data = metrics_json(fid=fid, sfid=6, is_=60, precision=0.6, recall=0.6, uncalibrated=True)
        write_json(Path(paths.metrics("results", eid, paths.eval_tag(last, 1.0))), data)
    cov, why = plan.measured_noise(config)
    assert cov == pytest.approx(math.sqrt(1.1**2 / 2) / 30.55)
    assert why.endswith(
        "in results; toy scale, stand-in Inception: this harness's seed noise, not the paper's)"
    )


@pytest.mark.parametrize(
    ("arm", "label"),
    [
        (plan.Arm("u-dit-b", 1_000_000, "1000000-cfg1.0"), "u-dit-b@1M"),
        (plan.Arm("u-dit-b", 400_000, "0400000-cfg1.5"), "u-dit-b@400K/cfg1.5"),
        (plan.Arm("u-dit-b", 1_500_000, "1500000-cfg1.0"), "u-dit-b@1500K"),
        (plan.Arm("u-dit-t", 8, "0000008-cfg1.0"), "u-dit-t@8"),
        (plan.Arm("u-dit-t", 1500, "0001500-cfg1.0"), "u-dit-t@1500"),
        (plan.Arm("u-dit-t", 1000, "0001000-cfg1.0"), "u-dit-t@1K"),  # the boundary itself
        (plan.Arm("dit-xl-2", 0, "released-cfg1.5", released=True), "dit-xl-2 (released)"),
    ],
)
def test_an_arm_is_labelled_by_its_step_in_whole_millions_or_thousands(arm, label):
    assert arm.label() == label


def test_the_claims_total_says_none_when_every_claim_is_costed():
    claim = plan.ClaimPlan(id="O1", claim="a beats b", runs=2, gpu_hours=3.5, comparisons=[])
    text = plan.format_claims([claim], total=3.5, noise="FID 1.3%", toy=False)
    assert text.splitlines()[-1] == (
        "all decisive: 3.5 GPU-hours (an experiment shared by claims counted once, at the most "
        "runs any asks; not costed: none)"
    )


def test_a_comparison_line_cuts_long_rows_and_names_its_arms():
    """One line of `udit plan --claims`: the metric, each row cut to 32 characters, the paper's
    values, the effect, the runs, then the arms and the note."""
    arms = (plan.Arm("u-dit-s", 400_000, "0400000-cfg1.0"),
            plan.Arm("dit-s-2", 400_000, "0400000-cfg1.5"))  # fmt: skip
    c = plan.ComparisonPlan(
        text="FID U-DiT-S < DiT-S/2 replicated with a row name far too long to show",
        metric="fid", lower=31.51, higher=68.4, effect=0.7380, runs=3, arms=arms, note="a note",
    )  # fmt: skip
    assert plan._comparison_line(c) == (
        "FID U-DiT-S 31.51 < DiT-S/2 replicated with a row... 68.4: d 73.8%, runs 3; "
        "u-dit-s@400K vs dit-s-2@400K/cfg1.5; a note"
    )
    assert plan._cut("x" * 32, 32) == "x" * 32 and plan._cut("x" * 33, 32) == "x" * 29 + "..."
