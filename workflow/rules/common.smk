# Config validation, paths and input functions shared by every stage (functions only, no rules).
# The experiment list itself is resolved by udit.experiments: one place for this DAG,
# `udit plan` and `udit report`.
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from udit import experiments as ex


validate(config, schema="../schemas/config.schema.yaml")
try:
    CONFIG = ex.expand_base(config, root=workflow.basedir)
    EXPERIMENTS = ex.resolve_experiments(CONFIG)
    RELEASED = ex.resolve_released(CONFIG)
except ex.ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

R = CONFIG.get("results", "results")
DATASETS = CONFIG["datasets"]
INCEPTION = CONFIG["inception"]
STANDIN = INCEPTION["weights"] == "standin"
TINY_VAE = "tiny"
# Every rule calls the CLI through this interpreter, so a job finds `udit` without an
# activated venv (SLURM jobs inherit the environment, not the shell's aliases).
UDIT = f"{shlex.quote(sys.executable)} -m udit.cli"
TORCHRUN = f"{shlex.quote(sys.executable)} -m torch.distributed.run --standalone"


def cpus_per_rank(resources):
    """The job's CPUs shared by its torchrun ranks (one per GPU; one rank on CPU)."""
    return int(resources.cpus_per_task) // max(int(resources.gpu), 1)


def _thread_env(resources):
    """Pin OpenMP/BLAS threads to the job's CPUs: with `--cores 2` two jobs share two cores, and
    oversubscribed numpy eigensolvers (FID) and torch kernels ran several times slower. A
    multi-GPU job splits its CPUs between its torchrun ranks (one process per GPU)."""
    n = max(cpus_per_rank(resources), 1)
    return f"env OMP_NUM_THREADS={n} OPENBLAS_NUM_THREADS={n} MKL_NUM_THREADS={n}"


def udit_cmd(wildcards, resources):
    return f"{_thread_env(resources)} {UDIT}"


def torchrun_cmd(wildcards, resources):
    return f"{_thread_env(resources)} {TORCHRUN}"
RESOURCE_FALLBACK = {"gpu": 0, "nodes": 1, "cpus_per_task": 1, "mem_mb": 2000, "runtime": 30}
ATTEMPT_SCALED = ("runtime", "mem_mb")   # a retry after a time/memory kill asks for more
STEP_WILDCARD = rf"\d{{{ex.STEP_DIGITS}}}|{ex.RELEASED_STEP}"


# --- nodes ---------------------------------------------------------------------------------
def node(wildcards):
    """The Experiment or Released entry a wildcard set points at (clear error if unknown)."""
    name = wildcards.experiment
    if name in EXPERIMENTS:
        return EXPERIMENTS[name]
    if name in RELEASED:
        return RELEASED[name]
    raise WorkflowError(f"unknown experiment {name!r}; known: {', '.join([*EXPERIMENTS, *RELEASED])}")


def evaluation(wildcards):
    """The Evaluation entry of one (experiment, step, cfg) node."""
    entry = node(wildcards)
    step = 0 if wildcards.step == ex.RELEASED_STEP else int(wildcards.step)
    for e in entry.evaluations:
        if e.step == step and ex.cfg_tag(e.cfg) == wildcards.cfg:
            return e
    raise WorkflowError(f"{wildcards.experiment}: no evaluation at step {wildcards.step} with cfg {wildcards.cfg}")


def node_path(experiment_id, evaluation_, *, kind, suffix):
    """results/{experiment}/{kind}/{step}-cfg{cfg}{suffix}, e.g. kind 'metrics', suffix '.json'."""
    step = ex.RELEASED_STEP if experiment_id in RELEASED else ex.step_tag(evaluation_.step)
    return f"{R}/{experiment_id}/{kind}/{step}-cfg{ex.cfg_tag(evaluation_.cfg)}{suffix}"


def metrics_path(experiment_id, evaluation_):
    return node_path(experiment_id, evaluation_, kind="metrics", suffix=".json")


def grid_path(experiment_id, evaluation_):
    return node_path(experiment_id, evaluation_, kind="samples", suffix=".png")


def all_metrics():
    return [metrics_path(eid, e) for eid, exp in EXPERIMENTS.items() for e in exp.evaluations]


def all_grids():
    return [grid_path(eid, e) for eid, exp in EXPERIMENTS.items() for e in exp.evaluations]


def final_checkpoints():
    return [checkpoint_path(eid, exp.iterations) for eid, exp in EXPERIMENTS.items()]


def checkpoint_path(experiment_id, step):
    return f"{R}/{experiment_id}/train/checkpoints/ckpt-{ex.step_tag(step)}.pt"


# --- data ----------------------------------------------------------------------------------
def images_dir(dataset):
    spec = DATASETS[dataset]
    return spec["images"] if spec["source"] == "folder" else f"{R}/data/{dataset}/images"


def vae_of(dataset):
    """Where the dataset's VAE comes from: a hub id, a local folder, or the DAG's tiny VAE."""
    vae = DATASETS[dataset].get("vae")
    return f"{R}/data/tiny-vae" if vae == TINY_VAE else vae


def vae_input(dataset):
    """The tiny VAE folder is a DAG node; a hub id or user folder is not an input."""
    return [vae_of(dataset)] if DATASETS[dataset].get("vae") == TINY_VAE else []


def latents_manifest(dataset):
    return f"{R}/data/{dataset}/latents/manifest.json"


def reference_path(dataset):
    return DATASETS[dataset].get("reference") or f"{R}/data/{dataset}/reference.npz"


def inception_weights():
    return f"{R}/inception/standin.pth" if STANDIN else INCEPTION["weights"]


def external(path):
    """A file the user provides (ImageNet, reference batch, Inception weights) is an input
    only once it exists, so `snakemake -n` lists every node before the downloads; the CLI
    stops with a clear error if it is still missing when the job runs."""
    return [path] if Path(path).exists() else []


def missing_external():
    """User-provided files the config names that are not there yet: (path, what it is)."""
    wanted = [(spec["images"], f"ImageFolder of dataset {name}") for name, spec in DATASETS.items()
              if spec["source"] == "folder"]
    wanted += [(spec["reference"], f"reference batch of dataset {name}") for name, spec in DATASETS.items()
               if spec.get("reference")]
    if not STANDIN:
        wanted.append((INCEPTION["weights"], "Inception weights (torch-fidelity weights-inception-2015-12-05-6726825d.pth)"))
    return [(path, what) for path, what in wanted if not Path(path).exists()]


def inception_input(wildcards):
    return inception_weights() if STANDIN else external(INCEPTION["weights"])


def images_input(dataset):
    """A toy dataset is a DAG node; a folder dataset is the user's (see external)."""
    path = images_dir(dataset)
    return path if DATASETS[dataset]["source"] == "toy" else external(path)


def dataset_images_input(wildcards):
    return images_input(wildcards.dataset)


def dataset_images(wildcards):
    return images_dir(wildcards.dataset)


def dataset_vae_input(wildcards):
    return vae_input(wildcards.dataset)


def dataset_params(wildcards):
    spec = DATASETS[wildcards.dataset]
    return {"size": spec["image_size"], "vae": vae_of(wildcards.dataset), "classes": spec["num_classes"],
            "per_class": spec.get("per_class", 1), "seed": spec.get("seed", 0),
            "num_images": spec.get("reference_images") or ""}


def calibration_dataset():
    return INCEPTION.get("calibration_dataset") or next(iter(DATASETS))


def calibration_images(wildcards):
    return images_input(calibration_dataset())


# --- training ------------------------------------------------------------------------------
def train_inputs(wildcards):
    """Training data (shared latents or images) and the milestone this node resumes from."""
    exp = EXPERIMENTS[wildcards.experiment]
    dataset = DATASETS[exp.dataset]
    if dataset.get("vae"):
        data = latents_manifest(exp.dataset)
    else:
        data = images_input(exp.dataset)
    inputs = {"data": data}
    start = exp.previous_milestone(int(wildcards.step))
    if start:
        inputs["previous"] = checkpoint_path(exp.id, start)
    return inputs


def _model_args(entry, dataset):
    spec = DATASETS[dataset]
    args = ["--model", entry.model, "--num-classes", spec["num_classes"], "--image-size", spec["image_size"]]
    if entry.model_kw:
        args += ["--model-kw", *(f"{k}={v}" for k, v in entry.model_kw.items())]
    return args


def train_args(wildcards):
    exp = EXPERIMENTS[wildcards.experiment]
    if int(wildcards.step) not in exp.milestones:
        raise WorkflowError(f"{exp.id}: step {wildcards.step} is not a milestone ({exp.milestones})")
    vae = DATASETS[exp.dataset].get("vae")
    source = (["--latents", str(Path(latents_manifest(exp.dataset)).parent)] if vae
              else ["--images", images_dir(exp.dataset), "--pixel"])
    args = [*_model_args(exp, exp.dataset), "--run-dir", f"{R}/{exp.id}/train", *source,
            "--total-steps", exp.iterations, "--global-batch", exp.global_batch,
            "--ckpt-every", exp.ckpt_every, "--milestones", ",".join(map(str, exp.milestones)),
            "--stop-at", int(wildcards.step), "--resume", "auto", "--seed", exp.seed]
    return shlex.join(map(str, args))


def loader_workers(wildcards, resources):
    """DataLoader workers per rank: the job's CPUs shared by its ranks, one CPU kept for the
    rank itself (1 CPU on the smoke run -> 0 workers: forked workers only competed for it)."""
    return max(cpus_per_rank(resources) - 1, 0)


def train_start(wildcards):
    return EXPERIMENTS[wildcards.experiment].previous_milestone(int(wildcards.step))


# --- sampling and evaluation ---------------------------------------------------------------
def missing_released():
    return {rid: rel for rid, rel in RELEASED.items() if not Path(rel.path).is_file()}


def released_error(missing):
    lines = [f"  {rel.path}  <-  {rel.url}" for rel in missing.values()]
    return ("released checkpoints missing; download each file to the path on its left:\n"
            + "\n".join(lines))


def sample_checkpoint(wildcards):
    entry = node(wildcards)
    if wildcards.experiment in RELEASED:
        if not Path(entry.path).is_file():
            raise WorkflowError(released_error({entry.id: entry}))
        return entry.path
    return checkpoint_path(entry.id, int(wildcards.step))


def sample_args(wildcards):
    entry, e = node(wildcards), evaluation(wildcards)
    vae = vae_of(entry.dataset)
    space = ["--vae", vae] if vae else ["--pixel"]
    args = [*_model_args(entry, entry.dataset), "--num-samples", e.fid_samples, "--cfg-scale", e.cfg,
            "--seed", e.sample_seed, "--steps", e.sampling_steps, *space]
    return shlex.join(map(str, args))


def sample_vae_input(wildcards):
    return vae_input(node(wildcards).dataset)


def eval_reference(wildcards):
    dataset = node(wildcards).dataset
    path = reference_path(dataset)
    return external(path) if DATASETS[dataset].get("reference") else path


def eval_reference_path(wildcards):
    return reference_path(node(wildcards).dataset)


def released_metrics(wildcards):
    missing = missing_released()
    if missing:
        raise WorkflowError(released_error(missing))
    return [metrics_path(rid, e) for rid, rel in RELEASED.items() for e in rel.evaluations]


def report_config(wildcards):
    """The config file this run was started with (relative to the working directory)."""
    files = workflow.configfiles
    return os.path.relpath(files[0]) if files else "config/smoke.yaml"


def results_dir(wildcards, input):
    return str(Path(input.flops).parents[1])  # results/flops/flops.json -> results


# --- resources -----------------------------------------------------------------------------
def size_of(wildcards):
    name = getattr(wildcards, "experiment", None)
    if name in EXPERIMENTS:
        return EXPERIMENTS[name].size
    return "XL" if name in RELEASED else "default"


def _resource(rule_name, key):
    table = CONFIG.get("resources", {}).get(rule_name, {})

    def get(wildcards, attempt):
        entry = table.get(size_of(wildcards)) or table.get("default") or {}
        value = entry.get(key, RESOURCE_FALLBACK.get(key))
        return value * attempt if key in ATTEMPT_SCALED else value

    return get


def resources_for(rule_name):
    """SLURM resources of a rule from config `resources`, picked by the node's size class.

    gpu -> sbatch --gpus; slurm_partition only where the config names one (else the profile's)."""
    table = CONFIG.get("resources", {}).get(rule_name, {})
    keys = set(RESOURCE_FALLBACK) | {k for entry in table.values() for k in entry}
    return {key: _resource(rule_name, key) for key in sorted(keys)}


for _path, _what in missing_external():
    print(f"note: {_what} not found at {_path} (needed before the jobs that read it run)", file=sys.stderr)
