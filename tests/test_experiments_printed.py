"""The experiments a config resolves to, one line each, held in tests/printed/experiments/: every
default filled in, the scale applied, replicates and sampling draws expanded, milestones and the
paper rows each evaluation answers to. This is what the DAG builds its nodes from; a change in
how a config resolves shows here as a diff, experiment by experiment."""

import dataclasses
import json
from pathlib import Path

import pytest
from printed_text import check_printed

from udit import experiments as ex

ROOT = Path(__file__).resolve().parents[1]


def resolved_text(configfile: str) -> str:
    config = ex.load_config(ROOT / configfile)
    lines = []
    for kind, entries in (
        ("experiment", ex.resolve_experiments(config)),
        ("released", ex.resolve_released(config)),
    ):
        for eid, entry in entries.items():
            record = dataclasses.asdict(entry)
            if kind == "experiment":
                record["milestones"] = entry.milestones
            lines.append(f"{kind} {eid}: {json.dumps(record, sort_keys=True)}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", ["paper", "smoke"])
def test_resolved_experiments_are_the_ones_read(name):
    check_printed(resolved_text(f"config/{name}.yaml"), f"experiments/{name}.txt")
