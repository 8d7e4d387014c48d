"""The cluster environment (environment.yml) and the package (pyproject.toml) list the same
requirements, and constraints.txt pins every one of them."""

import re
from pathlib import Path

import pytest
import yaml

try:
    import tomllib  # novermin (3.11+; the except takes over on 3.10)
except ModuleNotFoundError:  # Python 3.10: the dev extras install tomli there
    import tomli as tomllib
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


@pytest.mark.slow
def test_a_non_editable_install_plans_the_paper_config(tmp_path):
    """`pip install .` (not -e) ships what `udit plan` reads (schema, paper numbers, registry):
    a fresh venv that sees this environment's dependencies, the project built and installed
    into it, run from a copy of the configs only, where no udit source tree exists."""
    import shutil
    import site
    import subprocess
    import sys
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies (torch is never downloaded): this environment's site-packages, after
    # the venv's own, so the installed udit (not the editable one) comes first
    deps = [p for p in (*site.getsitepackages(), sysconfig.get_paths()["purelib"]) if p]
    (Path(purelib) / "zz_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    # built from a copy of the tracked files: setuptools writes build/ and *.egg-info beside
    # the sources, which must not land in the checkout
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    wheel_dir = tmp_path / "wheel"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(wheel_dir), str(source)], check=True, timeout=600)
    (wheel,) = wheel_dir.glob("udit_repro-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", purelib]
    subprocess.run([*install, str(wheel)], check=True, timeout=600)
    work = tmp_path / "work"
    shutil.copytree(ROOT / "config", work / "config")
    script = (
        "import sys, udit; from udit.plan import main; print(udit.__file__); "
        "sys.exit(main(['--configfile', 'config/paper.yaml']))"
    )
    ran = subprocess.run(
        [python, "-c", script], cwd=work, capture_output=True, text=True, timeout=600, check=False
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.splitlines()[0].startswith(purelib)  # the installed copy ran
    assert "training: 80 nodes" in ran.stdout and "total: " in ran.stdout, ran.stdout[-2000:]


def test_the_sources_run_on_the_oldest_python_pyproject_allows():
    """`requires-python` is a promise: vermin reads every module's syntax and standard-library
    use (typing.Self, tomllib and hashlib.file_digest are 3.11) and names what needs more."""
    import subprocess
    import sys

    oldest = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    version = re.fullmatch(r">=\s*(3\.\d+)", oldest).group(1)
    ran = subprocess.run(
        [Path(sys.executable).parent / "vermin", f"-t={version}-", "--no-tips", "--violations",
         "--eval-annotations", "--backport", "typing",
         "udit", "benchmarks", "tests", "scripts"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-1000:]
