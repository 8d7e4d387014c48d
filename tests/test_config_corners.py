"""Config corners the shipped configs never write, seen from what resolve_experiments,
resolve_released and `udit plan` hand on (each was a mutmut survivor: tests/mutation-left.txt)."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from udit import experiments as ex
from udit import plan

ROOT = Path(__file__).resolve().parents[1]


def smoke(tmp_path, edit=None, **scale) -> dict:
    """config/smoke.yaml on config/paper.yaml, with `scale` keys replaced (None: removed) and
    `edit(raw)` applied to the rest of the document."""
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    if edit:
        edit(raw)
    for key, value in scale.items():
        if value is None:
            del raw["scale"][key]
        else:
            raw["scale"][key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return ex.load_config(path)


def test_a_scale_without_size_keeps_each_experiments_own():
    """`size` is optional in a scale: each experiment keeps its paper size (its partition)."""
    base = ex.load_config(ROOT / "config" / "paper.yaml")
    scale = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["scale"]
    del scale["size"]
    for eid in ("u-dit-l", "toy-dit-s-4"):
        exp = base["experiments"][eid]
        assert ex._scaled(exp, base=base, scale=scale, eid=eid)["size"] == exp["size"]
    sizes = {e["size"] for e in base["experiments"].values()}
    assert len(sizes) > 1  # the paper's experiments do not all share one size


def test_the_scaled_sizes_are_the_scales(tmp_path):
    experiments = ex.resolve_experiments(smoke(tmp_path))
    assert {e.size for e in experiments.values()} == {"toy"}


def test_an_evaluation_after_the_last_iteration_is_refused(tmp_path):
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    exp = config["experiments"]["u-dit-s"]
    exp["evaluations"].append({"step": exp["iterations"] + 1, "cfg": 1.0})
    with pytest.raises(
        ex.ConfigError, match=r"experiments/u-dit-s: evaluation steps \[\d+\] exceed"
    ):
        ex.resolve_experiments(config)
    exp["evaluations"][-1]["step"] = exp["iterations"]  # the last iteration itself is fine
    exp["evaluations"][-1]["cfg"] = 2.5
    assert ex.resolve_experiments(config)["u-dit-s"].milestones[-1] == exp["iterations"]


def test_a_released_checkpoint_keeps_its_own_model_kw_and_precision():
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    rel = config["released"]["u-dit-b-release"]
    rel.update(model_kw={"learn_sigma": False}, precision="fp32")
    resolved = ex.resolve_released(config)
    assert resolved["u-dit-b-release"].model_kw == {"learn_sigma": False}
    assert resolved["u-dit-b-release"].precision == "fp32"
    default = config["defaults"].get("precision", ex.DEFAULT_PRECISION)
    assert {r.precision for k, r in resolved.items() if k != "u-dit-b-release"} == {default}
    assert default != "fp32"


# --- udit plan -----------------------------------------------------------------------------
def test_a_job_that_fits_exactly_one_step_is_planned_not_refused():
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    exp = ex.resolve_experiments(config)["u-dit-s"]
    throughput = plan.Throughput.from_config(config)
    per_step, _ = plan.hours_per_step(exp, config, throughput)
    name = plan.partition_name(config, "train", exp.size)
    config["partitions"][name]["max_job_hours"] = 1.5 * per_step
    assert plan.max_steps_per_job(exp, config, throughput) == 1
    config["partitions"][name]["max_job_hours"] = 0.9 * per_step
    with pytest.raises(ex.ConfigError, match="longer than max_job_hours"):
        plan.max_steps_per_job(exp, config, throughput)


def test_exactly_the_chunk_cap_is_allowed(monkeypatch):
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    config["partitions"]["gpu"]["max_job_hours"] = 0.5
    exp = ex.resolve_experiments(config)["u-dit-l"]
    throughput = plan.Throughput.from_config(config)
    count = plan.train_node_count(exp, config, throughput)
    assert count > len(exp.milestones)  # chunked: the cap is what is tested, not milestones
    monkeypatch.setattr(plan, "MAX_CHUNKS_PER_EXPERIMENT", count)
    assert plan.train_node_count(exp, config, throughput) == count
    monkeypatch.setattr(plan, "MAX_CHUNKS_PER_EXPERIMENT", count - 1)
    with pytest.raises(ex.ConfigError, match=f"need {count} chained training chunks"):
        plan.train_node_count(exp, config, throughput)


def test_a_pixel_space_model_is_counted_with_its_three_channels():
    """An experiment on a dataset without a VAE trains on RGB pixels: its GMACs are those of
    a 3-channel model, not a latent model's fed 3 channels."""
    from udit.flops import count_flops
    from udit.models import get_spec

    kw = {"hidden_size": 32, "depth": 2, "num_heads": 2}
    pixels = plan.model_gflops(model="DiT-S/4", input_size=16, in_channels=3, model_kw=kw)
    net = get_spec("DiT-S/4").build(input_size=16, in_channels=3, **kw).eval()
    assert pixels == pytest.approx(count_flops(net, input_size=16, in_channels=3)[0] / 1e9)
    latents = plan.model_gflops(model="DiT-S/4", input_size=16, in_channels=4, model_kw=kw)
    assert pixels != latents  # the embedding and the output layer see the channel count


def test_a_registered_model_on_pixels_is_not_read_from_the_latent_index():
    """macs.json counts registry models on 4-channel latents: the same model, unchanged, on a
    32 px pixel dataset is counted live with 3 channels."""
    entry = SimpleNamespace(model="DiT-S/8", model_kw={}, dataset="px", id="px-run")
    config = {"datasets": {"px": {"source": "toy", "image_size": 32}}}
    live = plan.model_gflops(model="DiT-S/8", input_size=32, in_channels=3, model_kw={})
    assert plan.gmacs_of(entry, config) == live
    assert live != plan.macs_index()["models"]["DiT-S/8"]["gmacs"]["32"]


def test_a_model_kw_that_does_not_build_names_the_experiment_and_the_reason():
    entry = SimpleNamespace(model="DiT-S/4", model_kw={"hidden_size": 30}, dataset="px", id="x3")
    config = {"datasets": {"px": {"source": "toy", "image_size": 16}}}
    with pytest.raises(ex.ConfigError) as err:
        plan.gmacs_of(entry, config)
    assert str(err.value) == (
        "experiments/x3: DiT-S/4 does not build with {'input_size': 16, 'hidden_size': 30, "
        "'in_channels': 3}: 2D sin-cos embedding needs dim divisible by 4, got 30"
    )


def _claims_json(config: dict) -> dict:
    args = SimpleNamespace(measured_noise=False, noise_cov=None, format="json")
    throughput = plan.Throughput.from_config(config)
    rows = plan.plan_rows(config, throughput=throughput)
    samples = plan.sample_rows(config, throughput=throughput)
    return json.loads(plan.claims_output(config, args, rows, samples))


def test_the_claims_plan_of_a_scaled_config_is_toy_even_on_imagenet_names():
    """A config with a `scale` trains toy-sized runs whatever its datasets are called."""
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    assert _claims_json(config)["toy"] is False
    config["scale"] = {"step_divisor": 1000}
    assert not any(d.get("source") == "toy" for d in config["datasets"].values())
    assert _claims_json(config)["toy"] is True


def test_a_claim_without_runs_and_with_every_row_is_not_costed_for_its_runs():
    comparison = plan.ComparisonPlan(
        text="FID a < b", metric="fid", lower=None, higher=None, effect=None, runs=None, arms=()
    )
    claim = plan.ClaimPlan(id="x", claim="a beats b", runs=None, gpu_hours=None,
                           comparisons=[comparison])  # fmt: skip
    assert plan.cost_claims([claim], [], []) == 0
    assert claim.note == "not costed: a comparison has no number of runs that decides it"
    assert claim.gpu_hours is None
    short = dataclasses.replace(comparison, missing=("T2 r",))
    missing = plan.ClaimPlan(id="y", claim="c", runs=3, gpu_hours=None, comparisons=[short])
    plan.cost_claims([missing], [], [])
    assert missing.note == "not costed: not in this config: T2 r"


def test_a_scale_maps_each_experiments_own_dataset(tmp_path):
    """dataset_map maps the dataset each experiment names, not the default: the 512 px runs
    of T6 go where the map sends imagenet512."""

    def add_toy16(raw):
        raw["datasets"]["toy16"] = dict(raw["datasets"]["toy32"], image_size=16)

    dataset_map = {"imagenet256": "toy32", "imagenet512": "toy16"}
    experiments = ex.resolve_experiments(smoke(tmp_path, add_toy16, dataset_map=dataset_map))
    assert {e.dataset for e in experiments.values() if e.id.endswith("-512")} == {"toy16"}
    assert {e.dataset for e in experiments.values() if not e.id.endswith("-512")} == {"toy32"}


def test_the_configs_plan_section_sets_the_rate_and_the_speed_file(tmp_path):
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    config["plan"] = {"gpu_macs_per_s": 5e12}
    rate = plan.Throughput.from_config(config).train(model="U-DiT-B", gmacs=22.0, precision="tf32")
    assert rate == (5e12, "given")
    speed = {"schema": 1, "train": [], "inception": {"images_per_s": 1234.0}}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    config["plan"] = {"speed_json": str(tmp_path / "speed.json")}
    assert plan.Throughput.from_config(config).images_per_s("inception") == 1234.0
    assert plan.Throughput.from_config({}).images_per_s("inception") is None


def test_a_tiny_vae_decode_is_not_counted_as_the_sd_vaes(tmp_path, monkeypatch):
    """The GMACs index holds the SD VAE's decode per latent side; a tiny VAE whose latents
    have one of those sides must not be charged it."""

    def enlarge(raw):  # tiny VAE, factor 4: 32x32 latents
        raw["datasets"]["toy32"]["image_size"] = 128

    config = smoke(tmp_path, enlarge, only=["toy-dit-s-4"], replicated={}, resampled={})
    assert "32" in plan.macs_index()["vae_decode_gmacs"]
    throughput = plan.Throughput.from_config(config)
    rows = plan.sample_rows(config, throughput=throughput)
    index = plan.macs_index()
    monkeypatch.setattr(plan, "macs_index", lambda: {**index, "vae_decode_gmacs": {}})
    assert plan.sample_rows(config, throughput=throughput) == rows
    sd = ex.load_config(ROOT / "config" / "paper.yaml")  # the same check sees the SD VAE's
    sd["experiments"] = {"u-dit-s": sd["experiments"]["u-dit-s"]}
    monkeypatch.setattr(plan, "macs_index", lambda: index)
    charged = plan.sample_rows(sd, throughput=plan.Throughput.from_config(sd))
    monkeypatch.setattr(plan, "macs_index", lambda: {**index, "vae_decode_gmacs": {}})
    assert plan.sample_rows(sd, throughput=plan.Throughput.from_config(sd)) != charged


def test_the_plan_takes_an_experiments_precision_then_the_defaults_then_tf32():
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    assert plan.precision_of(config, "u-dit-s") == "tf32"
    config["defaults"]["precision"] = "fp32"
    assert plan.precision_of(config, "u-dit-s") == "fp32"
    config["experiments"]["u-dit-s"]["precision"] = "bf16"
    assert plan.precision_of(config, "u-dit-s") == "bf16"


def test_a_scale_without_model_kw_keeps_the_models_whole(tmp_path):
    """`model_kw` is optional in a scale: without it every model keeps its paper size."""
    experiments = ex.resolve_experiments(smoke(tmp_path, model_kw=None))
    assert {e.model_kw.get("hidden_size") for e in experiments.values()} == {None}


def test_a_released_checkpoints_model_kw_is_checked_like_an_experiments():
    config = ex.load_config(ROOT / "config" / "paper.yaml")
    config["released"]["u-dit-b-release"]["model_kw"] = {"hiden_size": 8}
    with pytest.raises(ex.ConfigError, match=r"^released/u-dit-b-release: model_kw 'hiden_size'"):
        ex.resolve_released(config)


def test_a_scale_only_naming_an_unknown_experiment_is_refused_naming_it(tmp_path):
    with pytest.raises(ex.ConfigError) as err:
        smoke(tmp_path, only=["u-dit-t", "u-dit-tt", "dit-q"])
    base = str(ROOT / "config" / "paper.yaml")
    assert str(err.value) == f"scale.only names experiments not in {base}: dit-q, u-dit-tt"


@pytest.mark.parametrize(
    ("dataset", "geometry"),
    [
        ({"image_size": 256, "vae": "stabilityai/sd-vae-ft-ema"}, (32, 4)),  # the SD VAE: 8x
        ({"image_size": 512, "vae": "data/vae"}, (64, 4)),  # any VAE path but the tiny one
        ({"image_size": 32, "vae": "tiny"}, (8, 4)),  # the tiny VAE: 4x
        ({"image_size": 32, "vae": None}, (32, 3)),  # pixel space
        ({"image_size": 32}, (32, 3)),
    ],
)
def test_what_the_model_sees_of_a_dataset(dataset, geometry):
    assert plan.latent_geometry(dataset) == geometry
