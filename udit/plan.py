"""`udit plan --configfile config/paper.yaml`: compute and hours of every GPU job before launch.

    train  GPU-h = fvcore forward MACs per image x 3 (forward + backward) x images seen / rate
    sample GPU-h = forward MACs x sampling steps x (2 if cfg > 1: guidance doubles the batch)
                   x samples / rate  +  VAE decode MACs x samples / rate
    eval   GPU-h = Inception MACs x samples / rate
    job hours    = GPU-h / the job's GPUs (config `resources`)

FLOPs follow the paper's convention (one multiply-accumulate = one FLOP, as fvcore counts; see
udit/flops.py). The rate (MACs/s per GPU) is, in order: --gpu-macs-per-s or plan.gpu_macs_per_s
(one number for every model); the measured images/s of the model from a benchmarks/speed.py
JSON (--speed-json or plan.speed_json); else the paper's own speed, T11, per model family:
DiT-XL/2 for DiT models, the nearest-sized vanilla U-DiT row for vanilla U-shaped models,
U-DiT-L (all modifications) for U-DiTs with any modification. Sampling and evaluation use the
same MACs/s as training unless the JSON measured them (an assumption: forward-only kernels are
at least as efficient as training ones). T11 was measured with TF32 on A100s; PRECISION_FACTOR
below says how other precisions are treated.

With config `partitions`, a training stretch between two milestones that would run longer than
its partition's max_job_hours is split into chained chunk nodes (train_steps): the DAG and this
plan share the split, and every printed job is <= max_job_hours.
"""

import argparse
import functools
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

from udit import experiments as ex
from udit import power
from udit.argtypes import POSITIVE, Range
from udit.errors import BadValueError, command_main
from udit.paper import recipe

BACKWARD_FACTOR = 3  # forward + backward ~ 3x forward (DiT paper's training-compute convention)
SD_VAE_FACTOR = 8  # sd-vae-ft-ema: 256 px -> 32x32 latents (paper section 4)
TINY_VAE_FACTOR = 4  # udit.data.vae.tiny_vae_config: three blocks, 32 px -> 8x8
T11 = "training_speed_T11"
T11_GPUS = 8  # T11: 8x A100 80G (training_settings.hardware)
# T11 rows per family, and where each row's GFLOPs are in paper_numbers.yaml
FAMILY_ROWS = {
    "dit": {"DiT-XL/2 (replicated)": ("dit_gflops", "DiT-XL/2")},
    "udit-vanilla": {
        "U-DiT-B vanilla": ("vanilla_vs_all_T10", "U-DiT-B vanilla"),
        "U-DiT-L vanilla": ("vanilla_vs_all_T10", "U-DiT-L vanilla"),
    },
    "udit": {"U-DiT-L all modifications": ("vanilla_vs_all_T10", "U-DiT-L all modifications")},
}
# Rate relative to T11's TF32 (the official code turns TF32 on; A100). Both factors err on the
# side of more hours, so a job is never sized too short:
#   bf16 1.0: no speed-up assumed (measure it: --speed-json);
#   fp32 1/8: NVIDIA A100 datasheet, dense FP32 19.5 TFLOPS vs TF32 tensor core 156 TFLOPS,
#             the slow-down if every MAC were a matmul (non-matmul work is not slowed).
PRECISION_FACTOR = {"tf32": 1.0, "bf16": 1.0, "fp32": 1 / 8}
DEFAULT_PRECISION = "tf32"
RUNTIME_MARGIN = 1.25  # SLURM runtime of a job = planned minutes x this + start-up
STARTUP_MINUTES = 15  # imports, data loading, checkpoint resume and the final save
FORWARD_RATES = ("vae_decode", "inception")  # speed JSON sections with a forward-only rate
MAX_SPEED_JSON_BYTES = 10_000_000  # speed.py writes a few KB
# Bounded plan: the training nodes a config may create, checked by arithmetic before any list
# of steps is built. config/paper.yaml with 24 h jobs has 80 (at most 15 per run, U-DiT-L).
# 1000 chunks of its longest run (1M steps) are jobs of 1000 steps, 20 min at the paper's
# U-DiT-L speed, each paying STARTUP_MINUTES of start-up: a max_job_hours typo, not a plan.
# The total, 250x the paper's, bounds the DAG any config can ask Snakemake to build (0.001 h
# once built chunks until MemoryError); a choice, not a measured limit of Snakemake.
MAX_CHUNKS_PER_EXPERIMENT = 1000
MAX_TRAIN_NODES = 20_000


# --- MACs ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def macs_index() -> dict:
    from udit.models.macs import MACS_PATH

    return json.loads(MACS_PATH.read_text())


def latent_geometry(dataset: dict) -> tuple[int, int]:
    """(side, channels) of what the model sees for a dataset: VAE latents or pixels."""
    vae = dataset.get("vae")
    if not vae:
        return dataset["image_size"], 3
    factor = TINY_VAE_FACTOR if vae == "tiny" else SD_VAE_FACTOR
    return dataset["image_size"] // factor, 4


def model_gflops(*, model: str, input_size: int, in_channels: int, model_kw: dict) -> float:
    """fvcore forward GMACs per image of the registry model as the experiment builds it."""
    return model_macs(model, input_size, in_channels, model_kw) / 1e9


def model_macs(model: str, input_size: int, in_channels: int, model_kw: dict) -> int:
    """fvcore forward MACs per image (model_gflops x 1e9), counted live."""
    import torch

    from udit.flops import count_flops
    from udit.models import get_spec

    spec = get_spec(model)
    kwargs = {"input_size": input_size, **model_kw}
    if in_channels != 4:
        kwargs["in_channels"] = in_channels
    try:
        try:  # uninitialised weights on meta -> CPU: values do not change FLOPs, building is fast
            with torch.device("meta"):
                net = spec.build(**kwargs)
            net = net.to_empty(device="cpu")
        except (NotImplementedError, RuntimeError):
            net = spec.build(**kwargs)
    except ValueError as err:  # the constructor's own checks of the config's values
        raise ex.ConfigError(f"{model} does not build with {kwargs}: {err}") from err
    macs, _ = count_flops(net.eval(), input_size=input_size, in_channels=in_channels)
    return macs


def macs_key(entry, config: dict) -> tuple[str, int, int, str]:
    """(model, side, channels, model_kw as sorted JSON): what fixes an entry's MACs."""
    side, channels = latent_geometry(config["datasets"][entry.dataset])
    return entry.model, side, channels, json.dumps(entry.model_kw, sort_keys=True)


def registered_gmacs(model, side, channels, model_kw_json, *, models=None) -> float | None:
    """The count of the registered model at a paper latent side in macs.json (or in `models`,
    an index's "models" being built), else None."""
    entry = (macs_index()["models"] if models is None else models).get(model)
    if entry and channels == 4 and model_kw_json == "{}" and str(side) in entry["gmacs"]:
        return entry["gmacs"][str(side)]
    return None


@functools.lru_cache(maxsize=1)
def _scaled_macs() -> dict:
    return {
        (e["model"], e["side"], e["channels"], json.dumps(e["model_kw"], sort_keys=True)): e["macs"]
        for e in macs_index()["scaled"]
    }


@functools.cache
def _gmacs(model: str, side: int, channels: int, model_kw_json: str) -> float:
    # no torch for what macs.json holds: the registry, and the toy models of config/smoke.yaml
    # (an fvcore count of all 27 takes 30 s, which `udit plan` would pay on every call)
    registered = registered_gmacs(model, side, channels, model_kw_json)
    if registered is not None:
        return registered
    counted = _scaled_macs().get((model, side, channels, model_kw_json))
    if counted is not None:
        return counted / 1e9
    kw = json.loads(model_kw_json)
    return model_gflops(model=model, input_size=side, in_channels=channels, model_kw=kw)


def gmacs_of(entry, config: dict) -> float:
    """Forward GMACs per image of an Experiment or Released entry."""
    try:
        return _gmacs(*macs_key(entry, config))
    except ex.ConfigError as err:
        raise ex.ConfigError(f"experiments/{entry.id}: {err}") from err


def family_of(model: str) -> str:
    return macs_index()["models"][model]["family"]


def precision_of(config: dict, experiment_id: str) -> str:
    """An experiment's `precision` (else defaults.precision, else the paper's TF32)."""
    exp = config.get("experiments", {}).get(experiment_id, {})
    value = exp.get("precision") or config.get("defaults", {}).get("precision")
    return value or DEFAULT_PRECISION


# --- rates ---------------------------------------------------------------------------------
def t11_rates() -> dict[str, dict[str, tuple[float, float]]]:
    """family -> T11 row -> (forward GFLOPs per image, MACs/s per GPU) at global batch 256."""
    numbers = ex.paper_numbers()
    batch = recipe().global_batch
    out = {}
    for fam, rows in FAMILY_ROWS.items():
        out[fam] = {}
        for row, (table, name) in rows.items():
            value = numbers[table][name]
            gflops = value[0] if isinstance(value, list) else value  # T10: [gflops, fid, ...]
            rate = gflops * 1e9 * BACKWARD_FACTOR * batch * numbers[T11][row] / T11_GPUS
            out[fam][row] = (gflops, rate)
    return out


def load_speed_json(path: str | Path) -> dict:
    """A benchmarks/speed.py --json file (schema 1), checked for everything the plan reads:
    every rate a positive finite number, else an error naming the file, field and value."""
    text = ex.read_bounded_text(
        path, what="speed JSON", max_bytes=MAX_SPEED_JSON_BYTES, error=BadValueError
    )
    try:
        data = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer of over 4300 digits
        raise BadValueError(f"speed JSON {path} is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise BadValueError(f"speed JSON {path}: expected schema 1 from benchmarks/speed.py")
    train = data.get("train", [])
    if not isinstance(train, list):
        raise BadValueError(f"speed JSON {path}: train is {_shown(train)}, expected a list")
    for i, row in enumerate(train):
        if not isinstance(row, dict) or not all(k in row for k in ("model", "path", "precision")):
            raise BadValueError(f"speed JSON {path}: train[{i}] lacks model, path or precision")
        for key in ("images_per_s", "gmacs_per_image"):
            _check_rate(path, f"train[{i}].{key}", row.get(key))
    for section in FORWARD_RATES:  # optional (speed.py --only-train leaves them out)
        if section in data:
            value = data[section]
            rate = value.get("images_per_s") if isinstance(value, dict) else value
            _check_rate(path, f"{section}.images_per_s", rate)
    return data


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _check_rate(path, field: str, value) -> None:
    if not positive_number(value):
        raise BadValueError(
            f"speed JSON {path}: {field} is {_shown(value)}, expected a positive finite number "
            "(re-run benchmarks/speed.py --json or fix the file)"
        )


def positive_number(x) -> bool:
    """A positive finite number (argtypes.POSITIVE: no bool, no NaN/inf, no huge int)."""
    return POSITIVE.check(x) is None


class Throughput:
    """MACs/s per GPU for a model: given, measured (speed JSON) or T11 per family."""

    def __init__(self, *, gpu_macs_per_s: float | None = None, speed: dict | None = None):
        self.given = gpu_macs_per_s
        self.speed = speed
        self.t11 = t11_rates()

    @classmethod
    def from_config(cls, config: dict, *, gpu_macs_per_s=None, speed_json=None) -> "Throughput":
        plan = config.get("plan", {})
        given = gpu_macs_per_s or plan.get("gpu_macs_per_s")
        path = speed_json or plan.get("speed_json")
        return cls(gpu_macs_per_s=given, speed=load_speed_json(path) if path else None)

    def _measured(self, model: str, precision: str) -> dict | None:
        rows = [
            r
            for r in (self.speed or {}).get("train", [])
            if r["model"] == model
            and r["precision"] == precision
            and str(r["path"]).startswith("harness")
        ]
        return max(rows, key=lambda r: r["images_per_s"]) if rows else None

    def train(self, *, model: str, gmacs: float, precision: str) -> tuple[float, str]:
        """(MACs/s per GPU, where it comes from) for training `model` at `precision`."""
        if self.given:
            return self.given, "given"
        row = self._measured(model, precision)
        if row:
            rate = row["gmacs_per_image"] * 1e9 * BACKWARD_FACTOR * row["images_per_s"]
            quick = " quick" if self.speed.get("quick") else ""
            return rate, f"measured{quick} {row['path']}"
        fam = family_of(model)
        rows = self.t11[fam]
        # nearest-sized row of the family (log GFLOPs): U-DiT-L vanilla -> its own T11 row
        row_name = min(rows, key=lambda r: abs(math.log(rows[r][0] / gmacs)))
        factor = PRECISION_FACTOR[precision]
        return rows[row_name][1] * factor, f"T11 {row_name}" + (
            f" x{factor:g} ({precision})" if factor != 1 else ""
        )

    def images_per_s(self, key: str) -> float | None:
        """A measured forward-only rate (vae_decode, inception) per GPU, if the JSON has it
        (load_speed_json has checked that a rate it has is positive)."""
        return (self.speed or {}).get(key, {}).get("images_per_s")


# --- partitions and chunks -----------------------------------------------------------------
def resource_entry(config: dict, rule: str, size: str) -> dict:
    table = config.get("resources", {}).get(rule, {})
    return table.get(size) or table.get("default") or {}


def partition_name(config: dict, rule: str, size: str) -> str:
    """The partition a rule's job goes to ('default' where its resources name none)."""
    return resource_entry(config, rule, size).get("slurm_partition", "default")


def partition_limits(config: dict, rule: str, size: str) -> dict | None:
    """The config `partitions` entry of the partition a rule's job goes to (None: no limits)."""
    return config.get("partitions", {}).get(partition_name(config, rule, size))


def check_partitions(config: dict) -> None:
    """Limits that contradict each other or the resources asked for stop at config time."""
    for name, limits in config.get("partitions", {}).items():
        if limits["max_job_hours"] * 60 > limits["max_runtime"]:
            raise ex.ConfigError(
                f"partitions/{name}: max_job_hours {limits['max_job_hours']} is longer than "
                f"max_runtime {limits['max_runtime']} minutes"
            )
    for rule, table in config.get("resources", {}).items():
        for size, entry in table.items():
            limits = partition_limits(config, rule, size)
            for key, cap in (("mem_mb", "max_mem_mb"), ("runtime", "max_runtime")):
                if limits and entry.get(key, 0) > limits[cap]:
                    raise ex.ConfigError(
                        f"resources/{rule}/{size}: {key} {entry[key]} exceeds its partition's "
                        f"{cap} {limits[cap]}"
                    )


def job_gpus(config: dict, rule: str, size: str) -> int:
    """GPUs of one job (one process on CPU)."""
    return max(int(resource_entry(config, rule, size).get("gpu", 0)), 1)


def _stretch_units(start: int, end: int, max_steps: int) -> tuple[int, int, int]:
    """(unit, units, chunks) of the stretch (start, end]: whole thousands when it allows."""
    span = end - start
    unit = 1000 if span % 1000 == 0 and max_steps >= 1000 else 1
    units, per_chunk = span // unit, max_steps // unit
    return unit, units, -(-units // per_chunk)  # ceil


def split_stretch(start: int, end: int, max_steps: int) -> list[int]:
    """Chunk ends of (start, end] with at most max_steps each, as even as possible, on whole
    thousands when the stretch allows: (200000, 400000, 80000) -> [266000, 333000, 400000]."""
    unit, units, n = _stretch_units(start, end, max_steps)
    return [start + (units * k // n) * unit for k in range(1, n + 1)]


def hours_per_step(exp, config: dict, throughput: Throughput) -> tuple[float, str]:
    """Wall-clock hours of one training step of `exp` on its job's GPUs, and the rate source."""
    gmacs = gmacs_of(exp, config)
    rate, source = throughput.train(
        model=exp.model, gmacs=gmacs, precision=precision_of(config, exp.id)
    )
    gpus = job_gpus(config, "train", exp.size)
    return gmacs * 1e9 * BACKWARD_FACTOR * exp.global_batch / rate / gpus / 3600, source


def max_steps_per_job(exp, config: dict, throughput: Throughput) -> int | None:
    """Training steps that fit one job of `exp`'s partition (None: the partition has no
    limits); refused when not even one step fits."""
    limits = partition_limits(config, "train", exp.size)
    if not limits:
        return None
    per_step, _ = hours_per_step(exp, config, throughput)
    max_steps = math.floor(limits["max_job_hours"] / per_step)
    if max_steps < 1:
        raise ex.ConfigError(
            f"experiments/{exp.id}: one training step takes {per_step:.3g} h, longer than "
            f"max_job_hours {limits['max_job_hours']}"
        )
    return max_steps


def _stretches(exp) -> list[tuple[int, int]]:
    starts = [0, *exp.milestones[:-1]]
    return list(zip(starts, exp.milestones))


def train_node_count(exp, config: dict, throughput: Throughput) -> int:
    """How many training nodes train_steps would make, by arithmetic (no list is built);
    refused past MAX_CHUNKS_PER_EXPERIMENT, naming the partition, experiment and count."""
    max_steps = max_steps_per_job(exp, config, throughput)
    if max_steps is None:
        return len(exp.milestones)
    count = sum(_stretch_units(a, b, max_steps)[2] for a, b in _stretches(exp))
    if count > MAX_CHUNKS_PER_EXPERIMENT:
        name = partition_name(config, "train", exp.size)
        hours = config["partitions"][name]["max_job_hours"]
        raise ex.ConfigError(
            f"experiments/{exp.id}: partitions/{name}/max_job_hours {hours} fits {max_steps} "
            f"steps per job, so its {exp.iterations} steps need {count} chained training "
            f"chunks, over the cap of {MAX_CHUNKS_PER_EXPERIMENT} per experiment; "
            "raise max_job_hours"
        )
    return count


def train_steps(exp, config: dict, throughput: Throughput | None = None) -> list[int]:
    """The steps with a training node: every milestone plus the chunk ends that keep each job
    within its partition's max_job_hours (only milestones when the partition has no limits).
    The count is checked against MAX_CHUNKS_PER_EXPERIMENT before the list is built."""
    throughput = throughput or Throughput.from_config(config)
    train_node_count(exp, config, throughput)
    max_steps = max_steps_per_job(exp, config, throughput)
    if max_steps is None:
        return exp.milestones
    return [end for a, b in _stretches(exp) for end in split_stretch(a, b, max_steps)]


def all_train_steps(experiments: dict, config: dict, throughput: Throughput) -> dict:
    """Experiment id -> train_steps, once every count (and their sum, against MAX_TRAIN_NODES)
    is known to be within its cap."""
    counts = {eid: train_node_count(e, config, throughput) for eid, e in experiments.items()}
    total = sum(counts.values())
    if total > MAX_TRAIN_NODES:
        largest = max(counts, key=counts.get)
        raise ex.ConfigError(
            f"the experiments need {total} training nodes in all (most: {largest}, "
            f"{counts[largest]}), over the cap of {MAX_TRAIN_NODES}; raise the partitions' "
            "max_job_hours or run fewer experiments"
        )
    return {eid: train_steps(e, config, throughput) for eid, e in experiments.items()}


def scaled(key: str, value: float, attempt: int, limits: dict | None) -> float:
    """A retry (attempt 2, 3, ...) after a time/memory kill asks for `attempt` x runtime or
    mem_mb, never past the partition's max_runtime / max_mem_mb."""
    cap = {"runtime": "max_runtime", "mem_mb": "max_mem_mb"}[key]
    return min(value * attempt, limits[cap]) if limits else value * attempt


def runtime_minutes(hours: float, limits: dict | None) -> int:
    """SLURM runtime of a job planned at `hours`: margin + start-up, capped by the partition."""
    minutes = math.ceil(hours * 60 * RUNTIME_MARGIN) + STARTUP_MINUTES
    return min(minutes, limits["max_runtime"]) if limits else minutes


# --- the plan ------------------------------------------------------------------------------
@dataclass
class PlanRow:
    experiment: str
    model: str
    table: str
    from_step: int
    to_step: int
    milestone: bool  # False: a chunk end added to fit max_job_hours
    gflops: float  # forward GMACs per image
    images: int  # images seen in this node
    train_pflops: float  # 3 x forward x images, in PMACs
    gpu_hours: float
    gpus: int
    hours: float  # wall-clock hours of the job
    rate_source: str


@dataclass
class SampleRow:
    experiment: str
    tag: str  # '0400000-cfg1.5'
    model: str
    samples: int
    steps: int
    cfg: float
    sample_pflops: float  # denoiser + VAE decode, in PMACs
    sample_gpu_hours: float
    eval_gpu_hours: float  # Inception features of the samples
    gpus: int
    hours: float  # wall-clock hours of the sample job


def plan_rows(config: dict, *, throughput: Throughput) -> list[PlanRow]:
    experiments = ex.resolve_experiments(config)
    steps_of = all_train_steps(experiments, config, throughput)
    rows = []
    for exp in experiments.values():
        gflops = gmacs_of(exp, config)
        gpus = job_gpus(config, "train", exp.size)
        rate, source = throughput.train(
            model=exp.model, gmacs=gflops, precision=precision_of(config, exp.id)
        )
        start = 0
        for step in steps_of[exp.id]:
            images = (step - start) * exp.global_batch
            macs = gflops * 1e9 * BACKWARD_FACTOR * images
            gpu_hours = macs / rate / 3600
            rows.append(
                PlanRow(
                    experiment=exp.id,
                    model=exp.model,
                    table=exp.table,
                    from_step=start,
                    to_step=step,
                    milestone=step in exp.milestones,
                    gflops=gflops,
                    images=images,
                    train_pflops=macs / 1e15,
                    gpu_hours=gpu_hours,
                    gpus=gpus,
                    hours=gpu_hours / gpus,
                    rate_source=source,
                )
            )
            start = step
    return rows


def sample_rows(config: dict, *, throughput: Throughput) -> list[SampleRow]:
    """One row per evaluation node of the experiments (released checkpoints are not planned)."""
    index = macs_index()
    rows = []
    for exp in ex.resolve_experiments(config).values():
        gflops = gmacs_of(exp, config)
        rate, _ = throughput.train(
            model=exp.model, gmacs=gflops, precision=precision_of(config, exp.id)
        )
        side, _ = latent_geometry(config["datasets"][exp.dataset])
        vae = config["datasets"][exp.dataset].get("vae")
        vae_gmacs = index["vae_decode_gmacs"].get(str(side), 0.0) if vae != "tiny" else 0.0
        gpus = job_gpus(config, "sample", exp.size)
        for e in exp.evaluations:
            guided = 2 if e.cfg > 1 else 1  # guidance runs the conditional + unconditional batch
            net_macs = gflops * 1e9 * e.sampling_steps * guided * e.fid_samples
            vae_macs = vae_gmacs * 1e9 * e.fid_samples
            decode_rate = throughput.images_per_s("vae_decode")
            decode_s = e.fid_samples / decode_rate if decode_rate else vae_macs / rate
            sample_h = (net_macs / rate + decode_s) / 3600
            inception_rate = throughput.images_per_s("inception")
            eval_s = (
                e.fid_samples / inception_rate
                if inception_rate
                else index["inception_gmacs"] * 1e9 * e.fid_samples / rate
            )
            rows.append(
                SampleRow(
                    experiment=exp.id,
                    tag=e.tag,
                    model=exp.model,
                    samples=e.fid_samples,
                    steps=e.sampling_steps,
                    cfg=e.cfg,
                    sample_pflops=(net_macs + vae_macs) / 1e15,
                    sample_gpu_hours=sample_h,
                    eval_gpu_hours=eval_s / 3600,
                    gpus=gpus,
                    hours=sample_h / gpus,
                )
            )
    return rows


def _aligned(header: list[str], rows: list[list[str]], *, text: set[str]) -> list[str]:
    """Header, rule and rows in columns as wide as their widest cell, two spaces apart: the
    `text` columns left-aligned, the numbers right-aligned."""
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if name in text else cell.rjust(w)
            for name, cell, w in zip(header, cells, widths, strict=True)
        ).rstrip()

    head = line(header)
    return [head, "-" * len(head), *map(line, rows)]


PLAN_COLUMNS = [
    "experiment", "model", "tab", "steps", "GFLOPs", "PFLOPs", "GPU-h", "GPUs", "job h", "rate",
]  # fmt: skip
SAMPLE_COLUMNS = [
    "experiment", "evaluation", "samples", "steps", "cfg", "PFLOPs", "sample GPU-h", "eval GPU-h",
    "GPUs", "job h",
]  # fmt: skip
TEXT_COLUMNS = {"experiment", "model", "tab", "rate", "evaluation"}


def format_plan(rows: list[PlanRow], samples: list[SampleRow], *, note: str) -> str:
    train = [
        [r.experiment, r.model, r.table, f"{r.from_step}->{r.to_step}" + " *"[not r.milestone],
         f"{r.gflops:.3f}", f"{r.train_pflops:.4g}", f"{r.gpu_hours:.4g}", str(r.gpus),
         f"{r.hours:.4g}", r.rate_source]
        for r in rows
    ]  # fmt: skip
    sample = [
        [s.experiment, s.tag, str(s.samples), str(s.steps), f"{s.cfg:g}", f"{s.sample_pflops:.4g}",
         f"{s.sample_gpu_hours:.4g}", f"{s.eval_gpu_hours:.4g}", str(s.gpus), f"{s.hours:.4g}"]
        for s in samples
    ]  # fmt: skip
    train_h = sum(r.gpu_hours for r in rows)
    sample_h = sum(s.sample_gpu_hours for s in samples)
    eval_h = sum(s.eval_gpu_hours for s in samples)
    milestones = sum(r.milestone for r in rows)
    train_pflops = sum(r.train_pflops for r in rows)
    return "\n".join(
        [
            "training nodes (* = chunk end added for max_job_hours)",
            *_aligned(PLAN_COLUMNS, train, text=TEXT_COLUMNS),
            "",
            "sampling and evaluation nodes",
            *_aligned(SAMPLE_COLUMNS, sample, text=TEXT_COLUMNS),
            "",
            (
                f"training: {len(rows)} nodes ({milestones} milestones + {len(rows) - milestones} "
                f"chunk ends), {train_pflops:.4g} PFLOPs, {train_h:.4g} GPU-h; "
                f"longest job {max((r.hours for r in rows), default=0):.4g} h"
            ),
            f"sampling: {len(samples)} nodes, {sample_h:.4g} GPU-h; evaluation {eval_h:.4g} GPU-h",
            f"total: {train_h + sample_h + eval_h:.4g} GPU-h",
            (
                f"compute = fvcore forward MACs x {BACKWARD_FACTOR} x images seen (training), x "
                f"steps x 2 with guidance x samples + VAE decode (sampling); rates: {note}"
            ),
        ]
    )


def rates_note(throughput: Throughput) -> str:
    if throughput.given:
        return f"{throughput.given / 1e12:.1f} TMAC/s per GPU (given)"
    parts = [
        f"{row} {rate / 1e12:.2f} TMAC/s/GPU"
        for rows in throughput.t11.values()
        for row, (_, rate) in rows.items()
    ]
    source = "speed JSON where it has the model, else " if throughput.speed else ""
    return (
        f"{source}T11 (8x A100, batch 256, TF32): {'; '.join(parts)}; "
        f"precision factors {PRECISION_FACTOR}"
    )


# --- claims: power planning (udit plan --claims; statistics in udit/power.py) ---------------
NOISE_COV = Range("float", 0, 1, low_open=True)  # --noise-cov: relative noise of one run
CLAIM_TEXT_WIDTH = 72
ROW_WIDTH = 32


@dataclass(frozen=True)
class Arm:
    """Where the config reproduces one paper row: an evaluation of an experiment, or of a
    released checkpoint (one network: it is sampled, never retrained)."""

    experiment: str
    step: int
    tag: str
    released: bool = False

    def label(self) -> str:
        if self.released:
            return f"{self.experiment} (released)"
        step = (
            f"{self.step // 10**6}M"
            if self.step >= 10**6 and self.step % 10**6 == 0
            else f"{self.step // 1000}K"
            if self.step >= 1000 and self.step % 1000 == 0
            else self.step
        )
        guided = self.tag.partition("-")[2]
        return f"{self.experiment}@{step}" + ("" if guided == "cfg1.0" else f"/{guided}")


@dataclass
class ComparisonPlan:
    text: str  # 'FID U-DiT-S < DiT-S/2 (replicated)'
    metric: str
    lower: float | None  # the paper's values (None: it reports none)
    higher: float | None
    effect: float | None  # relative effect d
    runs: int | None  # per arm; None: no number of runs decides it (see note)
    arms: tuple[Arm, ...]  # the runs it needs (none for a deterministic metric)
    missing: tuple[str, ...] = ()  # its rows that no evaluation of the config reproduces
    note: str = ""


@dataclass
class ClaimPlan:
    id: str
    claim: str
    runs: int | None
    gpu_hours: float | None  # runs x the GPU-hours of its arms' plan rows; None: not costed
    comparisons: list[ComparisonPlan]
    note: str = ""  # pending, or why it is not costed


def row_arms(config: dict) -> dict[tuple[str, str], list[Arm]]:
    """(table, row) -> the evaluations that reproduce it, trained experiments first; a keyed
    row is 'row @ key' as in claims.yaml."""
    arms: dict[tuple[str, str], list[Arm]] = {}
    entries = [*ex.resolve_experiments(config).values(), *ex.resolve_released(config).values()]
    for entry in entries:
        for e in (e for e in entry.evaluations if not e.draw):  # an arm is a run, not a draw
            for ref in e.paper:
                row = ref.row + (f" @ {ref.key}" if ref.key else "")
                arm = Arm(entry.id, e.step, e.tag, released=e.released)
                arms.setdefault((ref.table, row), []).append(arm)
    return arms


def measured_noise(config: dict) -> tuple[float, str]:
    """(FID CoV, where from): the training lottery measured in the config's results (the
    report's median over replicated groups, udit.report.lottery), for --measured-noise."""
    from udit.report import lottery

    results = Path(config.get("results", "results"))
    measured = lottery.measure(ex.resolve_experiments(config), results)
    if measured.median_cov is None:
        raise BadValueError(
            f"--measured-noise: no replicated experiment has two evaluated seeds in {results}; "
            "set `replicates: K` (K >= 2) and run them, or give --noise-cov"
        )
    scale = (
        "toy scale, stand-in Inception: this harness's seed noise, not the paper's"
        if measured.uncalibrated
        else "calibrated Inception"
    )
    return measured.median_cov, (
        f"CoV {measured.median_cov * 100:.3g}% per training run (measured: median over "
        f"{measured.groups} replicated groups in {results}; {scale})"
    )


def noise_of(metric: str, given: float | None, measured: tuple | None = None) -> tuple[float, str]:
    """(relative noise of one run, where it comes from) for a metric: given (--noise-cov),
    measured (FID only, --measured-noise), else the assumed paper noise."""
    from udit.report import tolerances

    if metric in power.DETERMINISTIC_METRICS:
        return 0.0, "deterministic (fvcore count), 1 count"
    if given is not None:
        return given, f"CoV {given * 100:.3g}% per training run (given: --noise-cov)"
    if measured is not None and metric == "fid":
        return measured
    if metric in tolerances.PAPER_NOISE:
        cov, why = tolerances.PAPER_NOISE[metric]
        return cov, f"CoV {cov * 100:.3g}% per training run (assumed: {why})"
    raise BadValueError(f"no training-seed noise is known for {metric}: give --noise-cov")


def plan_comparison(comparison, arms: dict, noise: float) -> ComparisonPlan:
    """The paper's values, effect and runs of one comparison, and the evaluations it needs."""
    from udit.report import claims

    sides = (comparison.lower, comparison.higher)
    values = [claims.paper_lookup(*side, comparison.metric) for side in sides]
    lower, higher = (v.value if isinstance(v, claims.Number) else None for v in values)
    out = ComparisonPlan(comparison.text(), comparison.metric, lower, higher, None, None, ())
    if lower is None or higher is None:
        out.note = "the paper reports no value"
        return out
    out.effect = power.relative_effect(lower, higher)
    deterministic = comparison.metric in power.DETERMINISTIC_METRICS
    found = [None if deterministic else arms.get(side, [None])[0] for side in sides]
    fixed = any(arm is not None and arm.released for arm in found)
    try:
        out.runs = power.metric_replicates(comparison.metric, out.effect, noise, fixed_arm=fixed)
    except ValueError as err:  # the paper's own values are not in the claimed order
        out.note = str(err)
        return out
    out.arms = tuple(arm for arm in found if arm is not None)
    if not deterministic:
        out.missing = tuple(side[1] for side, arm in zip(sides, found) if arm is None)
    notes = ["fvcore count, no training"] if deterministic else []
    if out.missing:
        notes.append(f"not in this config: {', '.join(out.missing)}")
    if out.runs is None:
        notes.append("one arm is a released network: no number of runs of the other decides it")
    out.note = "; ".join(notes)
    return out


def plan_claims(
    config: dict, *, noise_cov: float | None, measured: tuple | None = None
) -> list[ClaimPlan]:
    """One ClaimPlan per claim of claims.yaml (GPU-hours filled in by cost_claims)."""
    from udit.report import claims

    arms = row_arms(config)
    plans = []
    for claim in claims.load():
        plan = ClaimPlan(claim.id, claim.text, None, None, [])
        if claim.pending:
            plan.note = f"pending: {claim.pending}"
        else:
            plan.comparisons = [
                plan_comparison(c, arms, noise_of(c.metric, noise_cov, measured)[0])
                for c in claim.comparisons
            ]
            plan.runs = power.claim_replicates(c.runs for c in plan.comparisons)
        plans.append(plan)
    return plans


def needs_hours(needs, rows: list[PlanRow], samples: list[SampleRow]) -> float:
    """GPU-hours of needs [(arm, runs)]: each training row of an arm's experiment up to its
    step, and the sampling + evaluation row of its tag, x runs; a plan row that several needs
    share counts once, at the most runs any of them asks (released arms cost nothing here)."""
    needs = [(arm, runs) for arm, runs in needs if not arm.released]

    def most(match) -> int:
        return max((runs for arm, runs in needs if match(arm)), default=0)

    train = sum(
        r.gpu_hours * most(lambda a, r=r: a.experiment == r.experiment and a.step >= r.to_step)
        for r in rows
    )
    sample = sum(
        (s.sample_gpu_hours + s.eval_gpu_hours)
        * most(lambda a, s=s: a.experiment == s.experiment and a.tag == s.tag)
        for s in samples
    )
    return train + sample


def cost_claims(plans: list[ClaimPlan], rows, samples) -> float:
    """Fill in each decidable claim's GPU-hours; return the GPU-hours of all of them at once
    (an experiment shared by claims counted once)."""
    everything = []
    for plan in plans:
        missing = dict.fromkeys(row for c in plan.comparisons for row in c.missing)
        if plan.note or plan.runs is None or missing:
            plan.note = plan.note or (
                f"not costed: not in this config: {', '.join(missing)}"
                if missing
                else "not costed: a comparison has no number of runs that decides it"
            )
            continue
        needs = [(arm, plan.runs) for c in plan.comparisons for arm in c.arms]
        plan.gpu_hours = needs_hours(needs, rows, samples)
        everything += needs
    return needs_hours(everything, rows, samples)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _comparison_line(c: ComparisonPlan) -> str:
    label, _, rest = c.text.partition(" ")
    low_row, _, high_row = rest.partition(" < ")
    text = (
        f"{label} {_cut(low_row, ROW_WIDTH)} {_number(c.lower)} < {_cut(high_row, ROW_WIDTH)} "
        f"{_number(c.higher)}"
    )
    effect = "" if c.effect is None else f": d {c.effect:.1%}"
    runs = f", runs {_number(c.runs)}" if c.effect is not None else ""
    where = " vs ".join(arm.label() for arm in c.arms)
    return f"{text}{effect}{runs}" + "".join(f"; {part}" for part in (where, c.note) if part)


def format_claims(plans: list[ClaimPlan], *, total: float, noise: str, toy: bool) -> str:
    z1, z2 = NormalDist().inv_cdf(1 - power.ALPHA / 2), NormalDist().inv_cdf(power.POWER)
    head = f"{'claim':<5} {'runs':>5} {'GPU-h':>9}  claim; each comparison: paper a < b, d, runs"
    formula = (
        f"two-sided alpha {power.ALPHA:g}, power {power.POWER:g}, unpaired normal approximation: "
        f"runs = ceil(2 x ({z1:.3f} + {z2:.3f})^2 x (s / d)^2), d = (b - a) / mean(a, b) "
        "(a released arm: udit/power.py)"
    )
    cost = (
        "GPU-h = runs x (training to the step + sampling + evaluation) of the experiments "
        "named, from the plan rows of `udit plan`; the config's own run is one of them"
    )
    lines = [
        "claims (udit/paper/claims.yaml): training runs per arm for a decisive answer at the "
        + "paper's effect",
        f"  {formula}",
        f"  noise s: {noise}",
        f"  {cost}",
    ]
    if toy:
        lines.append("  toy scale: GPU-hours are of this config's toy runs, not the paper's")
    lines += [head, "-" * len(head)]
    for p in plans:
        lines.append(
            f"{p.id:<5} {_number(p.runs):>5} {_number(p.gpu_hours):>9}  "
            f"{_cut(p.claim, CLAIM_TEXT_WIDTH)}"
        )
        lines += [f"{'':<18}{_comparison_line(c)}" for c in p.comparisons]
        if p.note:
            lines.append(f"{'':<18}{p.note}")
    left_out = [p.id for p in plans if p.gpu_hours is None]
    lines.append(
        f"all decisive: {total:.4g} GPU-hours (an experiment shared by claims counted once, at "
        f"the most runs any asks; not costed: {', '.join(left_out) or 'none'})"
    )
    return "\n".join(lines)


def add_claims_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--claims",
        action="store_true",
        help="per claim of udit/paper/claims.yaml: the training runs per arm a decisive answer "
        "needs at the paper's effect, and their GPU-hours (udit/power.py)",
    )
    parser.add_argument(
        "--noise-cov",
        type=NOISE_COV,
        default=None,
        help="relative noise (coefficient of variation) of one training run's FID, e.g. 0.013 "
        "(default: udit.report.tolerances.PAPER_NOISE, the FID Lottery's 1.3%%)",
    )
    parser.add_argument(
        "--measured-noise",
        action="store_true",
        help="take FID's noise from the training lottery measured in the config's results (the "
        "report's median CoV over replicated experiments) instead of the assumed 1.3%%",
    )


def claims_output(config: dict, args, rows, samples) -> str:
    """`udit plan --claims`: the claims table (or its JSON)."""
    measured = measured_noise(config) if args.measured_noise else None
    plans = plan_claims(config, noise_cov=args.noise_cov, measured=measured)
    total = cost_claims(plans, rows, samples)
    from udit.report import claims
    from udit.report.tables import METRIC_LABELS

    metrics = sorted({c.metric for claim in claims.load() for c in claim.comparisons})
    noise = "; ".join(
        f"{METRIC_LABELS[m]} {noise_of(m, args.noise_cov, measured)[1]}" for m in metrics
    )
    toy = bool(config.get("scale")) or any(
        d.get("source") == "toy" for d in config["datasets"].values()
    )
    if args.format == "json":
        out = {"noise": noise, "toy": toy, "all_decisive_gpu_hours": total}
        return json.dumps({**out, "claims": [asdict(p) for p in plans]}, indent=1)
    return format_claims(plans, total=total, noise=noise, toy=toy)


@command_main("udit plan")
def main(argv: list[str] | None = None) -> int:
    """`udit plan`: per node and in total, the compute and hours of a config's jobs."""
    parser = argparse.ArgumentParser(prog="udit plan", description=main.__doc__)
    parser.add_argument(
        "--configfile", required=True, help="workflow config, e.g. config/paper.yaml"
    )
    parser.add_argument(
        "--gpu-macs-per-s",
        type=POSITIVE,
        default=None,
        help="sustained MACs/s per GPU for every model (default: config plan.gpu_macs_per_s, "
        "else the speed JSON, else T11 per model family)",
    )
    parser.add_argument(
        "--speed-json",
        default=None,
        help="benchmarks/speed.py --json output (default: config plan.speed_json)",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    add_claims_flags(parser)
    args = parser.parse_args(argv)
    if (args.noise_cov is not None or args.measured_noise) and not args.claims:
        parser.error("--noise-cov and --measured-noise are used only with --claims")
    if args.noise_cov is not None and args.measured_noise:
        parser.error("give --noise-cov or --measured-noise, not both")
    config = ex.load_config(args.configfile)
    ex.resolve_released(config)  # not planned, but checked as `snakemake -n` checks it
    check_partitions(config)
    throughput = Throughput.from_config(
        config, gpu_macs_per_s=args.gpu_macs_per_s, speed_json=args.speed_json
    )
    rows = plan_rows(config, throughput=throughput)
    samples = sample_rows(config, throughput=throughput)
    note = rates_note(throughput)
    if args.claims:
        print(claims_output(config, args, rows, samples))
        return 0
    if args.format == "json":
        out = {
            "throughput_source": note,
            "nodes": [asdict(r) for r in rows],
            "sampling": [asdict(s) for s in samples],
            "total_pflops": sum(r.train_pflops for r in rows),
            "total_gpu_hours": sum(r.gpu_hours for r in rows),
            "total_sample_gpu_hours": sum(s.sample_gpu_hours for s in samples),
            "total_eval_gpu_hours": sum(s.eval_gpu_hours for s in samples),
        }
        print(json.dumps(out, indent=1))
    else:
        print(format_plan(rows, samples, note=note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
