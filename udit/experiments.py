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

import dataclasses
import difflib
import functools
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from udit import paths
from udit.errors import UserError
from udit.paper import paper_numbers, recipe
from udit.precision import DEFAULT_PRECISION

# Package data, so a non-editable install validates configs too; workflow/schemas/ links here.
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
# Registry names and constructor keys as data (udit.models.index writes it): checking a config
# must not import torch, which doubled the time of `snakemake -n` (~2.5 s of 2.5 s).
MODEL_INDEX_PATH = Path(__file__).resolve().parent / "models" / "registry.json"
DEFAULTS = {  # the paper's recipe (udit.paper.recipe), keyed as the config's `defaults`
    "global_batch": recipe().global_batch,
    "ckpt_every": recipe().ckpt_every,
    "log_every": recipe().log_every,
    "seed": recipe().global_seed,
    "fid_samples": recipe().fid_samples,
    "sampling_steps": recipe().sampling_steps,
    "sample_seed": recipe().sample_seed,
    "precision": DEFAULT_PRECISION,  # TF32 as the official train.py / sample_ddp.py
}
PAPER_COLUMNS_KEY = "columns"
# Bounded work: config/paper.yaml is 15 KB and about 1,200 YAML nodes. Far above any real config
# (a bigger file is refused as not a config, checked before it is read)
# and far below what hangs a reader: pure-Python PyYAML parses about 2 MB/s, and a document
# whose aliases expand to millions of nodes ("billion laughs") hangs the schema check and
# fills its error message with the expansion.
MAX_CONFIG_BYTES = 5_000_000
MAX_YAML_NODES = 100_000
MIN_DATASET_IMAGE_SIZE = 8  # sd-vae-ft-ema downsamples 8x (udit.plan.SD_VAE_FACTOR)
MAX_SCHEMA_ERRORS = 10  # schema errors listed, each cut to MAX_SCHEMA_LINE characters: one
MAX_SCHEMA_LINE = 160  # screen, however large the offending value


class ConfigError(ValueError, UserError):
    """A config that does not describe a runnable set of experiments; the message names the key."""


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML (and Snakemake) keep the
    last one silently, so a duplicated experiment id replaced the first experiment."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may legitimately repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the parent class reports it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given at line {first.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path):
    """Parse a YAML config with UniqueKeyLoader, bounded: a file over MAX_CONFIG_BYTES or a
    document whose aliases expand past MAX_YAML_NODES is refused before it is built. Every
    error names the file (and the line and column where YAML gives one)."""
    path = Path(path)
    text = read_bounded_text(path, what="config file", max_bytes=MAX_CONFIG_BYTES)
    loader = UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # an empty file
            return None
        _check_expanded_size(node, path)
        return loader.construct_document(node)  # a SafeLoader subclass: no code runs
    except yaml.MarkedYAMLError as err:
        raise ConfigError(_yaml_error_text(err, path)) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except RecursionError:  # PyYAML composes and builds recursively
        raise ConfigError(f"{path}: nested too deeply for a config; flatten it") from None
    finally:
        loader.dispose()


def read_bounded_text(
    path: str | Path, *, what: str, max_bytes: int, error: type[UserError] | None = None
) -> str:
    """The UTF-8 text of `path`, refused (as `error`, default ConfigError) unless it is a
    regular file of at most `max_bytes`: checked with stat before reading, and the read stops
    there should the file grow. `what` names the kind of file in messages ('config file')."""
    error = error or ConfigError
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{what} {path} does not exist") from None
    if not stat.S_ISREG(info.st_mode):  # a folder, a FIFO, /dev/zero: no end or no text
        raise error(f"{what} {path} is not a regular file")
    too_big = f"{what} {path} is over {max_bytes:,} bytes: check that it is the file you meant"
    if info.st_size > max_bytes:
        raise error(too_big)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(too_big)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _yaml_error_text(err: yaml.MarkedYAMLError, path: Path) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    what = err.problem or err.context
    if err.problem and err.context and err.context_mark:  # where the broken part began
        what += f" ({err.context} from line {err.context_mark.line + 1})"
    return f"{where}: {what}"


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []  # a scalar


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose nodes, each alias counted as a full copy of its anchor, exceed
    MAX_YAML_NODES, or whose alias refers to itself. The composer gives an alias the very node
    of its anchor, so sizes memoised per node make this linear in the file, even for a
    "billion laughs" document whose expansion would never fit in memory."""
    sizes: dict[int, int] = {}  # id(node) -> expanded size, capped at MAX_YAML_NODES + 1
    on_path: set[int] = set()  # nodes being counted: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            total = 1 + sum(sizes[id(child)] for child in _node_children(node))
            sizes[key] = min(total, MAX_YAML_NODES + 1)
            on_path.discard(key)
            if total > MAX_YAML_NODES:  # the root holds this node: it is over the cap too
                raise ConfigError(
                    f"{path}:{node.start_mark.line + 1}: its aliases (*name) expand to more than "
                    f"{MAX_YAML_NODES} YAML nodes (a workflow config has a few thousand); "
                    "write the values out or repeat fewer aliases"
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: an alias refers to the node that holds it "
                "(a recursive structure); a config cannot be recursive"
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _node_children(node) if id(child) not in sizes)


@functools.lru_cache(maxsize=1)
def model_index() -> dict:
    """{'models': name -> constructor, 'constructors': constructor -> its keyword names}."""
    return json.loads(MODEL_INDEX_PATH.read_text())


def check_model(model: str, model_kw: dict, *, where: str) -> None:
    """`model` is a registry name and every `model_kw` key a parameter of its constructor, so a
    typo stops `snakemake -n` instead of failing (or training the wrong model) in a job."""
    index = model_index()
    if model not in index["models"]:
        close = difflib.get_close_matches(model, index["models"], n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigError(
            f"{where}: model {model!r} is not in the registry; {hint}"
            f"known: {', '.join(index['models'])}"
        )
    constructor = index["models"][model]
    valid = index["constructors"][constructor]
    unknown = [k for k in model_kw if k not in valid]
    if unknown:
        raise ConfigError(
            f"{where}: model_kw {', '.join(map(repr, unknown))} is not a parameter of {model} "
            f"({constructor}); valid keys: {', '.join(valid)}"
        )


@dataclass(frozen=True)
class PaperRef:
    table: str  # key of udit/paper/paper_numbers.yaml, e.g. 'main_400k_T2'
    row: str  # row name, e.g. 'U-DiT-B'
    key: str | None = (
        None  # sub-key of rows with several entries, e.g. '400K' in longer_training_T5
    )

    def values(self) -> dict:
        """The paper's numbers of this row as {column: value} (None where not reported)."""
        return paper_row(table=self.table, row=self.row, key=self.key)


@dataclass(frozen=True)
class Evaluation:
    step: int  # milestone checkpoint sampled (training iteration)
    cfg: float  # classifier-free guidance scale (1.0 = none)
    fid_samples: int
    sampling_steps: int
    sample_seed: int
    paper: tuple[PaperRef, ...] = ()
    released: bool = False  # of an official checkpoint: step tag 'released', no training node
    # The generation lottery: draw k samples the same checkpoint with sample_seed + k (draw 0:
    # the config's seed); the report pools a run's draws of one (step, cfg).
    draw: int = 0

    @property
    def tag(self) -> str:
        """File stem of this node's samples and metrics (udit.paths): '0400000-cfg1.5' for
        draw 0, '0400000-cfg1.5-seed{sample_seed}' for the others."""
        step = paths.RELEASED_STEP if self.released else self.step
        return paths.eval_tag(step, self.cfg, self.sample_seed if self.draw else None)

    @property
    def base_tag(self) -> str:
        """'0400000-cfg1.5': the (step, cfg) every draw of this evaluation shares."""
        return dataclasses.replace(self, draw=0).tag


@dataclass(frozen=True)
class Experiment:
    id: str
    model: str
    table: str
    size: str  # resource class: toy, S, B, L, XL
    dataset: str
    iterations: int
    global_batch: int
    ckpt_every: int
    seed: int
    evaluations: tuple[Evaluation, ...]
    title: str = ""
    model_kw: dict = field(default_factory=dict)
    precision: str = DEFAULT_PRECISION  # tf32 | bf16 | fp32, for its train and sample jobs
    grad_accum: int = 1  # micro-batches per optimiser step (fewer or smaller GPUs)
    checkpoint_minutes: float = 30  # also checkpoint this often
    log_every: int = recipe().log_every  # steps between training-log lines
    # The training lottery: replicate k of experiment `group` trains with the group's seed + k
    # (k = 0 is the experiment itself); the report and the claims pool a group's replicates.
    group: str = ""  # the config's experiment id this run is a replicate of (its own for k = 0)
    replicate: int = 0

    @property
    def milestones(self) -> list[int]:
        """Training steps with a kept checkpoint that some evaluation samples; the last is the
        run's end."""
        return sorted({e.step for e in self.evaluations} | {self.iterations})


@dataclass(frozen=True)
class Released:
    id: str
    model: str
    path: str
    url: str
    dataset: str
    evaluations: tuple[Evaluation, ...]
    model_kw: dict = field(default_factory=dict)
    precision: str = DEFAULT_PRECISION


@functools.lru_cache(maxsize=1)
def paper_row(*, table: str, row: str, key: str | None = None) -> dict:
    """Look a row up in paper_numbers.yaml; unknown names raise ConfigError listing the valid
    ones."""
    numbers = paper_numbers()
    if table not in numbers or table == PAPER_COLUMNS_KEY:
        raise ConfigError(
            f"paper table {table!r} is not in paper_numbers.yaml; tables: "
            f"{', '.join(k for k in numbers if k != PAPER_COLUMNS_KEY)}"
        )
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


def _finite_number(checker, instance) -> bool:
    base = jsonschema.Draft202012Validator.TYPE_CHECKER
    return base.is_type(instance, "number") and math.isfinite(instance)


# The schema's `number` is a finite one: YAML's .nan passes every bound (NaN compares false) and
# .inf every minimum, and no config value means either.
ConfigValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _finite_number),
)


def _schema_message(err: jsonschema.ValidationError) -> str:
    value = err.instance
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    return _cut(err.message)


def validate_config(config: dict, *, source: str = "config") -> None:
    """Validate against udit/schemas/config.schema.yaml (numbers finite); the error names
    the offending key and fits on a screen."""
    validator = ConfigValidator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [
            f"  at {'/'.join(map(str, e.absolute_path)) or '<top level>'}: {_schema_message(e)}"
            for e in errors[:MAX_SCHEMA_ERRORS]
        ]
        if len(errors) > MAX_SCHEMA_ERRORS:
            lines.append(f"  ... and {len(errors) - MAX_SCHEMA_ERRORS} more")
        raise ConfigError(f"{source} does not match {SCHEMA_PATH.name}:\n" + "\n".join(lines))


def _cut(text: str, limit: int = MAX_SCHEMA_LINE) -> str:
    """jsonschema's messages quote the offending value, which may be a whole subtree."""
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more]"


def load_config(
    path: str | Path, *, root: str | Path | None = None, chain: tuple[str, ...] = ()
) -> dict:
    """Read, validate and (for a config with `base`) expand a config file. `chain` holds the
    configs whose `base` led here, so a loop of bases is refused."""
    path = Path(path)
    config = load_yaml(path) or {}  # names a missing file, a folder or a FIFO as such
    validate_config(config, source=str(path))
    # `base:` is relative to the working directory, as every path Snakemake reads from config
    return expand_base(config, root=root or Path.cwd(), chain=(*chain, os.path.realpath(path)))


def expand_base(config: dict, *, root: str | Path, chain: tuple[str, ...] = ()) -> dict:
    """Copy the `base` config's experiments into `config`, mapped by `scale` (released ones
    stay with the base)."""
    if "base" not in config:
        return config
    base_path = Path(root) / config["base"]
    if os.path.realpath(base_path) in chain:
        loop = " -> ".join([*chain, os.path.realpath(base_path)])
        raise ConfigError(f"base {config['base']} leads back to a config it is the base of: {loop}")
    base = load_config(base_path, root=root, chain=chain)
    scale = config["scale"]
    wanted = scale.get("only") or list(base["experiments"])
    unknown = sorted(set(wanted) - set(base["experiments"]))
    if unknown:
        raise ConfigError(
            f"scale.only names experiments not in {config['base']}: {', '.join(unknown)}"
        )
    for key in ("replicated", "resampled"):
        unknown = sorted(set(scale.get(key, {})) - set(base["experiments"]))
        if unknown:  # one left out by `only` is fine: narrowing a run keeps its counts
            raise ConfigError(
                f"scale.{key} names experiments not in {config['base']}: {', '.join(unknown)}"
            )
    _check_scale_model_kw(scale.get("model_kw", {}), base["experiments"], base=config["base"])
    expanded = dict(config)
    expanded["experiments"] = {
        eid: _scaled(base["experiments"][eid], base=base, scale=scale, eid=eid) for eid in wanted
    }
    return expanded


def _check_scale_model_kw(model_kw: dict, experiments: dict, *, base: str) -> None:
    """Every `scale.model_kw` prefix must match a model of the base config (a typo was ignored
    and trained a full-size model in the toy run), and its keys must fit those models."""
    models = sorted({exp["model"] for exp in experiments.values()})
    for prefix, kw in model_kw.items():
        matched = [m for m in models if m.startswith(prefix)]
        if not matched:
            raise ConfigError(
                f"scale/model_kw/{prefix}: the prefix matches no model of {base} "
                f"({', '.join(models)}); fix or remove it"
            )
        for model in matched:
            if model in model_index()["models"]:  # an unknown name is reported by its experiment
                check_model(model, kw, where=f"scale/model_kw/{prefix}")


def _scaled_steps(steps: int, divisor: int) -> int:
    return max(1, round(steps / divisor))


def _scaled(exp: dict, *, base: dict, scale: dict, eid: str) -> dict:
    divisor = scale["step_divisor"]
    base_dataset = exp.get("dataset", base.get("defaults", {}).get("dataset"))
    if base_dataset not in scale["dataset_map"]:
        raise ConfigError(
            f"scale.dataset_map has no entry for dataset {base_dataset!r} (experiment {eid})"
        )
    out = dict(exp)
    out["dataset"] = scale["dataset_map"][base_dataset]
    out["iterations"] = _scaled_steps(exp["iterations"], divisor)
    out["evaluations"] = [
        dict(e, step=_scaled_steps(e["step"], divisor)) for e in exp["evaluations"]
    ]
    for key in ("global_batch", "ckpt_every", "fid_samples", "sampling_steps"):
        out[key] = scale[key]
    if "log_every" in scale:  # optional: short toy runs log every step
        out["log_every"] = scale["log_every"]
    if eid in scale.get("replicated", {}):
        out["replicates"] = scale["replicated"][eid]
    if eid in scale.get("resampled", {}):
        out["sample_seeds"] = scale["resampled"][eid]
    out["size"] = scale.get("size", exp["size"])
    prefixes = [p for p in scale.get("model_kw", {}) if exp["model"].startswith(p)]
    if prefixes:  # longest prefix wins: 'DiT-UNet' before 'DiT-'
        out["model_kw"] = {**exp.get("model_kw", {}), **scale["model_kw"][max(prefixes, key=len)]}
    return out


def _evaluations(
    raw: list[dict], *, defaults: dict, owner: dict, released: bool = False
) -> tuple[Evaluation, ...]:
    evals = []
    for e in raw:
        refs = tuple(PaperRef(**ref) for ref in e.get("paper", []))
        for ref in refs:
            ref.values()  # fail now, naming the bad reference, not in the report
        first = Evaluation(
            step=0 if released else e["step"],
            cfg=float(e.get("cfg", recipe().cfg_scale)),
            fid_samples=owner.get("fid_samples", defaults["fid_samples"]),
            sampling_steps=owner.get("sampling_steps", defaults["sampling_steps"]),
            sample_seed=defaults["sample_seed"],
            paper=refs,
            released=released,
        )
        draws = owner.get("sample_seeds", defaults.get("sample_seeds", 1))
        evals += [
            dataclasses.replace(first, sample_seed=first.sample_seed + k, draw=k)
            for k in range(draws)
        ]
    tags = [(e.step, e.cfg) for e in evals if not e.draw]
    if len(tags) != len(set(tags)):
        raise ConfigError(f"duplicate (step, cfg) evaluations: {tags}")
    return tuple(evals)


def check_datasets(datasets: dict) -> None:
    """What the schema's ranges (argtypes.IMAGE_SIZE) leave to check: a dataset image must
    keep at least one latent pixel through the SD VAE's 8x downsampling."""
    for name, spec in datasets.items():
        if spec["image_size"] < MIN_DATASET_IMAGE_SIZE:
            raise ConfigError(
                f"datasets/{name}: image_size {spec['image_size']} is below "
                f"{MIN_DATASET_IMAGE_SIZE}, the VAE's downsampling factor (no latent pixel left)"
            )


def resolve_experiments(config: dict) -> dict[str, Experiment]:
    """Experiment id -> Experiment with every default filled in and every reference checked."""
    defaults = {**DEFAULTS, **config.get("defaults", {})}
    datasets = config["datasets"]
    check_datasets(datasets)
    experiments = {}
    for eid, exp in config["experiments"].items():
        where = f"experiments/{eid}"
        dataset = exp.get("dataset", defaults.get("dataset"))
        if dataset is None:
            raise ConfigError(
                f"{where}: no dataset: set its `dataset` or `defaults: {{dataset: NAME}}` to one "
                f"of {', '.join(datasets)}"
            )
        if dataset not in datasets:
            raise ConfigError(
                f"{where}: dataset {dataset!r} is not declared under datasets "
                f"({', '.join(datasets)})"
            )
        check_model(exp["model"], exp.get("model_kw", {}), where=where)
        try:
            evaluations = _evaluations(exp["evaluations"], defaults=defaults, owner=exp)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{where}: {err}") from None
        late = [e.step for e in evaluations if e.step > exp["iterations"]]
        if late:
            raise ConfigError(
                f"{where}: evaluation steps {late} exceed iterations {exp['iterations']}"
            )
        experiments[eid] = Experiment(
            id=eid,
            model=exp["model"],
            table=exp["table"],
            size=exp["size"],
            dataset=dataset,
            iterations=exp["iterations"],
            global_batch=exp.get("global_batch", defaults["global_batch"]),
            ckpt_every=exp.get("ckpt_every", defaults["ckpt_every"]),
            log_every=exp.get("log_every", defaults["log_every"]),
            seed=exp.get("seed", defaults["seed"]),
            evaluations=evaluations,
            title=exp.get("title", exp["model"]),
            group=eid,
            model_kw=dict(exp.get("model_kw", {})),
            precision=exp.get("precision", defaults["precision"]),
            # harness settings, not the paper's recipe: the dataclass defaults unless set
            grad_accum=exp.get("grad_accum", defaults.get("grad_accum", Experiment.grad_accum)),
            checkpoint_minutes=exp.get(
                "checkpoint_minutes",
                defaults.get("checkpoint_minutes", Experiment.checkpoint_minutes),
            ),
        )
        if experiments[eid].global_batch % experiments[eid].grad_accum:
            raise ConfigError(
                f"{where}: global_batch {experiments[eid].global_batch} is not divisible by "
                f"grad_accum {experiments[eid].grad_accum}"
            )
        replicates = exp.get("replicates", defaults.get("replicates", 1))
        for r in _replicates(experiments[eid], replicates):
            if r.id in config["experiments"] or r.id in experiments:
                raise ConfigError(f"{where}: replicate id {r.id!r} is an experiment id already")
            experiments[r.id] = r
    return experiments


def _replicates(exp: Experiment, count: int) -> list[Experiment]:
    """Replicates 1..count-1 of `exp`: the same run with seeds seed + 1, seed + 2, ..."""
    return [
        dataclasses.replace(exp, id=paths.replicate(exp.id, exp.seed + k), seed=exp.seed + k,
                            group=exp.id, replicate=k)
        for k in range(1, count)
    ]  # fmt: skip


def replicate_groups(experiments: dict[str, Experiment]) -> dict[str, list[Experiment]]:
    """Group id -> its replicates in order (an experiment without replicates: a group of 1)."""
    groups: dict[str, list[Experiment]] = {}
    for exp in experiments.values():
        groups.setdefault(exp.group, []).append(exp)
    return {gid: sorted(runs, key=lambda e: e.replicate) for gid, runs in groups.items()}


def resolve_released(config: dict) -> dict[str, Released]:
    defaults = {**DEFAULTS, **config.get("defaults", {})}
    released = {}
    for rid, rel in config.get("released", {}).items():
        if rel["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"released/{rid}: dataset {rel['dataset']!r} is not declared under datasets"
            )
        check_model(rel["model"], rel.get("model_kw", {}), where=f"released/{rid}")
        released[rid] = Released(
            id=rid,
            model=rel["model"],
            path=rel["path"],
            url=rel["url"],
            dataset=rel["dataset"],
            evaluations=_evaluations(
                rel["evaluations"], defaults=defaults, owner=rel, released=True
            ),
            model_kw=dict(rel.get("model_kw", {})),
            precision=rel.get("precision", defaults["precision"]),
        )
    return released
