"""udit.dag.Dag, the methods the rules call, without Snakemake: what each node reads, the options
its job gets and the resources it asks for (tests/test_workflow.py runs them for real)."""

import json
from pathlib import Path
from types import SimpleNamespace as W

import pytest

from udit import experiments as ex
from udit import paths
from udit.dag import Dag

ROOT = Path(__file__).resolve().parents[1]
JOB = W(cpus_per_task=8, gpu=2, nodes=1)  # 2 ranks of 4 CPUs: 3 loader workers each


@pytest.fixture(scope="module")
def paper():
    return Dag(ex.load_config(ROOT / "config" / "paper.yaml"))


def test_a_chunked_run_resumes_each_node_from_the_previous_one(paper):
    steps = paper.train_steps["u-vit-xl"]  # split to fit max_job_hours (see `udit plan`)
    assert len(steps) > 1 and steps[-1] == 400_000
    for before, step in zip([0, *steps], steps, strict=False):
        w = W(experiment="u-vit-xl", step=paths.step_tag(step))
        assert paper.train_start(w) == before
        inputs = paper.train_inputs(w)
        assert inputs.get("previous") == (
            paths.checkpoint("results", "u-vit-xl", before) if before else None
        )
        options = json.loads(paper.train_options(w, JOB))
        assert options["stop_at"] == step and options["milestones"] == steps
        assert options["num_workers"] == 3 and options["seed"] == 0


def test_train_options_carry_the_experiment_typed(paper):
    options = json.loads(paper.train_options(W(experiment="u-dit-b", step="0400000"), JOB))
    assert options["model"] == "U-DiT-B" and options["total_steps"] == 1_000_000
    assert options["latents"] == "results/data/imagenet256/latents" and "images" not in options
    assert isinstance(options["checkpoint_minutes"], int | float) and options["resume"] == "auto"
    with pytest.raises(ValueError, match="not a milestone or chunk end"):
        paper.train_options(W(experiment="u-dit-b", step="0400001"), JOB)


def test_sample_options_send_model_fields_only_for_released_state_dicts(paper):
    trained = json.loads(paper.sample_options(W(experiment="u-dit-b", tag="0400000-cfg1.5")))
    assert trained == {
        "num_samples": 50_000, "cfg_scale": 1.5, "seed": 0, "steps": 250,
        "precision": "tf32", "vae": "stabilityai/sd-vae-ft-ema",
    }  # fmt: skip
    released = json.loads(
        paper.sample_options(W(experiment="dit-xl-2-256-release", tag="released-cfg1.5"))
    )
    assert released["model"] == "DiT-XL/2" and released["num_classes"] == 1000


def test_unknown_nodes_are_named(paper):
    with pytest.raises(ValueError, match="unknown experiment 'u-dit-q'; known: toy-dit-s-4"):
        paper.node(W(experiment="u-dit-q"))
    known = "known: 0200000-cfg1.0, 0400000-cfg1.0"
    with pytest.raises(ValueError, match=f"no evaluation '0400000-cfg2.0'; {known}"):
        paper.evaluation(W(experiment="u-dit-b", tag="0400000-cfg2.0"))
    with pytest.raises(ValueError, match="trains on pixels|not a trained experiment"):
        paper.export_experiment(W(experiment="dit-xl-2-256-release", step="released"))


def test_resources_by_size_class_and_attempt(paper):
    train = paper.resources_for("train")
    w = W(experiment="u-dit-xl" if "u-dit-xl" in paper.experiments else "u-dit-l", step="0200000")
    assert train["gpu"](w, 1) >= 1
    first, retry = train["mem_mb"](w, 1), train["mem_mb"](w, 2)
    assert retry > first  # a retry after an out-of-memory kill asks for more
    runtime = train["runtime"](w, 1)
    assert 0 < runtime <= 2880  # the planned hours of this node, capped by the partition
    export_mem = paper.resources_for("export")["mem_mb"]
    assert export_mem(W(experiment="u-dit-l", step="0400000"), 1) == 32_000


def test_data_nodes_read_the_users_files_only_once_they_exist(tmp_path, paper):
    inputs = paper.dataset_inputs(W(dataset="imagenet256"))
    assert inputs == {"images": [], "vae": []}  # ImageNet is the user's, and is not there here
    params = paper.dataset_params(W(dataset="imagenet256"))
    assert params["images"] == "data/imagenet/train" and params["subset"] == ""
    assert paper.reference_path("imagenet256") == "data/VIRTUAL_imagenet256_labeled.npz"


@pytest.mark.parametrize("name", ["checkpoint", "export"])
def test_a_step_and_its_wildcard_tag_name_the_same_file(name):
    """A rule's output is written from a '{step}' wildcard, the Dag asks for it by number:
    both must spell one path (the step zero-padded to paths.STEP_DIGITS)."""
    place = getattr(paths, name)
    for step in (1, 8, 400000, 7_000_000):
        wildcard = place("results", "u-dit-b", "{step}")
        tag = paths.step_tag(step)
        assert len(tag) == paths.STEP_DIGITS and int(tag) == step
        assert place("results", "u-dit-b", step) == wildcard.replace("{step}", tag)
    assert paths.export("r", "x", 400000) == "r/x/export/0400000"
