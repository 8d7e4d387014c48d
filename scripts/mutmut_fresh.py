"""Re-run mutmut's survivors, each in a fresh Python process.

`mutmut run` (pyproject.toml: process_isolation = "forkserver") forks every mutant from a server
that has already imported udit and its tests. A mutant in code that runs at import time (the
model registry, a constant built by a function) therefore never takes effect there and is
reported as surviving. Here each one runs in a new interpreter, where the import itself sees the
mutant, against the test files mutmut mapped to its function plus any `--tests` given.

    python scripts/mutmut_fresh.py                          # every survivor of the last run
    python scripts/mutmut_fresh.py 'udit.models.unet.*' --tests tests/test_golden.py --record

Run from the project root after `mutmut run`. Prints one "name killed|survived|timeout" line
per mutant and a count; --record writes the verdicts into mutmut's results (`mutmut results`).
"""

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MUTANTS = Path("mutants")
KILLED, SURVIVED = 1, 0  # mutmut's exit codes for the two verdicts


def meta_files() -> list[Path]:
    return sorted(MUTANTS.rglob("*.py.meta"))


def survivors(patterns: list[str]) -> list[str]:
    names = []
    for meta in meta_files():
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        names += [name for name, code in codes.items() if code == SURVIVED]
    return [n for n in names if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]


def mapped_tests(name: str, stats: dict) -> list[str]:
    """Test files mutmut saw reach the mutated function."""
    function = name.rsplit("__mutmut_", 1)[0]
    tests = stats["tests_by_mangled_function_name"].get(function, [])
    return sorted({test.split("::")[0] for test in tests})


def verdict(name: str, tests: list[str], timeout: float) -> str:
    env = {**os.environ, "MUTANT_UNDER_TEST": name, "OMP_NUM_THREADS": "1"}
    env["MKL_CBWR"] = "COMPATIBLE"  # the golden checks then run in-process (tests/test_golden.py)
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    argv += ["-m", "not slow", "-k", "not snakemake", *tests]
    try:
        done = subprocess.run(
            argv, check=False, cwd=MUTANTS, env=env, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if done.returncode == 0 else "killed"


def record(verdicts: dict[str, str]) -> None:
    for meta in meta_files():
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        hit = {n: v for n, v in verdicts.items() if n in codes and v != "timeout"}
        if hit:
            codes.update({n: KILLED if v == "killed" else SURVIVED for n, v in hit.items()})
            tmp = meta.with_suffix(".meta.tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(meta)


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*", help="mutant names or fnmatch patterns")
    parser.add_argument("--tests", nargs="*", default=[], help="test files run for every mutant")
    parser.add_argument("--jobs", type=positive(int), default=1, help="mutants run at once")
    parser.add_argument("--timeout", type=positive(float), default=600.0, help="seconds per mutant")
    parser.add_argument("--record", action="store_true", help="write verdicts into mutmut's")
    args = parser.parse_args(argv)
    if not (MUTANTS / "mutmut-stats.json").is_file():
        parser.error("no mutants/mutmut-stats.json here: run `mutmut run` in this folder first")
    stats = json.loads((MUTANTS / "mutmut-stats.json").read_text())
    names = survivors(args.patterns)

    def one(name: str) -> tuple[str, str]:
        tests = sorted({*mapped_tests(name, stats), *args.tests})
        result = verdict(name, tests, args.timeout) if tests else "survived"
        print(name, result, flush=True)
        return name, result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        verdicts = dict(pool.map(one, names))
    counts = {v: list(verdicts.values()).count(v) for v in ("killed", "survived", "timeout")}
    print(f"{len(names)} survivors re-run in fresh processes: {counts}")
    if args.record:
        record(verdicts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
