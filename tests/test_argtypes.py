"""Values in range, in one place: udit/argtypes.py's Ranges are the CLI types and the config
schema's bounds.

(a) every schema property named in CONFIG_KEYS carries exactly its Range's type and bounds;
(b) Range as an argparse type and as a checker, at and past every bound, with NaN/inf and
    non-numbers (Hypothesis);
(c) the numeric flags of `udit plan` and `udit flops` are Ranges: a bad value stops at parsing
    with the flag named.
"""

import argparse
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from udit import argtypes, flops, plan
from udit.argtypes import CONFIG_KEYS, Range

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
BOUNDS = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# every Range the module defines, by name (the CLIs import these)
RANGES = {name: value for name, value in vars(argtypes).items() if isinstance(value, Range)} | {
    f"CONFIG_KEYS[{key}]": value for key, value in CONFIG_KEYS.items()
}
FEW = settings()


# --- (a) schema == CONFIG_KEYS -------------------------------------------------------------
def resolve(schema: dict, fragment: dict) -> dict:
    """`fragment` with its $ref chain merged in (the referring keys win, as in JSON schema's
    sibling keywords)."""
    merged = dict(fragment)
    while "$ref" in merged:
        ref = merged.pop("$ref")
        assert ref.startswith("#/"), ref
        target = schema
        for part in ref[2:].split("/"):
            target = target[part]
        merged = {**target, **merged}
    return merged


def schema_properties(node, where: str = ""):
    """(path, name, fragment) of every entry of every `properties` map in the schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for name, fragment in value.items():
                    yield f"{where}/properties/{name}", name, fragment
            yield from schema_properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from schema_properties(item, f"{where}/{i}")


def bounds_of(fragment: dict) -> dict:
    return {k: fragment[k] for k in BOUNDS if k in fragment}


def ranged_properties(schema: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, name, resolve(schema, fragment))
        for path, name, fragment in schema_properties(schema)
        if name in CONFIG_KEYS
    ]


def test_schema_bounds_are_the_ranges():
    schema = yaml.safe_load(SCHEMA.read_text())
    checked = ranged_properties(schema)
    wrong = [
        f"{path}: schema {bounds_of(fragment)} != {name} Range {CONFIG_KEYS[name].schema()}"
        for path, name, fragment in checked
        if bounds_of(fragment) != CONFIG_KEYS[name].schema()
    ]
    assert not wrong, "\n".join(wrong)
    # not vacuous: the keys a config sets under defaults / experiments / evaluations / datasets
    names = {name for _, name, _ in checked}
    assert {"iterations", "global_batch", "fid_samples", "cfg", "image_size"} <= names
    assert len(checked) >= 25


def test_schema_walk_sees_a_drifted_bound():
    """The check above would catch a schema that loosened a bound (here: no cfg minimum)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    del schema["$defs"]["evaluation"]["properties"]["cfg"]["minimum"]
    drifted = [
        path
        for path, name, fragment in ranged_properties(schema)
        if bounds_of(fragment) != CONFIG_KEYS[name].schema()
    ]
    assert drifted == ["/$defs/evaluation/properties/cfg"]


# --- (b) Range as argparse type and checker ------------------------------------------------
def inside(r: Range):
    """Values strictly allowed by `r`."""
    if r.kind == "int":
        low = None if r.low is None else int(r.low) + (1 if r.low_open else 0)
        high = None if r.high is None else int(r.high) - (1 if r.high_open else 0)
        return st.integers(min_value=low, max_value=high)
    return st.floats(
        min_value=r.low,
        max_value=r.high,
        exclude_min=r.low_open and r.low is not None,
        exclude_max=r.high_open and r.high is not None,
        allow_nan=False,
        allow_infinity=False,
    )


def past(r: Range) -> list:
    """The nearest values outside each bound, and an open bound itself."""
    out = []
    step = (lambda x: x - 1) if r.kind == "int" else (lambda x: math.nextafter(x, -math.inf))
    up = (lambda x: x + 1) if r.kind == "int" else (lambda x: math.nextafter(x, math.inf))
    cast = int if r.kind == "int" else float
    if r.low is not None:
        out += [step(cast(r.low))] + ([cast(r.low)] if r.low_open else [])
    if r.high is not None:
        out += [up(cast(r.high))] + ([cast(r.high)] if r.high_open else [])
    return out


def at_closed_bounds(r: Range) -> list:
    cast = int if r.kind == "int" else float
    return [
        cast(b)
        for b, is_open in ((r.low, r.low_open), (r.high, r.high_open))
        if b is not None and not is_open
    ]


@pytest.mark.parametrize("name", sorted(RANGES))
@FEW
@given(data=st.data())
def test_values_inside_are_returned_unchanged(name, data):
    r = RANGES[name]
    value = data.draw(inside(r))
    assert r.check(value) is None
    parsed = r(repr(value) if r.kind == "float" else str(value))
    assert parsed == value and type(parsed) is (int if r.kind == "int" else float)


@pytest.mark.parametrize("name", sorted(RANGES))
def test_closed_bounds_are_allowed_and_past_them_refused(name):
    r = RANGES[name]
    for value in at_closed_bounds(r):
        assert r.check(value) is None and r(repr(value)) == value
    for value in past(r):
        why = r.check(value)
        assert why and why.startswith("must be") and r.describe() in why, (value, why)
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            r(repr(value))


@pytest.mark.parametrize("name", sorted(RANGES))
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "1e999", "-1e999"])
def test_nan_and_inf_refused(name, text):
    r = RANGES[name]
    with pytest.raises(argparse.ArgumentTypeError, match="must be"):
        r(text)
    if r.kind == "float":
        assert "finite" in r.check(float(text))


@pytest.mark.parametrize("name", sorted(RANGES))
@FEW
@given(text=st.text().filter(lambda t: not _parses(t)))
def test_non_numbers_refused(name, text):
    with pytest.raises(argparse.ArgumentTypeError, match="must be"):
        RANGES[name](text)


@pytest.mark.parametrize("name", sorted(RANGES))
@pytest.mark.parametrize("value", [None, "1", [1], {"a": 1}, True, False, 1j])
def test_check_refuses_what_is_not_a_number(name, value):
    assert RANGES[name].check(value).startswith("must be")


def test_check_of_an_int_past_float_range():
    """A JSON integer past float range (10**400) must be refused, not raise OverflowError."""
    big = 10**400
    assert argtypes.FINITE.check(big)  # a message, no exception
    assert argtypes.PROBABILITY.check(big)


def _parses(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        try:
            int(text)
            return True
        except ValueError:
            return False


def test_schema_fragment_states_the_bounds():
    assert argtypes.DECAY.schema() == {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
    assert argtypes.STEPS.schema() == {"type": "integer", "minimum": 1, "maximum": 100_000_000}


# --- (c) the CLIs of plan and flops parse with Ranges --------------------------------------
@pytest.mark.parametrize(
    "main,argv,flag",
    [
        (plan.main, ["--configfile", "config/smoke.yaml", "--gpu-macs-per-s", "nan"], "--gpu-macs"),
        (plan.main, ["--configfile", "config/smoke.yaml", "--gpu-macs-per-s", "0"], "--gpu-macs"),
        (plan.main, ["--configfile", "config/smoke.yaml", "--gpu-macs-per-s=-inf"], "--gpu"),
        (flops.main, ["--threads", "0"], "--threads"),
        (flops.main, ["--jobs", "1e3"], "--jobs"),
        (flops.main, ["--jobs", "257"], "--jobs"),
        (flops.main, ["--input-size", "0"], "--input-size"),
        (flops.main, ["--input-size", "4097"], "--input-size"),
    ],
)
def test_cli_numeric_flags_stop_at_parsing(main, argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "must be" in err and "Traceback" not in err
