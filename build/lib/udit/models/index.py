"""The registry as data: model name -> constructor, constructor -> its keyword names.

udit.experiments checks config model names and `model_kw` keys against udit/models/registry.json,
so `snakemake -n` needs no torch import. After changing the registry, rewrite the file with

    python -m udit.models.index

(tests/test_bad_inputs.py fails while the file and the registry disagree).
"""

import inspect
import json
import sys
from pathlib import Path

from udit.models import MODELS

INDEX_PATH = Path(__file__).with_name("registry.json")
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def registry_index() -> dict:
    """The index of the live registry, read from each spec's `build` signature (no model built)."""
    models, constructors = {}, {}
    for name, spec in MODELS.items():
        target = getattr(spec.build, "func", spec.build)  # functools.partial(DiT, ...) -> DiT
        constructor = target.__name__
        params = inspect.signature(spec.build).parameters.values()
        keys = [p.name for p in params if p.kind not in VARIADIC]
        if constructors.setdefault(constructor, keys) != keys:
            raise RuntimeError(f"{name}: constructor {constructor} has two signatures")
        models[name] = constructor
    return {"models": models, "constructors": constructors}


def main() -> int:
    INDEX_PATH.write_text(json.dumps(registry_index(), indent=1) + "\n")
    print(f"wrote {INDEX_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
