"""The model registry as data, held entry by entry (tests/printed/records/registry.json): each
name's class, constructor arguments, the paper's GFLOPs and where they come from, its notes.

Widths, depths and switches are checked from outside elsewhere (fvcore counts against the paper's
GFLOPs, golden outputs of the official code); this holds the rest a report or a reader uses: the
table and row a Table 3 model answers to, the source of each GFLOPs, the reconstruction notes.
"""

import functools

from printed_text import check_printed, record_text

from udit.models import MODELS


def entry(spec) -> dict:
    build = spec.build
    assert isinstance(build, functools.partial), f"{spec.name}: build is not a partial"
    return {
        "class": f"{build.func.__module__}.{build.func.__qualname__}",
        "kwargs": build.keywords,
        "slug": spec.slug,
        "paper_gflops": spec.paper_gflops,
        "source": spec.source,
        "note": spec.note,
        "extra": spec.extra,
    }


def test_registry_is_the_one_read():
    record = {name: entry(spec) for name, spec in MODELS.items()}
    check_printed(record_text(record, varies=set()), "records/registry.json")
