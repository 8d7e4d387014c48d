"""Configs are read bounded: the one YAML reader (udit.experiments.load_yaml) refuses a file over
MAX_CONFIG_BYTES before reading it, a document whose aliases expand past MAX_YAML_NODES (a
"billion laughs"), a recursive alias and a nesting too deep, each naming the file; the schema
check refuses NaN/inf and prints at most a screen; `snakemake -n` stops on all of these (and on
a max_job_hours that would create unbounded chunk nodes) within seconds, with a short message.
Cases G2, G3, G10 of the hostile-inputs note, and their kinds.
"""

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from udit import experiments as ex
from udit import plan

ROOT = Path(__file__).resolve().parents[1]
PAPER = (ROOT / "config" / "paper.yaml").read_text()
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
QUICK_S = 5.0  # a refusal is immediate; generous for a shared 2-core machine
SCREEN = 2500  # characters of output a refused config may print (errors.MAX_MESSAGE_CHARS + frame)


def bomb(levels: int, width: int) -> str:
    """`x-bomb:` with `levels` anchors, each a list of `width` aliases of the one before."""
    lines = ["x-bomb:", f"  l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def bomb_size(levels: int, width: int) -> int:
    """YAML nodes of bomb() with every alias expanded: root map, its key, the inner map, and per
    level a key plus a list of `width` copies of the level below."""
    sizes = [1 + width]
    for _ in range(1, levels):
        sizes.append(1 + width * sizes[-1])
    return 3 + sum(1 + s for s in sizes)


def expanded_count(obj) -> int:
    """Nodes of a loaded document, every shared object counted again (as the expansion is)."""
    if isinstance(obj, dict):
        return 1 + sum(expanded_count(k) + expanded_count(v) for k, v in obj.items())
    if isinstance(obj, list):
        return 1 + sum(expanded_count(v) for v in obj)
    return 1


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- load_yaml: aliases, recursion, nesting, size, file kind -------------------------------
@settings()
@given(levels=st.integers(1, 40), width=st.integers(2, 12))
def test_alias_bombs_refused_past_the_cap_at_once(tmp_path_factory, levels, width):
    path = write(tmp_path_factory.mktemp("bomb") / "bomb.yaml", bomb(levels, width))
    size = bomb_size(levels, width)
    start = time.perf_counter()
    if size > ex.MAX_YAML_NODES:
        with pytest.raises(ex.ConfigError, match=rf"{path}:\d+: .*more than {ex.MAX_YAML_NODES}"):
            ex.load_yaml(path)
    else:
        assert expanded_count(ex.load_yaml(path)) == size  # the count is the real expansion
    assert time.perf_counter() - start < QUICK_S  # linear: 40 levels of 12 is 12**40 nodes


@settings()
@given(levels=st.integers(1, 5), width=st.integers(2, 6))
def test_the_cap_is_exact(tmp_path_factory, levels, width):
    path = write(tmp_path_factory.mktemp("edge") / "b.yaml", bomb(levels, width))
    size = bomb_size(levels, width)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "MAX_YAML_NODES", size)
        assert expanded_count(ex.load_yaml(path)) == size
        mp.setattr(ex, "MAX_YAML_NODES", size - 1)
        with pytest.raises(ex.ConfigError, match="expand to more than"):
            ex.load_yaml(path)


def test_merge_keys_and_plain_aliases_still_load(tmp_path):
    text = "base: &b {lr: 1, seed: 2}\nrun:\n  <<: *b\n  seed: 3\nlist: [*b, *b]\n"
    data = ex.load_yaml(write(tmp_path / "m.yaml", text))
    assert data["run"] == {"lr": 1, "seed": 3} and data["list"] == [data["base"]] * 2


@pytest.mark.parametrize(
    "text,named",
    [
        ("a: &a [1, *a]\n", "c.yaml:1: an alias refers to the node that holds it"),
        ("x: 1\na: &a {b: *a}\n", "c.yaml:2: an alias refers to the node that holds it"),
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("a: *nope\n", "undefined alias"),
        ("a: 1\n---\nb: 2\n", "single document"),
    ],
)
def test_hostile_yaml_refused_naming_the_file(tmp_path, text, named):
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ex.ConfigError, match=named) as err:
        ex.load_yaml(path)
    assert str(path) in str(err.value)


def test_oversized_config_refused_before_reading(tmp_path, monkeypatch):
    """G3: a 50 MB config once took 528 s to parse. Refused by its size, before any read."""
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.truncate(ex.MAX_CONFIG_BYTES + 1)  # sparse: the size is all that is looked at
    opened = []
    monkeypatch.setattr(ex, "open", lambda *a, **k: opened.append(a) or 1 / 0, raising=False)
    start = time.perf_counter()
    with pytest.raises(ex.ConfigError, match=rf"{path} is over 5,000,000 bytes"):
        ex.load_yaml(path)
    assert time.perf_counter() - start < QUICK_S and opened == []


def test_file_growing_past_the_cap_is_cut_at_the_read(tmp_path, monkeypatch):
    path = write(tmp_path / "c.yaml", "a: " + "x" * 100 + "\n")
    monkeypatch.setattr(ex, "MAX_CONFIG_BYTES", 50)
    with pytest.raises(ex.ConfigError, match="is over 50 bytes"):
        ex.load_yaml(path)
    says_10_bytes = os.stat_result((0o100644, 0, 0, 1, 0, 0, 10, 0, 0, 0))
    monkeypatch.setattr(ex, "os", SimpleNamespace(stat=lambda p: says_10_bytes))
    with pytest.raises(ex.ConfigError, match="is over 50 bytes"):  # grew after the stat
        ex.load_yaml(path)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_not_a_regular_file_refused_without_blocking(tmp_path, kind):
    path = tmp_path / "c.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # opening it would block until a writer comes: never
    else:
        path.mkdir()
    with pytest.raises(ex.ConfigError, match="is not a regular file"):
        ex.load_yaml(path)


# --- the schema check: finite numbers, one screen ------------------------------------------
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize(
    "before,key",
    [
        ("max_job_hours: 24", "partitions/gpu/max_job_hours"),
        ("cfg: 1.5", "cfg"),
    ],
)
def test_nan_and_inf_config_numbers_refused(tmp_path, value, before, key):
    if before not in PAPER:
        pytest.skip(f"config/paper.yaml has no {before!r}")
    path = write(tmp_path / "c.yaml", PAPER.replace(before, f"{before.split(':')[0]}: {value}", 1))
    with pytest.raises(ex.ConfigError, match=rf"{key}: -?(nan|inf) is not a finite number"):
        ex.load_config(path)


def test_schema_errors_fit_on_a_screen(tmp_path):
    """A huge value of the wrong type, and many errors at once: the message stays short."""
    config = yaml.safe_load(PAPER)
    config["description"] = ["x" * 100] * 1000  # jsonschema quotes all 100 KB of it
    for eid in list(config["experiments"])[:30]:
        config["experiments"][eid]["iterations"] = -1
    path = write(tmp_path / "c.yaml", yaml.safe_dump(config))
    with pytest.raises(ex.ConfigError) as err:
        ex.load_config(path)
    text = str(err.value)
    assert len(text) < SCREEN and text.count("\n") <= ex.MAX_SCHEMA_ERRORS + 2
    assert "at description:" in text and "more]" in text and "... and" in text
    line = next(x for x in text.splitlines() if "at description:" in x)
    message = line.split("at description: ", 1)[1]
    shown, more = re.fullmatch(r"(.*)\.\.\. \[(\d+) more\]", message).groups()
    full = jsonschema.Draft202012Validator({"type": "string"}).iter_errors(config["description"])
    whole = next(full).message  # the message before it was cut
    assert len(shown) == ex.MAX_SCHEMA_LINE and whole.startswith(shown)
    assert int(more) == len(whole) - ex.MAX_SCHEMA_LINE


@pytest.mark.parametrize("length", [ex.MAX_SCHEMA_LINE - 1, ex.MAX_SCHEMA_LINE])
def test_a_schema_message_up_to_the_limit_is_shown_whole(tmp_path, length):
    config = yaml.safe_load(PAPER)
    quoted = "'" + "x" * (length - 25) + "'"  # "'xx..x' is not of type 'array'": `length` long
    config["experiments"]["u-dit-s"]["evaluations"] = quoted[1:-1]
    path = write(tmp_path / "c.yaml", yaml.safe_dump(config))
    with pytest.raises(ex.ConfigError) as err:
        ex.load_config(path)
    assert f"{quoted} is not of type 'array'" in str(err.value) and "more]" not in str(err.value)


# --- snakemake -n stops within seconds, with a short message -------------------------------
def paper_plus(tmp_path: Path, name: str, extra: str = "", **replace) -> Path:
    text = PAPER
    for old, new in replace.values():
        assert old in text
        text = text.replace(old, new, 1)
    return write(tmp_path / name, text + extra)


@pytest.mark.parametrize(
    "case,named",
    [
        # the 9-level bomb (G2, hung past 180 s) runs in tests/test_hostile_cases.py
        ("bomb4", ["x-bomb", "was unexpected"]),  # printed 322 KB of expansion
        ("mjh001", ["partitions/gpu/max_job_hours 0.001", "chained training chunks", "cap of"]),
        ("mjhnan", ["max_job_hours: nan is not a finite number"]),
    ],
)
def test_snakemake_dry_run_stops_at_once_with_a_short_message(tmp_path, case, named):
    config = {
        "bomb4": lambda: paper_plus(tmp_path, "bomb4.yaml", "\n" + bomb(4, 9)),
        "mjh001": lambda: paper_plus(
            tmp_path, "mjh.yaml", r=("max_job_hours: 24", "max_job_hours: 0.001")
        ),
        "mjhnan": lambda: paper_plus(
            tmp_path, "nan.yaml", r=("max_job_hours: 24", "max_job_hours: .nan")
        ),
    }[case]()
    start = time.perf_counter()
    run = subprocess.run(
        [*SNAKEMAKE, "-n", "--cores", "1", "--configfile", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - start
    out = run.stdout + run.stderr
    assert run.returncode != 0 and elapsed < 60, (run.returncode, elapsed)
    assert len(out) < SCREEN, out[:3000]
    assert str(config) in out and all(n in out for n in named), out
    assert "Traceback" not in out


def test_bomb_sizes_are_what_the_note_measured():
    """The note's 4-level bomb expanded to 7,380 'lol's: 9**4 = 6561 in the deepest level plus
    the shallower ones; our 9-level bomb is far past the cap, the 4-level one under it."""
    assert sum(9**k for k in range(1, 5)) == 7380
    assert bomb_size(4, 9) < ex.MAX_YAML_NODES < bomb_size(9, 9)
    assert math.log10(bomb_size(40, 12)) > 40
    assert plan.MAX_CHUNKS_PER_EXPERIMENT < plan.MAX_TRAIN_NODES


def test_a_loop_of_base_configs_is_refused(tmp_path):
    """`base` naming the config itself, or a config that names it back, once recursed until
    PyYAML's RecursionError (a message about nesting, not about the loop)."""
    smoke = (ROOT / "config" / "smoke.yaml").read_text()
    assert "base: config/paper.yaml" in smoke
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, smoke.replace("base: config/paper.yaml", f"base: {a}"))
    with pytest.raises(ex.ConfigError, match=rf"base {a} leads back .*: {a} -> {a}"):
        ex.load_config(a)
    write(a, smoke.replace("base: config/paper.yaml", f"base: {b}"))
    write(b, smoke.replace("base: config/paper.yaml", f"base: {a}"))
    with pytest.raises(ex.ConfigError, match=rf"{a} -> {b} -> {a}"):
        ex.load_config(a)


@pytest.mark.parametrize(
    "size,named",
    [
        (4, "datasets/imagenet256: image_size 4 is below 8"),  # in IMAGE_SIZE, no latent pixel
        (4097, "at datasets/imagenet256/image_size: 4097 is greater than the maximum of 4096"),
    ],
)
def test_dataset_image_size_bounds(tmp_path, size, named):
    path = write(tmp_path / "c.yaml", PAPER.replace("image_size: 256", f"image_size: {size}", 1))
    with pytest.raises(ex.ConfigError, match=named):
        ex.resolve_experiments(ex.load_config(path))


# ------------------------------------------------------------- job options reach a job whole
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
# A value of each TrainOptions field type, as a config would write it
TRAIN_FIELD_VALUES = {
    "model": st.text(min_size=1, max_size=12),
    "seed": st.integers(0, 2**63 - 1),
    "lr": st.floats(1e-12, 1.0) | st.integers(1, 1),  # an int where a float is expected widens
    "checkpoint_minutes": st.floats(0, 1e6) | st.integers(0, 10**6),
    "pixel": st.booleans(),
    "stop_at": st.none() | st.integers(1, 10**8),
    "latents": st.none() | st.text(max_size=12),
    "milestones": st.lists(st.integers(1, 10**8), max_size=4),
    "model_kw": st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), JSON_VALUES
    ),
}


def _train_parser():
    from udit.training.loop import TrainOptions, build_parser

    return build_parser(), TrainOptions


@settings(deadline=None)
@given(st.fixed_dictionaries({}, optional=TRAIN_FIELD_VALUES))
def test_train_options_survive_json_whole(values):
    """What a config writes (1e-06, None, True, lists, nested objects, strings that look like
    numbers) is what `udit train --options` parses, each as its field's type: JSON -> argv ->
    parse is the identity (lists become tuple fields, ints become float fields)."""
    import json

    from udit.cli import parse_args

    parser, options = _train_parser()
    argv = ["--options", json.dumps(values), "--run-dir", "r", "--total-steps", "1", "--model", "m"]
    argv += ["--images", "i"] if values.get("latents") is None else []
    args = vars(parse_args(parser, argv, options))
    for key, value in values.items():
        got = args[key]
        if key == "model":
            assert got == "m"  # a flag given as well wins
        elif key == "milestones":
            assert got == tuple(value)
        elif key in ("lr", "checkpoint_minutes"):
            assert type(got) is float and got == value
        else:
            assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "values, named",
    [
        ({"seed": "7"}, "seed must be int"),
        ({"seed": 7.0}, "seed must be int"),
        ({"seed": True}, "seed must be int"),
        ({"pixel": "yes"}, "pixel must be bool"),
        ({"milestones": [1, "2"]}, "milestones must be"),
        ({"lr": None}, "lr must be float"),
        ({"modle": "x"}, "unknown option 'modle'"),
        ({"dry_run": True}, "unknown option 'dry_run'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_train_options_of_the_wrong_type_are_refused(values, named):
    import json

    from udit.cli import parse_args
    from udit.errors import BadValueError

    parser, options = _train_parser()
    with pytest.raises(BadValueError, match=named):
        parse_args(parser, ["--options", json.dumps(values)], options)


def _dry_run_jobs(tmp_path, raw: dict) -> list[list[str]]:
    """The argv of every train/sample job a `snakemake -n -p` of config `raw` prints."""
    import shlex

    config = write(tmp_path / "kw.yaml", yaml.safe_dump(raw))
    ran = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--configfile", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [line for line in ran.stdout.splitlines() if " --options " in line]
    return [shlex.split(line.split(">")[0]) for line in lines]


def test_the_dag_passes_job_options_as_the_config_wrote_them(tmp_path):
    """The real DAG and the real command: a float written 1.0e-06, a list and a guidance scale
    reach `udit train` / `udit sample` with their types (a flag list turned 1e-06 into '1e-06'
    once), checked by each command's own --dry-run on the argv the DAG prints."""
    import json

    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["base"] = str(ROOT / "config" / "paper.yaml")
    raw["results"] = str(tmp_path / "results")
    raw["scale"]["only"] = ["u-dit-b"]
    want = {
        "hidden_size": 16,
        "num_heads": 2,
        "class_dropout_prob": 1.0e-06,
        "depths": [1, 1, 1, 1, 1],
    }
    raw["scale"]["model_kw"]["U-DiT-B"] = want
    jobs = _dry_run_jobs(tmp_path, raw)
    train = next(words for words in jobs if "train" in words)
    argv = train[train.index("train") + 1 :]
    latents = Path(json.loads(argv[argv.index("--options") + 1])["latents"])
    latents.mkdir(parents=True)
    (latents / "manifest.json").write_text("{}")  # --dry-run checks that the cache is there
    ran = subprocess.run(
        [sys.executable, "-m", "udit.cli", "train", *argv, "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout)
    assert got["model_kw"] == want and isinstance(got["model_kw"]["class_dropout_prob"], float)
    assert got["model"] == "U-DiT-B" and got["stop_at"] in got["milestones"]
    samples = [json.loads(w[w.index("--options") + 1]) for w in jobs if "sample" in w]
    guided = [options for options in samples if options["cfg_scale"] == 1.5]
    assert guided, "the smoke config samples U-DiT-B with guidance 1.5"
    assert all("model" not in options for options in samples)  # the checkpoint carries it


def test_the_paper_config_takes_its_recipe_from_paper_numbers(monkeypatch):
    """Defaults once: config/paper.yaml restates no recipe value, so editing paper_numbers.yaml
    (here: a global batch of 512) changes the paper run."""
    import dataclasses

    import udit.paper

    config = ex.load_config(ROOT / "config" / "paper.yaml")
    restated = set(config.get("defaults", {})) & set(ex.DEFAULTS)
    assert not restated, f"config/paper.yaml restates recipe values: {sorted(restated)}"
    edited = dataclasses.replace(udit.paper.recipe(), global_batch=512)
    monkeypatch.setattr(ex, "DEFAULTS", {**ex.DEFAULTS, "global_batch": edited.global_batch})
    assert ex.resolve_experiments(config)["u-dit-b"].global_batch == 512


@pytest.mark.parametrize(
    "text, where, what",
    [
        # a problem inside a construct: where it broke, and the line the construct began on
        ("experiments:\n  a: {b: 1\n  c: 2\n", ":3:4: ",
         "expected ',' or '}', but got ':' (while parsing a flow mapping from line 2)"),
        ("a: 1\n\tb: 2\n", ":2:1: ", "found character '\\t' that cannot start any token"),
        ("a: [1, 2\n", ":2:1: ",
         "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence from line 1)"),
    ],
)  # fmt: skip
def test_broken_yaml_is_named_by_file_line_and_column(tmp_path, text, where, what):
    """A config YAML cannot parse: one line naming the file, the line and column of the
    problem, and the line where the broken construct began (1-based, as editors count)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    with pytest.raises(ex.ConfigError) as err:
        ex.load_config(cfg)
    assert str(err.value) == f"{cfg}{where}{what}"


def test_yaml_error_without_a_position_names_the_file():
    err = yaml.MarkedYAMLError(problem="not a YAML stream")
    assert ex._yaml_error_text(err, Path("cfg.yaml")) == "cfg.yaml: not a YAML stream"


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (
            None,
            "no dataset: set its `dataset` or `defaults: {dataset: NAME}` to one of imagenet256",
        ),
        ("imagenet64", "dataset 'imagenet64' is not declared under datasets (imagenet256"),
    ],
)
def test_an_experiment_without_a_known_dataset_names_the_fix(dataset, message):
    """An experiment with no dataset (none of its own, no defaults.dataset) or an undeclared one
    is refused naming the experiment and the datasets it may use."""
    config = yaml.safe_load(PAPER)
    del config["defaults"]["dataset"]
    for exp in config["experiments"].values():
        exp["dataset"] = "imagenet256"
    config["experiments"]["u-dit-s"].pop("dataset")
    if dataset is not None:
        config["experiments"]["u-dit-s"]["dataset"] = dataset
    with pytest.raises(ex.ConfigError) as err:
        ex.resolve_experiments(config)
    assert str(err.value).startswith(f"experiments/u-dit-s: {message}")
