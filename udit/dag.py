"""The DAG's view of one resolved config: every path, input and job option the rules ask for.

The rule files only wire rules to these methods, each of which takes Snakemake's `wildcards`
(and `resources` where a value depends on the job's size), so the logic is plain Python that
tests import. A config value reaches its job as the typed value the config wrote: train and
sample jobs get one JSON document (`--options`), built here from the resolved experiment.

    dag = Dag(config, config_files=["config/smoke.yaml"], error=WorkflowError)
    dag.train_options(wildcards, resources)   # '{"model": "U-DiT-B", "model_kw": {...}, ...}'
"""

import json
import shlex
import sys
from pathlib import Path

from udit import experiments as ex
from udit import paths, plan

UDIT = f"{shlex.quote(sys.executable)} -m udit.cli"  # jobs find `udit` without an activated venv
PYTHON = shlex.quote(sys.executable)
TINY_VAE = "tiny"  # a dataset's `vae: tiny`: the DAG's own random-init VAE node
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
# Peak memory of one export (checkpoint with model, EMA and optimizer state, the diffusers copy
# and the VAE) by size class; the config's `resources` table has no export entry.
EXPORT_MEM_MB = {"toy": 4000, "S": 8000, "B": 16000, "L": 32000, "XL": 48000}
EXTERNAL_NEEDS = {  # rule -> the user-provided inputs its jobs read (checked before any job)
    "extract_latents": ("images", "vae"),
    "build_reference": ("images", "inception"),
    "sample": ("vae",),
    "evaluate": ("reference", "inception"),
    "export_checkpoint": ("vae",),
}
INCEPTION_FILE = "torch-fidelity weights-inception-2015-12-05-6726825d.pth"


# --- job environment -------------------------------------------------------------------------
def cpus_per_rank(resources) -> int:
    """A node's CPUs (cpus_per_task) shared by its torchrun ranks (one per GPU of the node; one
    rank on CPU); `gpu` counts the GPUs of the whole job, over `nodes` nodes."""
    return int(resources.cpus_per_task) // max(int(resources.gpu) // int(resources.nodes), 1)


def rank_threads(wildcards, resources) -> int:
    return max(cpus_per_rank(resources), 1)


def _thread_env(resources) -> str:
    """Pin OpenMP/BLAS threads to the job's CPUs: with `--cores 2` two jobs share two cores, and
    oversubscribed numpy eigensolvers (FID) and torch kernels ran several times slower."""
    n = rank_threads(None, resources)
    return f"env OMP_NUM_THREADS={n} OPENBLAS_NUM_THREADS={n} MKL_NUM_THREADS={n}"


def udit_cmd(wildcards, resources) -> str:
    return f"{_thread_env(resources)} {UDIT}"


def python_cmd(wildcards, resources) -> str:
    return f"{_thread_env(resources)} {PYTHON}"


def external(path: str) -> list[str]:
    """A file the user provides (ImageNet, reference batch, Inception weights) is an input
    only once it exists, so `snakemake -n` lists every node before the downloads; the CLI
    stops with a clear error if it is still missing when the job runs."""
    return [path] if Path(path).exists() else []


class Dag:
    """Nodes, paths, inputs, options and resources of one config (see the module doc).

    `error` is the exception a bad wildcard raises (Snakemake's WorkflowError in the DAG)."""

    def __init__(self, config: dict, *, config_files=(), error: type[Exception] = ValueError):
        self.config, self.error = config, error
        self.config_files = list(config_files)
        self.results = config.get("results", "results")
        self.datasets = config["datasets"]
        self.inception = config["inception"]
        self.standin = self.inception["weights"] == "standin"
        self.speed = config.get("speed", {})
        self.experiments = ex.resolve_experiments(config)
        self.released = ex.resolve_released(config)
        plan.check_partitions(config)
        # the steps with a training node: milestones + chunk ends that keep each job within its
        # partition's max_job_hours at `udit plan`'s throughput (torch-free for registry models)
        self.throughput = plan.Throughput.from_config(config)
        self.train_steps = plan.all_train_steps(self.experiments, config, self.throughput)

    # --- nodes -----------------------------------------------------------------------------
    def node(self, wildcards):
        """The Experiment or Released entry a wildcard set points at (clear error if unknown)."""
        name = wildcards.experiment
        entry = self.experiments.get(name) or self.released.get(name)
        if entry is None:
            known = ", ".join([*self.experiments, *self.released])
            raise self.error(f"unknown experiment {name!r}; known: {known}")
        return entry

    def evaluation(self, wildcards):
        """The Evaluation entry of one (experiment, evaluation tag) node."""
        evaluations = self.node(wildcards).evaluations
        found = [e for e in evaluations if e.tag == wildcards.tag]
        if not found:
            known = ", ".join(e.tag for e in evaluations)
            raise self.error(
                f"{wildcards.experiment}: no evaluation {wildcards.tag!r}; known: {known}"
            )
        return found[0]

    def all_metrics(self) -> list[str]:
        return [
            paths.metrics(self.results, eid, e.tag)
            for eid, exp in self.experiments.items()
            for e in exp.evaluations
        ]

    def all_grids(self) -> list[str]:
        return [
            paths.grid(self.results, eid, e.tag)
            for eid, exp in self.experiments.items()
            for e in exp.evaluations
        ]

    def final_checkpoints(self) -> list[str]:
        return [
            paths.checkpoint(self.results, eid, x.iterations) for eid, x in self.experiments.items()
        ]

    # --- data ------------------------------------------------------------------------------
    def images_dir(self, dataset: str) -> str:
        spec = self.datasets[dataset]
        return (
            spec["images"]
            if spec["source"] == "folder"
            else paths.data_images(self.results, dataset)
        )

    def vae_of(self, dataset: str) -> str | None:
        """Where the dataset's VAE comes from: a hub id, a local folder, or the DAG's tiny VAE."""
        vae = self.datasets[dataset].get("vae")
        return paths.tiny_vae(self.results) if vae == TINY_VAE else vae

    def vae_input(self, dataset: str) -> list[str]:
        """The tiny VAE folder is a DAG node; a hub id or user folder is not an input."""
        return [self.vae_of(dataset)] if self.datasets[dataset].get("vae") == TINY_VAE else []

    def reference_path(self, dataset: str) -> str:
        return self.datasets[dataset].get("reference") or paths.reference(self.results, dataset)

    def inception_weights(self) -> str:
        return paths.standin_inception(self.results) if self.standin else self.inception["weights"]

    def inception_input(self, wildcards=None):
        return self.inception_weights() if self.standin else external(self.inception["weights"])

    def images_input(self, dataset: str):
        """A toy dataset is a DAG node; a folder dataset is the user's (see external)."""
        path = self.images_dir(dataset)
        return path if self.datasets[dataset]["source"] == "toy" else external(path)

    def missing_external(self) -> list[tuple[str, str]]:
        """User-provided files the config names that are not there yet: (path, what it is)."""
        wanted = [
            (spec["images"], f"ImageFolder of dataset {name}")
            for name, spec in self.datasets.items()
            if spec["source"] == "folder"
        ]
        wanted += [
            (spec["reference"], f"reference batch of dataset {name}")
            for name, spec in self.datasets.items()
            if spec.get("reference")
        ]
        if not self.standin:
            wanted.append((self.inception["weights"], f"Inception weights ({INCEPTION_FILE})"))
        return [(path, what) for path, what in wanted if not Path(path).exists()]

    def dataset_inputs(self, wildcards) -> dict:
        """Inputs of a per-dataset data node: its images (and its VAE where the DAG makes it)."""
        return {
            "images": self.images_input(wildcards.dataset),
            "vae": self.vae_input(wildcards.dataset),
        }

    def dataset_params(self, wildcards) -> dict:
        spec = self.datasets[wildcards.dataset]
        return {
            "images": self.images_dir(wildcards.dataset),
            "image_size": spec["image_size"],
            "vae": self.vae_of(wildcards.dataset),
            "classes": spec["num_classes"],
            "per_class": spec.get("per_class", 1),
            "seed": spec.get("seed", 0),
            # `--num-images N` when the config caps the reference (shell-quoted), else ''
            "subset": shlex.join(["--num-images", str(n)])
            if (n := spec.get("reference_images"))
            else "",
        }

    def calibration_dataset(self) -> str:
        return self.inception.get("calibration_dataset") or next(iter(self.datasets))

    def standin_params(self) -> dict:
        dataset = self.calibration_dataset()
        return {
            "seed": self.inception.get("standin_seed", 0),
            "images": self.images_dir(dataset),
            "size": self.datasets[dataset]["image_size"],
        }

    # --- training --------------------------------------------------------------------------
    def train_start(self, wildcards) -> int:
        """The milestone or chunk end this training node resumes from (0 = from scratch)."""
        earlier = [s for s in self.train_steps[wildcards.experiment] if s < int(wildcards.step)]
        return earlier[-1] if earlier else 0

    def train_inputs(self, wildcards) -> dict:
        """Training data (shared latents or images) and the milestone this node resumes from."""
        exp = self.experiments[wildcards.experiment]
        if self.datasets[exp.dataset].get("vae"):
            inputs = {"data": paths.latents_manifest(self.results, exp.dataset)}
        else:
            inputs = {"data": self.images_input(exp.dataset)}
        start = self.train_start(wildcards)
        if start:
            inputs["previous"] = paths.checkpoint(self.results, exp.id, start)
        return inputs

    def train_options(self, wildcards, resources) -> str:
        """`udit train --options`: the node's TrainOptions fields as one JSON document."""
        exp = self.experiments[wildcards.experiment]
        steps = self.train_steps[exp.id]
        if int(wildcards.step) not in steps:
            raise self.error(
                f"{exp.id}: step {wildcards.step} is not a milestone or chunk end ({steps})"
            )
        if self.datasets[exp.dataset].get("vae"):
            source = {
                "latents": str(Path(paths.latents_manifest(self.results, exp.dataset)).parent)
            }
        else:
            source = {"images": self.images_dir(exp.dataset), "pixel": True}
        return json.dumps(
            {
                **self._model_options(exp),
                "run_dir": paths.train_dir(self.results, exp.id),
                **source,
                "total_steps": exp.iterations,
                "global_batch": exp.global_batch,
                "ckpt_every": exp.ckpt_every,
                "log_every": exp.log_every,
                # chunk ends too: each is the next node's input, kept like a milestone
                "milestones": steps,
                "stop_at": int(wildcards.step),
                "resume": "auto",
                "seed": exp.seed,
                "precision": exp.precision,
                "grad_accum": exp.grad_accum,
                "checkpoint_minutes": exp.checkpoint_minutes,
                # DataLoader workers per rank: one CPU kept for the rank itself (1 CPU on the
                # smoke run -> 0 workers: forked workers only competed for it)
                "num_workers": max(cpus_per_rank(resources) - 1, 0),
            }
        )

    def _model_options(self, entry) -> dict:
        spec = self.datasets[entry.dataset]
        return {
            "model": entry.model,
            "model_kw": entry.model_kw,
            "num_classes": spec["num_classes"],
            "image_size": spec["image_size"],
        }

    # --- sampling and evaluation -----------------------------------------------------------
    def missing_released(self) -> dict:
        return {rid: rel for rid, rel in self.released.items() if not Path(rel.path).is_file()}

    @staticmethod
    def released_error(missing: dict) -> str:
        lines = [f"  {rel.path}  <-  {rel.url}" for rel in missing.values()]
        return (
            "released checkpoints missing; download each file to the path on its left:\n"
            + "\n".join(lines)
        )

    def sample_checkpoint(self, wildcards) -> str:
        entry = self.node(wildcards)
        if wildcards.experiment in self.released:
            if not Path(entry.path).is_file():
                raise self.error(self.released_error({entry.id: entry}))
            return entry.path
        return paths.checkpoint(self.results, entry.id, self.evaluation(wildcards).step)

    def sample_options(self, wildcards) -> str:
        """`udit sample --options`: the node's sampling options as one JSON document. A
        training checkpoint carries its model options; a released state dict does not."""
        entry, e = self.node(wildcards), self.evaluation(wildcards)
        vae = self.vae_of(entry.dataset)
        options = {
            "num_samples": e.fid_samples,
            "cfg_scale": e.cfg,
            "seed": e.sample_seed,
            "steps": e.sampling_steps,
            "precision": entry.precision,
            **({"vae": vae} if vae else {"pixel": True}),
        }
        if wildcards.experiment in self.released:
            options.update(self._model_options(entry))
        return json.dumps(options)

    def sample_vae_input(self, wildcards) -> list[str]:
        return self.vae_input(self.node(wildcards).dataset)

    def eval_reference(self, wildcards):
        dataset = self.node(wildcards).dataset
        path = self.reference_path(dataset)
        return external(path) if self.datasets[dataset].get("reference") else path

    def eval_reference_path(self, wildcards) -> str:
        return self.reference_path(self.node(wildcards).dataset)

    def released_metrics(self, wildcards=None) -> list[str]:
        missing = self.missing_released()
        if missing:
            raise self.error(self.released_error(missing))
        return [
            paths.metrics(self.results, rid, e.tag)
            for rid, rel in self.released.items()
            for e in rel.evaluations
        ]

    def existing_released_metrics(self) -> list[str]:
        """Metrics of released checkpoints already evaluated (`snakemake released` is optional):
        the report re-renders when one appears and builds without them."""
        return [
            path
            for rid, rel in self.released.items()
            for e in rel.evaluations
            if Path(path := paths.metrics(self.results, rid, e.tag)).is_file()
        ]

    # --- summary ---------------------------------------------------------------------------
    def speed_args(self) -> str:
        """benchmarks/speed.py options from the config's `speed` (shell-quoted)."""
        quick = ["--quick"] if self.speed.get("quick") else []
        return shlex.join([*quick, "--device", self.speed.get("device", "cuda")])

    def report_speed(self) -> list[str]:
        """Table 11's input: required where the config says so (smoke), else read if present."""
        speed = paths.speed(self.results)
        return [speed] if self.speed.get("in_report") else external(speed)

    def report_config(self, wildcards=None) -> str:
        """The config file this run was started with (relative to the working directory)."""
        return self.config_files[0] if self.config_files else "config/smoke.yaml"

    # --- export ----------------------------------------------------------------------------
    def exportable(self, exp) -> bool:
        """Only latent-space runs: DiTPipeline decodes latents with the run's VAE."""
        return bool(self.datasets[exp.dataset].get("vae"))

    def all_exports(self) -> list[str]:
        return [
            paths.export(self.results, eid, step)
            for eid, exp in self.experiments.items()
            if self.exportable(exp)
            for step in exp.milestones
        ]

    def export_experiment(self, wildcards):
        """The experiment of an export node (clear error for one the DAG cannot export)."""
        exp = self.experiments.get(wildcards.experiment)
        if exp is None:
            raise self.error(
                f"export: {wildcards.experiment!r} is not a trained experiment of this config "
                f"(released checkpoints: `udit export --model NAME --vae VAE`); known: "
                f"{', '.join(self.experiments)}"
            )
        if not self.exportable(exp):
            raise self.error(
                f"export: {exp.id} trains on pixels (dataset {exp.dataset} has no vae); "
                "DiTPipeline only drives latent-space models"
            )
        steps = self.train_steps[exp.id]
        if wildcards.step == paths.RELEASED_STEP or int(wildcards.step) not in steps:
            raise self.error(
                f"export: {exp.id} has no training node at step {wildcards.step} (steps: {steps})"
            )
        return exp

    @staticmethod
    def card_evaluation(exp, step: int):
        """The unguided (cfg 1.0) evaluation of `step`, the card's metrics; None if there is
        none (the card compares with the paper's unguided rows, never guided metrics)."""
        found = (e for e in exp.evaluations if e.step == step and e.cfg == 1.0 and not e.draw)
        return next(found, None)

    def export_inputs(self, wildcards) -> dict:
        exp = self.export_experiment(wildcards)
        step = int(wildcards.step)
        inputs = {
            "checkpoint": paths.checkpoint(self.results, exp.id, step),
            "vae": self.vae_input(exp.dataset),
        }
        if (e := self.card_evaluation(exp, step)) is not None:
            inputs["metrics"] = paths.metrics(self.results, exp.id, e.tag)
        return inputs

    def export_args(self, wildcards, input) -> str:
        """--vae (as `udit sample` gets it); --metrics and the paper row where the DAG
        evaluates the milestone unguided; shell-quoted."""
        exp = self.export_experiment(wildcards)
        args = ["--vae", self.vae_of(exp.dataset)]
        if "metrics" in input.keys():  # noqa: SIM118 (a Namedlist's `in` reads values)
            args += ["--metrics", input.metrics]
            paper = self.card_evaluation(exp, int(wildcards.step)).paper
            if paper:  # the paper row this milestone reproduces: the card's paper column
                args += ["--paper-table", paper[0].table, "--paper-row", paper[0].row]
                args += ["--paper-key", paper[0].key] if paper[0].key else []
        return shlex.join(args)

    # --- resources -------------------------------------------------------------------------
    def size_of(self, wildcards) -> str:
        name = getattr(wildcards, "experiment", None)
        if name in self.experiments:
            return self.experiments[name].size
        return "XL" if name in self.released else "default"

    def _resource(self, rule_name: str, key: str):
        table = self.config.get("resources", {}).get(rule_name, {})

        def get(wildcards, attempt):
            size = self.size_of(wildcards)
            limits = plan.partition_limits(self.config, rule_name, size)
            if rule_name == "export" and key == "mem_mb":
                value = EXPORT_MEM_MB.get(size, RESOURCE_FALLBACK["mem_mb"])
            else:
                entry = table.get(size) or table.get("default") or {}
                value = entry.get(key, RESOURCE_FALLBACK.get(key))
            if key == "runtime" and rule_name == "train" and limits:
                # minutes of one training node at `udit plan`'s throughput (+ margin, capped)
                per_step, _ = plan.hours_per_step(
                    self.experiments[wildcards.experiment], self.config, self.throughput
                )
                steps = int(wildcards.step) - self.train_start(wildcards)
                value = plan.runtime_minutes(steps * per_step, limits)
            return plan.scaled(key, value, attempt, limits) if key in ATTEMPT_SCALED else value

        return get

    def resources_for(self, rule_name: str) -> dict:
        """SLURM resources of a rule from config `resources`, picked by the node's size class.

        gpu -> sbatch --gpus; slurm_partition only where the config names one (else the
        profile's)."""
        table = self.config.get("resources", {}).get(rule_name, {})
        keys = set(RESOURCE_FALLBACK) | {k for entry in table.values() for k in entry}
        return {key: self._resource(rule_name, key) for key in sorted(keys)}

    def external_needs(self, jobs) -> set[tuple[str, str]]:
        """{(kind, dataset)} the jobs about to run read from outside the DAG."""
        needs = set()
        for job in jobs:
            name, w = job.rule.name, job.wildcards
            dataset = getattr(w, "dataset", None)
            if dataset is None and getattr(w, "experiment", None):
                dataset = self.node(w).dataset
            kinds = EXTERNAL_NEEDS.get(name, ())
            if name == "train" and not self.datasets[dataset].get("vae"):
                kinds = ("images",)  # pixel-space training reads the folder itself
            needs |= {(kind, "" if kind == "inception" else dataset) for kind in kinds}
        return needs
