# Config validation, paths and input functions shared by every stage (functions only, no rules).
# The experiment list itself is resolved by udit.experiments: one place for this DAG,
# `udit plan` and `udit report`.
import contextlib
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from udit import experiments as ex
from udit import inputs, outputs, paths
from udit import plan
from udit.errors import UserError, one_screen
from udit.models.spec import format_model_kw

CONFIG_FILES = [
    os.path.relpath(f) if not os.path.relpath(f).startswith("..") else str(f)
    for f in workflow.configfiles
]
try:
    # Snakemake's own loader keeps the last of two equal keys and expands aliases unbounded:
    # read each file again with ours (duplicate keys, size and alias caps) before anything
    # walks the config, then our schema check (one short line per key) before Snakemake's
    # (which fills in defaults, and whose error would print the whole config)
    for _configfile in CONFIG_FILES:
        ex.load_yaml(_configfile)
    ex.validate_config(config, source=", ".join(CONFIG_FILES) or "config")
    validate(config, schema="../schemas/config.schema.yaml")
    _chain = tuple(os.path.realpath(f) for f in CONFIG_FILES)  # a `base` loop is refused
    CONFIG = ex.expand_base(config, root=workflow.basedir, chain=_chain)
    EXPERIMENTS = ex.resolve_experiments(CONFIG)
    RELEASED = ex.resolve_released(CONFIG)
    plan.check_partitions(CONFIG)
    # the steps with a training node: milestones + chunk ends that keep each job within its
    # partition's max_job_hours at `udit plan`'s throughput (torch-free for registry models);
    # the chunk count is checked against plan's caps before any list is built
    _THROUGHPUT = plan.Throughput.from_config(CONFIG)
    TRAIN_STEPS = plan.all_train_steps(EXPERIMENTS, CONFIG, _THROUGHPUT)
except UserError as err:
    named = any(str(err).startswith(f) for f in CONFIG_FILES)  # YAML errors name file:line
    source = "" if named else f" {', '.join(CONFIG_FILES)}"
    raise WorkflowError(one_screen(f"invalid config{source}: {err}")) from None
except WorkflowError as err:  # Snakemake's schema check quotes the instance
    raise WorkflowError(one_screen(str(err))) from None

R = CONFIG.get("results", "results")
DATASETS = CONFIG["datasets"]
INCEPTION = CONFIG["inception"]
STANDIN = INCEPTION["weights"] == "standin"
TINY_VAE = "tiny"
# Every rule calls the CLI through this interpreter, so a job finds `udit` without an
# activated venv (SLURM jobs inherit the environment, not the shell's aliases).
UDIT = f"{shlex.quote(sys.executable)} -m udit.cli"
# train and sample: torchrun over the job's GPUs / nodes, stopped before the time limit
LAUNCH = f"bash {shlex.quote(str(Path(workflow.current_basedir).parent / 'scripts' / 'launch.sh'))}"
PYTHON = shlex.quote(sys.executable)


def cpus_per_rank(resources):
    """A node's CPUs (cpus_per_task) shared by its torchrun ranks (one per GPU of the node; one
    rank on CPU); `gpu` counts the GPUs of the whole job, over `nodes` nodes."""
    return int(resources.cpus_per_task) // max(int(resources.gpu) // int(resources.nodes), 1)


def rank_threads(wildcards, resources):
    return max(cpus_per_rank(resources), 1)


def _thread_env(resources):
    """Pin OpenMP/BLAS threads to the job's CPUs: with `--cores 2` two jobs share two cores, and
    oversubscribed numpy eigensolvers (FID) and torch kernels ran several times slower. A
    multi-GPU job splits its CPUs between its torchrun ranks (one process per GPU)."""
    n = max(cpus_per_rank(resources), 1)
    return f"env OMP_NUM_THREADS={n} OPENBLAS_NUM_THREADS={n} MKL_NUM_THREADS={n}"


def udit_cmd(wildcards, resources):
    return f"{_thread_env(resources)} {UDIT}"


def python_cmd(wildcards, resources):
    return f"{_thread_env(resources)} {shlex.quote(sys.executable)}"


# stop_lead_s: train / sample get SIGUSR1 this long before the job's time limit (launch.sh)
RESOURCE_FALLBACK = {
    "gpu": 0,
    "nodes": 1,
    "cpus_per_task": 1,
    "mem_mb": 2000,
    "runtime": 30,
    "stop_lead_s": 300,
}
ATTEMPT_SCALED = ("runtime", "mem_mb")  # a retry after a time/memory kill asks for more
STEP_WILDCARD = rf"\d{{{paths.STEP_DIGITS}}}|{paths.RELEASED_STEP}"


# --- nodes ---------------------------------------------------------------------------------
def node(wildcards):
    """The Experiment or Released entry a wildcard set points at (clear error if unknown)."""
    name = wildcards.experiment
    if name in EXPERIMENTS:
        return EXPERIMENTS[name]
    if name in RELEASED:
        return RELEASED[name]
    raise WorkflowError(
        f"unknown experiment {name!r}; known: {', '.join([*EXPERIMENTS, *RELEASED])}"
    )


def evaluation(wildcards):
    """The Evaluation entry of one (experiment, step, cfg) node."""
    entry = node(wildcards)
    tag = f"{wildcards.step}-cfg{wildcards.cfg}"
    for e in entry.evaluations:
        if e.tag == tag:
            return e
    raise WorkflowError(
        f"{wildcards.experiment}: no evaluation at step {wildcards.step} with cfg {wildcards.cfg}"
    )


def metrics_path(experiment_id, evaluation_):
    return paths.metrics(R, experiment_id, evaluation_.tag)


def grid_path(experiment_id, evaluation_):
    return paths.grid(R, experiment_id, evaluation_.tag)


def all_metrics():
    return [metrics_path(eid, e) for eid, exp in EXPERIMENTS.items() for e in exp.evaluations]


def all_grids():
    return [grid_path(eid, e) for eid, exp in EXPERIMENTS.items() for e in exp.evaluations]


def final_checkpoints():
    return [checkpoint_path(eid, exp.iterations) for eid, exp in EXPERIMENTS.items()]


def checkpoint_path(experiment_id, step):
    return paths.checkpoint(R, experiment_id, step)


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
    wanted = [
        (spec["images"], f"ImageFolder of dataset {name}")
        for name, spec in DATASETS.items()
        if spec["source"] == "folder"
    ]
    wanted += [
        (spec["reference"], f"reference batch of dataset {name}")
        for name, spec in DATASETS.items()
        if spec.get("reference")
    ]
    if not STANDIN:
        wanted.append(
            (
                INCEPTION["weights"],
                "Inception weights (torch-fidelity weights-inception-2015-12-05-6726825d.pth)",
            )
        )
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
    return {
        "image_size": spec["image_size"],
        "vae": vae_of(wildcards.dataset),
        "classes": spec["num_classes"],
        "per_class": spec.get("per_class", 1),
        "seed": spec.get("seed", 0),
    }


def reference_subset_args(wildcards):
    """`--num-images N` when the config caps the reference (already shell-quoted), else ''."""
    num_images = DATASETS[wildcards.dataset].get("reference_images")
    return shlex.join(["--num-images", str(num_images)]) if num_images else ""


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
    start = train_start(wildcards)
    if start:
        inputs["previous"] = checkpoint_path(exp.id, start)
    return inputs


def _model_args(entry, dataset):
    spec = DATASETS[dataset]
    args = [
        "--model",
        entry.model,
        "--num-classes",
        spec["num_classes"],
        "--image-size",
        spec["image_size"],
    ]
    if entry.model_kw:
        args += ["--model-kw", *format_model_kw(entry.model_kw)]
    return args


def train_args(wildcards):
    exp = EXPERIMENTS[wildcards.experiment]
    if int(wildcards.step) not in TRAIN_STEPS[exp.id]:
        raise WorkflowError(
            f"{exp.id}: step {wildcards.step} is not a milestone or chunk end "
            f"({TRAIN_STEPS[exp.id]})"
        )
    vae = DATASETS[exp.dataset].get("vae")
    source = (
        ["--latents", str(Path(latents_manifest(exp.dataset)).parent)]
        if vae
        else ["--images", images_dir(exp.dataset), "--pixel"]
    )
    args = [
        *_model_args(exp, exp.dataset),
        "--run-dir",
        paths.train_dir(R, exp.id),
        *source,
        "--total-steps",
        exp.iterations,
        "--global-batch",
        exp.global_batch,
        "--ckpt-every",
        exp.ckpt_every,
        "--log-every",
        exp.log_every,
        "--milestones",  # chunk ends too: each is the next node's input, kept like a milestone
        ",".join(map(str, TRAIN_STEPS[exp.id])),
        "--stop-at",
        int(wildcards.step),
        "--resume",
        "auto",
        "--seed",
        exp.seed,
        "--precision",
        exp.precision,
        "--grad-accum",
        exp.grad_accum,
        "--checkpoint-minutes",
        exp.checkpoint_minutes,
    ]
    return shlex.join(map(str, args))


def loader_workers(wildcards, resources):
    """DataLoader workers per rank: the job's CPUs shared by its ranks, one CPU kept for the
    rank itself (1 CPU on the smoke run -> 0 workers: forked workers only competed for it)."""
    return max(cpus_per_rank(resources) - 1, 0)


def train_start(wildcards):
    """The milestone or chunk end this training node resumes from (0 = from scratch)."""
    steps = TRAIN_STEPS[wildcards.experiment]
    earlier = [s for s in steps if s < int(wildcards.step)]
    return earlier[-1] if earlier else 0


# --- sampling and evaluation ---------------------------------------------------------------
def missing_released():
    return {rid: rel for rid, rel in RELEASED.items() if not Path(rel.path).is_file()}


def released_error(missing):
    lines = [f"  {rel.path}  <-  {rel.url}" for rel in missing.values()]
    return (
        "released checkpoints missing; download each file to the path on its left:\n"
        + "\n".join(lines)
    )


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
    args = [
        *_model_args(entry, entry.dataset),
        "--num-samples",
        e.fid_samples,
        "--cfg-scale",
        e.cfg,
        "--seed",
        e.sample_seed,
        "--steps",
        e.sampling_steps,
        "--precision",
        entry.precision,
        *space,
    ]
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


def existing_released_metrics():
    """Metrics of released checkpoints already evaluated (`snakemake released` is optional):
    the report re-renders when one appears and builds without them."""
    return [
        path
        for rid, rel in RELEASED.items()
        for e in rel.evaluations
        if Path(path := metrics_path(rid, e)).is_file()
    ]


SPEED = CONFIG.get("speed", {})
SPEED_JSON = paths.speed(R)


def speed_args():
    """benchmarks/speed.py options from the config's `speed` (shell-quoted)."""
    args = ["--device", SPEED.get("device", "cuda")]
    return shlex.join((["--quick"] if SPEED.get("quick") else []) + args)


def report_speed():
    """Table 11's input: required where the config says so (smoke), else read if present."""
    return [SPEED_JSON] if SPEED.get("in_report") else external(SPEED_JSON)


def report_config(wildcards):
    """The config file this run was started with (relative to the working directory)."""
    files = workflow.configfiles
    return os.path.relpath(files[0]) if files else "config/smoke.yaml"


def results_dir(wildcards, input):
    """The results folder, from the flops input (a param must not hard-code an output prefix)."""
    return str(Path(input.flops).parents[1])  # {results}/flops/flops.json -> {results}


# --- resources -----------------------------------------------------------------------------
def size_of(wildcards):
    name = getattr(wildcards, "experiment", None)
    if name in EXPERIMENTS:
        return EXPERIMENTS[name].size
    return "XL" if name in RELEASED else "default"


def planned_train_runtime(wildcards, limits):
    """Minutes of one training node at `udit plan`'s throughput (+ margin, capped)."""
    exp = EXPERIMENTS[wildcards.experiment]
    per_step, _ = plan.hours_per_step(exp, CONFIG, _THROUGHPUT)
    steps = int(wildcards.step) - train_start(wildcards)
    return plan.runtime_minutes(steps * per_step, limits)


def _resource(rule_name, key):
    table = CONFIG.get("resources", {}).get(rule_name, {})

    def get(wildcards, attempt):
        size = size_of(wildcards)
        entry = table.get(size) or table.get("default") or {}
        value = entry.get(key, RESOURCE_FALLBACK.get(key))
        limits = plan.partition_limits(CONFIG, rule_name, size)
        if key == "runtime" and rule_name == "train" and limits:
            value = planned_train_runtime(wildcards, limits)
        if key not in ATTEMPT_SCALED:
            return value
        return plan.scaled(key, value, attempt, limits)

    return get


def resources_for(rule_name):
    """SLURM resources of a rule from config `resources`, picked by the node's size class.

    gpu -> sbatch --gpus; slurm_partition only where the config names one (else the profile's)."""
    table = CONFIG.get("resources", {}).get(rule_name, {})
    keys = set(RESOURCE_FALLBACK) | {k for entry in table.values() for k in entry}
    return {key: _resource(rule_name, key) for key in sorted(keys)}


# --- external inputs, checked before any job starts (onstart in the Snakefile) -------------
EXTERNAL_NEEDS = {  # rule -> the user-provided inputs its jobs read
    "extract_latents": ("images", "vae"),
    "build_reference": ("images", "inception"),
    "sample": ("vae",),
    "evaluate": ("reference", "inception"),
}


def external_needs(jobs):
    """{(kind, dataset)} the jobs about to run read from outside the DAG."""
    needs = set()
    for job in jobs:
        name, w = job.rule.name, job.wildcards
        dataset = getattr(w, "dataset", None)
        if dataset is None and getattr(w, "experiment", None):
            dataset = node(w).dataset
        kinds = EXTERNAL_NEEDS.get(name, ())
        if name == "train" and not DATASETS[dataset].get("vae"):
            kinds = ("images",)  # pixel-space training reads the folder itself
        needs |= {(kind, "" if kind == "inception" else dataset) for kind in kinds}
    return needs


# One Snakemake run per results folder: Snakemake's own lock is per working directory, and a
# second run from another one would delete, as outputs of its refused jobs, what the first run
# is writing. Held from onstart (jobs run with --no-hooks) to the end of the process.
RESULTS_LOCK = contextlib.ExitStack()


def hold_results_lock():
    try:
        RESULTS_LOCK.enter_context(outputs.locked(Path(R), flag="results folder"))
    except UserError as err:
        raise WorkflowError(one_screen(str(err))) from None


def check_external_inputs(dag):
    """Stop before the first job when an input the run needs is missing or malformed."""
    found = inputs.problems(CONFIG, external_needs(dag.needrun_jobs()))
    if found:
        raise WorkflowError(inputs.report(found))


for _path, _what in missing_external():
    print(
        f"note: {_what} not found at {_path} (needed before the jobs that read it run)",
        file=sys.stderr,
    )
