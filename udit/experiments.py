"""Experiments as data: load + validate a workflow config and resolve it into DAG nodes.

One place for the Snakefile, `udit plan` and the report:

    config = load_config("config/paper.yaml")       # validated against the JSON schema
    experiments = resolve_experiments(config)       # id -> Experiment (milestones, evaluations)
    experiments["u-dit-b"].evaluations[0].paper[0].values()   # the paper's numbers, by reference

A config either lists `experiments` itself (config/paper.yaml) or names a `base` config and
a `scale` that maps the base's experiments to toy sizes (config/smoke.yaml): both share one
experiment list. Paper numbers are never copied into configs: an evaluation names a table
and row of udit/paper/paper_numbers.yaml and they are read from there.
"""
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from udit.paper import paper_numbers

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
STEP_DIGITS = 7        # checkpoint names are ckpt-{step:07d}.pt (udit.checkpointing)
RELEASED_STEP = "released"  # step tag of official checkpoints (no training node)
DEFAULTS = {           # paper recipe: architecture-facts.md "Recipe" (official train.py / sample_ddp.py)
    "global_batch": 256,
    "ckpt_every": 50_000,
    "seed": 0,
    "fid_samples": 50_000,
    "sampling_steps": 250,
    "sample_seed": 0,
}
PAPER_COLUMNS_KEY = "columns"


class ConfigError(ValueError):
    """A config that does not describe a runnable set of experiments; the message names the key."""


@dataclass(frozen=True)
class PaperRef:
    table: str               # key of udit/paper/paper_numbers.yaml, e.g. 'main_400k_T2'
    row: str                 # row name, e.g. 'U-DiT-B'
    key: str | None = None   # sub-key of rows with several entries, e.g. '400K' in longer_training_T5

    def values(self) -> dict:
        """The paper's numbers of this row as {column: value} (None where not reported)."""
        return paper_row(table=self.table, row=self.row, key=self.key)

    def label(self) -> str:
        return f"{self.table} / {self.row}" + (f" / {self.key}" if self.key else "")


@dataclass(frozen=True)
class Evaluation:
    step: int                 # milestone checkpoint sampled (training iteration)
    cfg: float                # classifier-free guidance scale (1.0 = none)
    fid_samples: int
    sampling_steps: int
    sample_seed: int
    paper: tuple[PaperRef, ...] = ()

    @property
    def tag(self) -> str:
        """File stem of this node's samples and metrics: '0400000-cfg1.5'."""
        return f"{step_tag(self.step)}-cfg{cfg_tag(self.cfg)}"


@dataclass(frozen=True)
class Experiment:
    id: str
    model: str
    table: str
    size: str                 # resource class: toy, S, B, L, XL
    dataset: str
    iterations: int
    global_batch: int
    ckpt_every: int
    seed: int
    evaluations: tuple[Evaluation, ...]
    title: str = ""
    model_kw: dict = field(default_factory=dict)

    @property
    def milestones(self) -> list[int]:
        """Training steps with a kept checkpoint that some evaluation samples; the last is the run's end."""
        return sorted({e.step for e in self.evaluations} | {self.iterations})

    def previous_milestone(self, step: int) -> int:
        """The milestone this training node resumes from (0 = from scratch)."""
        earlier = [m for m in self.milestones if m < step]
        return earlier[-1] if earlier else 0

    def images_seen(self, step: int | None = None) -> int:
        return (self.iterations if step is None else step) * self.global_batch


@dataclass(frozen=True)
class Released:
    id: str
    model: str
    path: str
    url: str
    dataset: str
    evaluations: tuple[Evaluation, ...]
    model_kw: dict = field(default_factory=dict)


def step_tag(step: int) -> str:
    return f"{int(step):0{STEP_DIGITS}d}"


def cfg_tag(cfg: float) -> str:
    return str(float(cfg))   # 1 -> '1.0', 1.5 -> '1.5': one spelling per scale


@functools.lru_cache(maxsize=1)
def paper_row(*, table: str, row: str, key: str | None = None) -> dict:
    """Look a row up in paper_numbers.yaml; unknown names raise ConfigError listing the valid ones."""
    numbers = paper_numbers()
    if table not in numbers or table == PAPER_COLUMNS_KEY:
        raise ConfigError(f"paper table {table!r} is not in paper_numbers.yaml; tables: "
                          f"{', '.join(k for k in numbers if k != PAPER_COLUMNS_KEY)}")
    rows = {str(k): v for k, v in numbers[table].items()}  # YAML reads a row named 256 as an int
    if row not in rows:
        raise ConfigError(f"paper row {row!r} is not in table {table!r}; rows: {', '.join(rows)}")
    value = rows[row]
    if key is not None:
        subkeys = {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}
        if key not in subkeys:
            raise ConfigError(f"paper row {table!r} / {row!r} has no key {key!r}")
        value = subkeys[key]
    if isinstance(value, list):
        return dict(zip(numbers[PAPER_COLUMNS_KEY], value))
    return value if isinstance(value, dict) else {"value": value}


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate_config(config: dict, *, source: str = "config") -> None:
    """Validate against workflow/schemas/config.schema.yaml; the error names the offending key."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  at {'/'.join(map(str, e.absolute_path)) or '<top level>'}: {e.message}" for e in errors]
        raise ConfigError(f"{source} does not match {SCHEMA_PATH.name}:\n" + "\n".join(lines))


def load_config(path: str | Path, *, root: str | Path | None = None) -> dict:
    """Read, validate and (for a config with `base`) expand a config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    validate_config(config, source=str(path))
    return expand_base(config, root=root or REPO_ROOT)


def expand_base(config: dict, *, root: str | Path) -> dict:
    """Copy the `base` config's experiments into `config`, mapped by `scale` (released ones stay with the base)."""
    if "base" not in config:
        return config
    base_path = Path(root) / config["base"]
    base = load_config(base_path, root=root)
    scale = config["scale"]
    wanted = scale.get("only") or list(base["experiments"])
    unknown = sorted(set(wanted) - set(base["experiments"]))
    if unknown:
        raise ConfigError(f"scale.only names experiments not in {config['base']}: {', '.join(unknown)}")
    expanded = dict(config)
    expanded["experiments"] = {eid: _scaled(base["experiments"][eid], base=base, scale=scale, eid=eid)
                               for eid in wanted}
    return expanded


def _scaled_steps(steps: int, divisor: int) -> int:
    return max(1, round(steps / divisor))


def _scaled(exp: dict, *, base: dict, scale: dict, eid: str) -> dict:
    divisor = scale["step_divisor"]
    base_dataset = exp.get("dataset", base.get("defaults", {}).get("dataset"))
    if base_dataset not in scale["dataset_map"]:
        raise ConfigError(f"scale.dataset_map has no entry for dataset {base_dataset!r} (experiment {eid})")
    out = dict(exp)
    out["dataset"] = scale["dataset_map"][base_dataset]
    out["iterations"] = _scaled_steps(exp["iterations"], divisor)
    out["evaluations"] = [dict(e, step=_scaled_steps(e["step"], divisor)) for e in exp["evaluations"]]
    for key in ("global_batch", "ckpt_every", "fid_samples", "sampling_steps"):
        out[key] = scale[key]
    out["size"] = scale.get("size", exp["size"])
    prefixes = [p for p in scale.get("model_kw", {}) if exp["model"].startswith(p)]
    if prefixes:  # longest prefix wins: 'DiT-UNet' before 'DiT-'
        out["model_kw"] = {**exp.get("model_kw", {}), **scale["model_kw"][max(prefixes, key=len)]}
    return out


def _evaluations(raw: list[dict], *, defaults: dict, owner: dict, step: int | None = None) -> tuple[Evaluation, ...]:
    evals = []
    for e in raw:
        refs = tuple(PaperRef(**ref) for ref in e.get("paper", []))
        for ref in refs:
            ref.values()  # fail now, naming the bad reference, not in the report
        evals.append(Evaluation(
            step=e.get("step", step), cfg=float(e.get("cfg", 1.0)),
            fid_samples=owner.get("fid_samples", defaults["fid_samples"]),
            sampling_steps=owner.get("sampling_steps", defaults["sampling_steps"]),
            sample_seed=defaults["sample_seed"], paper=refs))
    tags = [(e.step, e.cfg) for e in evals]
    if len(tags) != len(set(tags)):
        raise ConfigError(f"duplicate (step, cfg) evaluations: {tags}")
    return tuple(evals)


def resolve_experiments(config: dict) -> dict[str, Experiment]:
    """Experiment id -> Experiment with every default filled in and every reference checked."""
    defaults = {**DEFAULTS, **config.get("defaults", {})}
    datasets = config["datasets"]
    experiments = {}
    for eid, exp in config["experiments"].items():
        where = f"experiments/{eid}"
        dataset = exp.get("dataset", defaults.get("dataset"))
        if dataset not in datasets:
            raise ConfigError(f"{where}: dataset {dataset!r} is not declared under datasets "
                              f"({', '.join(datasets)})")
        try:
            evaluations = _evaluations(exp["evaluations"], defaults=defaults, owner=exp)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{where}: {err}") from None
        late = [e.step for e in evaluations if e.step > exp["iterations"]]
        if late:
            raise ConfigError(f"{where}: evaluation steps {late} exceed iterations {exp['iterations']}")
        experiments[eid] = Experiment(
            id=eid, model=exp["model"], table=exp["table"], size=exp["size"], dataset=dataset,
            iterations=exp["iterations"], global_batch=exp.get("global_batch", defaults["global_batch"]),
            ckpt_every=exp.get("ckpt_every", defaults["ckpt_every"]), seed=exp.get("seed", defaults["seed"]),
            evaluations=evaluations, title=exp.get("title", exp["model"]), model_kw=dict(exp.get("model_kw", {})))
    return experiments


def resolve_released(config: dict) -> dict[str, Released]:
    defaults = {**DEFAULTS, **config.get("defaults", {})}
    released = {}
    for rid, rel in config.get("released", {}).items():
        if rel["dataset"] not in config["datasets"]:
            raise ConfigError(f"released/{rid}: dataset {rel['dataset']!r} is not declared under datasets")
        released[rid] = Released(
            id=rid, model=rel["model"], path=rel["path"], url=rel["url"], dataset=rel["dataset"],
            evaluations=_evaluations(rel["evaluations"], defaults=defaults, owner=rel, step=0),
            model_kw=dict(rel.get("model_kw", {})))
    return released


def check_models(experiments: dict[str, Experiment]) -> None:
    """Every model name must be in the registry (imports torch: call it from tools, not from -n)."""
    from udit.models import MODEL_NAMES
    unknown = sorted({e.model for e in experiments.values()} - set(MODEL_NAMES))
    if unknown:
        raise ConfigError(f"models not in the registry: {', '.join(unknown)}; known: {', '.join(MODEL_NAMES)}")


def parse_tag(tag: str) -> tuple[str, float]:
    """'0400000-cfg1.5' -> ('0400000', 1.5)."""
    match = re.fullmatch(r"(\d{%d}|%s)-cfg([0-9.]+)" % (STEP_DIGITS, RELEASED_STEP), tag)
    if not match:
        raise ValueError(f"not an evaluation tag: {tag!r}")
    return match.group(1), float(match.group(2))
