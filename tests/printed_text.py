"""Printed text held line for line against files under tests/printed/ that a person has read.

After a deliberate change, rewrite the files and read the diff before committing:

    UDIT_REWRITE_PRINTED=1 pytest tests/test_plan_printed.py tests/test_help_printed.py
"""

import difflib
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
