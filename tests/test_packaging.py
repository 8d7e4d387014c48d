"""The cluster environment (environment.yml) and the package (pyproject.toml) list the same
requirements, and constraints.txt pins every one of them."""

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {_canonical(r.name): str(r.specifier) for r in map(Requirement, reqs)}


def _environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    reqs = [Requirement(line) for line in pip_section if not line.startswith("-")]
    assert "--editable ." in pip_section, "environment.yml must install the package itself"
    return {_canonical(r.name): str(r.specifier) for r in reqs}


def test_environment_matches_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_constraints_pin_every_requirement():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[_canonical(req.name)] = req
    for name, spec in _pyproject_requirements().items():
        assert name in pins, f"constraints.txt does not pin {name}"
        pinned = next(iter(pins[name].specifier)).version
        assert Requirement(f"{name}{spec}").specifier.contains(pinned), (
            f"{name}: pin {pinned} violates {spec}"
        )
