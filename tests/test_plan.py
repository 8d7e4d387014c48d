"""udit plan: per-family T11 rates, speed JSON, precision, chunking to max_job_hours."""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from udit import experiments as ex
from udit import plan
from udit.errors import UserError
from udit.models import macs

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


@pytest.mark.parametrize(
    ("cosine", "rope", "ffn", "family"),
    [(False, False, "mlp", "udit-vanilla"), (True, False, "mlp", "udit"),
     (False, True, "mlp", "udit"), (False, False, "dwconv", "udit"), (False, False, "rep", "udit")],
)  # fmt: skip
def test_any_one_modification_makes_a_u_dit(cosine, rope, ffn, family):
    """macs.family: each of the paper's modifications on its own moves a U-shaped model to the
    'udit' speed rows (the registry's ladder adds them in order, so it never shows RoPE alone)."""
    spec = SimpleNamespace(extra={"config": {"cosine": cosine, "rope": rope, "ffn": ffn}})
    assert macs.family(spec) == family
    assert macs.family(SimpleNamespace(extra={})) == "dit"


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


@pytest.mark.parametrize(
    ("hours", "minutes", "ok"),
    [(48, 2880, True), (48, 2879, False), (47.98, 2879, True), (47.99, 2879, False)],
)
def test_max_job_hours_may_equal_the_partitions_max_runtime(hours, minutes, ok):
    """A job planned to the partition's limit exactly is allowed; a minute more is refused."""
    config = ex.load_config(PAPER)
    config["partitions"]["gpu"].update(max_job_hours=hours, max_runtime=minutes)
    config["resources"] = {}
    if ok:
        plan.check_partitions(config)
    else:
        with pytest.raises(ex.ConfigError, match=f"max_job_hours {hours} is longer than"):
            plan.check_partitions(config)


def test_retry_scaling_stops_at_the_partition():
    limits = {"max_runtime": 2880, "max_mem_mb": 512_000, "max_job_hours": 24}
    assert plan.scaled("mem_mb", 256_000, 1, limits) == 256_000
    assert plan.scaled("mem_mb", 256_000, 3, limits) == 512_000
    assert plan.scaled("runtime", 1700, 2, limits) == 2880
    assert plan.scaled("runtime", 30, 2, None) == 60
    assert plan.runtime_minutes(22.0, limits) == math.ceil(22 * 60 * 1.25) + 15
    assert plan.runtime_minutes(60.0, limits) == 2880
    assert plan.runtime_minutes(60.0, None) == math.ceil(60 * 60 * 1.25) + 15  # no partition cap


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


# --- bounded plan: chunk counts are capped before any list is built (G10) -------------------
def paper_with(max_job_hours: float) -> dict:
    config = ex.load_config(PAPER)
    config["partitions"]["gpu"]["max_job_hours"] = max_job_hours
    return config


def test_tiny_max_job_hours_ends_at_once_naming_the_cap(monkeypatch):
    """G10: 0.001 h per job once built chunks until MemoryError. Now: one error naming the
    partition, the experiment, the chunk count and the cap, before a step list is built."""
    config = paper_with(0.001)
    throughput = plan.Throughput.from_config(config)
    built = []
    monkeypatch.setattr(plan, "split_stretch", lambda *a: built.append(a) or [])
    with pytest.raises(ex.ConfigError) as err:
        plan.all_train_steps(ex.resolve_experiments(config), config, throughput)
    text = str(err.value)
    assert "partitions/gpu/max_job_hours 0.001" in text and text.startswith("experiments/")
    count = int(re.search(r"need (\d+) chained training chunks", text).group(1))
    assert count > plan.MAX_CHUNKS_PER_EXPERIMENT
    assert f"cap of {plan.MAX_CHUNKS_PER_EXPERIMENT} per experiment" in text
    assert built == []  # refused by arithmetic, not by building the list


def test_total_training_nodes_capped(monkeypatch):
    config = ex.load_config(PAPER)
    exps = ex.resolve_experiments(config)
    throughput = plan.Throughput.from_config(config)
    steps = plan.all_train_steps(exps, config, throughput)
    total = sum(map(len, steps.values()))
    assert total == 80  # tests/test_workflow.py PAPER_JOB_COUNTS["train"]
    monkeypatch.setattr(plan, "MAX_TRAIN_NODES", total - 1)
    with pytest.raises(ex.ConfigError, match=rf"need {total} training nodes.*cap of {total - 1}"):
        plan.all_train_steps(exps, config, throughput)
    monkeypatch.setattr(plan, "MAX_CHUNKS_PER_EXPERIMENT", 14)  # u-dit-l needs 15
    with pytest.raises(ex.ConfigError, match=r"experiments/u-dit-l: .* need 15 chained"):
        plan.all_train_steps(exps, config, throughput)


@settings()
@given(
    milestones=st.lists(st.integers(1, 5_000_000), min_size=1, max_size=6, unique=True),
    max_steps=st.integers(1, 3_000_000),
)
def test_chunk_count_is_the_length_of_the_split(milestones, max_steps):
    """The arithmetic count (checked against the cap) is exactly what split_stretch builds."""
    ends = sorted(milestones)
    stretches = list(zip([0, *ends[:-1]], ends))
    count = sum(plan._stretch_units(a, b, max_steps)[2] for a, b in stretches)
    if count > 20_000:  # the property holds; building a huge list would only slow the test
        return
    built = [e for a, b in stretches for e in plan.split_stretch(a, b, max_steps)]
    assert len(built) == count
    assert all(0 < b - a <= max_steps for a, b in zip([0, *built], built))


# --- speed JSON: every rate a positive finite number, else the file, field and value (P1) -----
RATE_FIELDS = [
    "train[0].images_per_s",
    "train[0].gmacs_per_image",
    "inception.images_per_s",
    "vae_decode.images_per_s",
]


def speed_doc(field: str, value) -> dict:
    row = {
        "model": "U-DiT-L",
        "path": "harness-tf32",
        "precision": "tf32",
        "images_per_s": 50.0,
        "gmacs_per_image": 85.0,
    }
    doc = {
        "schema": 1,
        "train": [row],
        "inception": {"images_per_s": 900.0},
        "vae_decode": {"images_per_s": 300.0},
    }
    if field.startswith("train[0]."):
        row[field.split(".")[1]] = value
    else:
        doc[field.split(".")[0]]["images_per_s"] = value
    return doc


def test_a_speed_json_without_training_rows_is_read(tmp_path):
    """The forward-only sections stand alone: a file that measured no training has no
    `train` list, and reads as an empty one."""
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"schema": 1, "vae_decode": {"images_per_s": 40.0}}))
    assert plan.load_speed_json(path)["vae_decode"] == {"images_per_s": 40.0}


@pytest.mark.parametrize("field", RATE_FIELDS)
@pytest.mark.parametrize(
    "text,shown",
    [
        ("-5", "-5"),
        ("0", "0"),
        ("NaN", "nan"),
        ("Infinity", "inf"),
        ('"fast"', "'fast'"),
        ("true", "True"),
        ("null", "None"),
        ("1" + "0" * 400, "1000"),
        ("[1]", "[1]"),
    ],
)
def test_bad_rate_names_file_field_and_value(tmp_path, field, text, shown):
    path = tmp_path / "speed.json"
    marker = 123456.0  # placed, then replaced by the raw JSON text of the bad value
    path.write_text(json.dumps(speed_doc(field, marker)).replace(str(marker), text))
    with pytest.raises(UserError) as err:
        plan.load_speed_json(path)
    message = str(err.value)
    assert str(path) in message and f"{field} is {shown}" in message, message


@settings()
@given(
    field=st.sampled_from(RATE_FIELDS),
    rate=st.floats(min_value=1e-6, max_value=1e15, allow_nan=False, allow_infinity=False),
)
def test_positive_rates_are_read(tmp_path_factory, field, rate):
    path = tmp_path_factory.mktemp("speed") / "speed.json"
    path.write_text(json.dumps(speed_doc(field, rate)))
    tp = plan.Throughput(speed=plan.load_speed_json(path))
    if field.startswith("train"):
        assert tp.train(model="U-DiT-L", gmacs=85.0, precision="tf32")[1].startswith("measured")
    else:
        assert tp.images_per_s(field.split(".")[0]) == rate


@pytest.mark.parametrize("length", [59, 60, 61, 400])
def test_a_bad_rate_is_shown_whole_up_to_60_characters(tmp_path, length):
    """A bad value in a speed JSON is quoted in the error as repr, cut after 60 characters
    with '...' (a megabyte of junk must not flood the terminal)."""
    value = "x" * (length - 2)  # its repr has `length` characters
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(speed_doc("inception.images_per_s", value)))
    with pytest.raises(UserError) as err:
        plan.load_speed_json(path)
    shown = repr(value) if length <= 60 else repr(value)[:60] + "..."
    assert f"inception.images_per_s is {shown}, expected" in str(err.value)


def test_speed_json_bad_rate_through_udit_plan(tmp_path, capsys):
    """P1 as the note ran it: `udit plan --speed-json` with inception -5 and vae_decode 0."""
    path = tmp_path / "speedneg.json"
    path.write_text(
        json.dumps(
            {
                "schema": 1,
                "train": [],
                "inception": {"images_per_s": -5},
                "vae_decode": {"images_per_s": 0},
            }
        )
    )
    rc = plan.main(["--configfile", "config/smoke.yaml", "--speed-json", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(path) in err and "images_per_s is" in err


def test_macs_tool_rewrites_the_committed_entries(tmp_path, monkeypatch, capsys):
    """`python -m udit.models.macs` (rerun after a registry change) writes the same entries as
    the committed macs.json: counted live here for two models of two families, Inception and
    the smoke scale's toy models of two experiments (the VAE decoder's count, 10 s, and every
    toy model are checked by the slow tests below)."""
    import yaml

    committed = json.loads(macs.MACS_PATH.read_text())
    some = ("DiT-S/8", "U-DiT-T + cos")
    every = macs.registry_entries
    monkeypatch.setattr(macs, "registry_entries", lambda: every(some))
    vae = {int(side): value for side, value in committed["vae_decode_gmacs"].items()}
    monkeypatch.setattr(macs, "vae_decode_gmacs", vae.__getitem__)
    monkeypatch.setattr(macs, "MACS_PATH", tmp_path / "macs.json")
    raw = yaml.safe_load(Path("config/smoke.yaml").read_text())
    raw["base"] = str(Path("config/paper.yaml").resolve())
    raw["scale"]["only"] = ["toy-dit-s-4", "u-dit-s"]
    for key in ("replicated", "resampled"):
        raw["scale"].pop(key)
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(raw))
    assert macs.main(["--scaled", str(two)]) == 0
    written = json.loads((tmp_path / "macs.json").read_text())
    toy = [e for e in committed["scaled"] if e["model"] in ("DiT-S/4", "U-DiT-S")]
    assert [e["model"] for e in toy] == ["DiT-S/4", "U-DiT-S"]
    assert written == {
        "models": {name: committed["models"][name] for name in some},
        "vae_decode_gmacs": committed["vae_decode_gmacs"],
        "inception_gmacs": committed["inception_gmacs"],
        "scaled": toy,
    }
    assert (tmp_path / "macs.json").read_text() == json.dumps(written, indent=1) + "\n"
    kw = '{"depth": 2, "hidden_size": 32, "num_heads": 2}'
    assert capsys.readouterr().out.splitlines() == [  # one progress line per model counted
        f"DiT-S/8 {committed['models']['DiT-S/8']}",
        f"U-DiT-T + cos {committed['models']['U-DiT-T + cos']}",
        f"DiT-S/4 8 4 {kw} {toy[0]['macs']}",
        f'U-DiT-S 8 4 {{"hidden_size": 16, "num_heads": 2}} {toy[1]["macs"]}',
        f"wrote {tmp_path / 'macs.json'}",
    ]


def test_macs_tool_counts_the_smoke_config_by_default(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(macs, "macs_index", lambda configs: asked.append(configs) or {})
    monkeypatch.setattr(macs, "MACS_PATH", tmp_path / "macs.json")
    assert macs.main([]) == 0 and asked == [["config/smoke.yaml"]]


def test_the_smoke_plan_counts_no_model_live(monkeypatch, capsys):
    """Every toy model of config/smoke.yaml is in macs.json's `scaled`: `udit plan` on it
    builds no network. If this fails, rerun `python -m udit.models.macs`."""

    def refuse(*args):
        raise AssertionError(f"counted live: {args}; rerun python -m udit.models.macs")

    monkeypatch.setattr(plan, "model_macs", refuse)
    plan._gmacs.cache_clear()  # an earlier test's live count would hide a missing entry
    try:
        assert plan.main(["--configfile", "config/smoke.yaml"]) == 0
    finally:
        plan._gmacs.cache_clear()
    assert "u-dit-s" in capsys.readouterr().out


@pytest.mark.slow
def test_committed_model_macs_are_a_live_count():
    """macs.json holds what the models count now: every registry model at both sides and
    exactly the smoke config's toy models (3 min on 2 cores). A model's code changed without
    rerunning `python -m udit.models.macs` fails here."""
    committed = json.loads(macs.MACS_PATH.read_text())
    configs = [ex.load_config(path) for path in macs.SCALED_CONFIGS]
    assert macs.scaled_entries(configs, committed["models"]) == committed["scaled"]
    assert macs.registry_entries() == committed["models"]


@pytest.mark.slow
def test_vae_decode_macs_are_the_committed_ones():
    from udit.models import macs

    committed = json.loads(macs.MACS_PATH.read_text())["vae_decode_gmacs"]
    assert round(macs.vae_decode_gmacs(32), 3) == committed["32"]


def test_hours_per_step_times_the_steps_is_each_nodes_job_hours():
    """Two paths to one number: the chunking's hours per step (max_job_hours) and the plan
    row's job hours (compute / rate / GPUs) agree for every node of the paper config."""
    config = ex.load_config(PAPER)
    throughput = plan.Throughput.from_config(config)
    exps = ex.resolve_experiments(config)
    rows = plan.plan_rows(config, throughput=throughput)
    for row in rows:
        per_step, source = plan.hours_per_step(exps[row.experiment], config, throughput)
        assert per_step * (row.to_step - row.from_step) == pytest.approx(row.hours, rel=1e-12)
        assert source == row.rate_source
