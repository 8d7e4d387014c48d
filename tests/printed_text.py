"""Printed text held line for line against files under tests/printed/ that a person has read.

After a deliberate change, rewrite the files and read the diff before committing:

    UDIT_REWRITE_PRINTED=1 pytest -m "not slow" -n auto && git diff tests/printed
"""

import difflib
import json
import os
from pathlib import Path

import pytest

PRINTED = Path(__file__).resolve().parent / "printed"


def check_printed(text: str, name: str) -> None:
    """Fail with a diff unless `text` is tests/printed/NAME (UDIT_REWRITE_PRINTED=1 writes it)."""
    path = PRINTED / name
    if os.environ.get("UDIT_REWRITE_PRINTED"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    expected = path.read_text()
    if text != expected:
        diff = difflib.unified_diff(
            expected.splitlines(), text.splitlines(), str(path), "printed", lineterm=""
        )
        pytest.fail(
            f"the printed text changed (UDIT_REWRITE_PRINTED=1 rewrites {path.name}):\n"
            + "\n".join(list(diff)[:60])
        )


VARIES = "<varies>"


def record_text(record: dict, *, varies: set[str]) -> str:
    """A JSON record as held text: every key kept, floats to 4 significant digits (the tests
    check values against formulas; this holds names and layout), and the value at each dotted
    path in `varies` (`a.b`, or `a.*` for all of a's values) shown as <varies>."""

    def walk(value, path: str):
        if path in varies or path.rpartition(".")[0] + ".*" in varies:
            return VARIES
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, path) for v in value]
        if isinstance(value, float):
            return float(f"{value:.4g}")
        return value

    return json.dumps(walk(record, ""), indent=1) + "\n"
