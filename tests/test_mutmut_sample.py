"""scripts/mutmut_sample.py: a seeded sample of the mutants not yet run, and the score it
estimates, on a mutmut results tree written here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutmut_sample.py"
KILLED, SURVIVED, NO_TESTS = 1, 0, 33  # mutmut's exit codes


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def results(tmp_path: Path, codes: dict) -> Path:
    meta = tmp_path / "mutants" / "pkg" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path


def test_pick_is_seeded_and_takes_only_mutants_not_run(tmp_path):
    codes = {f"pkg.mod.x_f__mutmut_{i}": None for i in range(20)} | {"pkg.mod.x_g__mutmut_1": 1}
    root = results(tmp_path, codes)
    first = run(root, "pick", "5", "--seed", "3").stdout.split()
    assert first == run(root, "pick", "5", "--seed", "3").stdout.split() and len(set(first)) == 5
    assert first != run(root, "pick", "5", "--seed", "4").stdout.split()
    assert "pkg.mod.x_g__mutmut_1" not in run(root, "pick", "20").stdout.split()
    refused = run(root, "pick", "21")
    assert refused.returncode == 2 and "21 asked, 20 mutants not yet run" in refused.stderr


def test_score_is_the_exact_part_plus_the_sample_rate_times_the_rest(tmp_path):
    """4 killed and 1 survivor run in full, 2 never run; a sample of 4 with 3 killed (and one
    "no tests") stands for the 6 not run in full: (4 + 0.75 x 6) / 11."""
    codes = {f"pkg.mod.x_f__mutmut_{i}": KILLED for i in range(4)}
    codes |= {"pkg.mod.x_f__mutmut_4": SURVIVED, "pkg.mod.x_f__mutmut_5": None}
    codes |= {"pkg.mod.x_f__mutmut_6": None}
    sample = {f"pkg.mod.x_s__mutmut_{i}": KILLED for i in range(3)}
    codes |= sample | {"pkg.mod.x_s__mutmut_3": NO_TESTS}
    root = results(tmp_path, codes)
    (root / "sample.txt").write_text("\n".join([*sample, "pkg.mod.x_s__mutmut_3"]))
    out = run(root, "score", "sample.txt")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "run in full: 4 of 5 killed (80.0%)"
    assert lines[1].startswith("sample: 3 of 4 killed (75.0%, 95% interval 30.1% to 95.4%)")
    assert lines[2].startswith(f"estimated score of all 11: {(4 + 0.75 * 6) / 11:.1%} (")


def test_wilson_interval_is_the_textbook_one(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import mutmut_sample

    assert mutmut_sample.wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_a_sample_not_fully_run_is_refused(tmp_path):
    root = results(tmp_path, {"pkg.mod.x_f__mutmut_1": KILLED, "pkg.mod.x_f__mutmut_2": None})
    (root / "s.txt").write_text("pkg.mod.x_f__mutmut_1\npkg.mod.x_f__mutmut_2\n")
    out = run(root, "score", "s.txt")
    assert out.returncode == 2 and "1 of the sample not run yet" in out.stderr
    (root / "s.txt").write_text("pkg.mod.x_other__mutmut_1\n")
    out = run(root, "score", "s.txt")
    assert out.returncode == 2 and "not mutants of this run: pkg.mod.x_other" in out.stderr


def test_batches_drawn_one_after_another_score_as_one_sample(tmp_path):
    """A first batch run whole, a second picked from what is still not run (never a member of
    the first): `score a b` is the rate of the two together, standing for every mutant."""
    codes = {f"pkg.mod.x_f__mutmut_{i}": None for i in range(10)}
    root = results(tmp_path, codes)
    first = run(root, "pick", "3", "--seed", "1").stdout.split()
    meta = root / "mutants" / "pkg" / "mod.py.meta"
    meta.write_text(json.dumps({"exit_code_by_key": codes | dict.fromkeys(first, KILLED)}))
    second = run(root, "pick", "4", "--seed", "1").stdout.split()
    assert not set(first) & set(second)
    done = dict.fromkeys(first, KILLED) | dict.fromkeys(second[:3], KILLED)
    meta.write_text(json.dumps({"exit_code_by_key": codes | done | {second[3]: SURVIVED}}))
    (root / "a.txt").write_text("\n".join(first))
    (root / "b.txt").write_text("\n".join(second))
    out = run(root, "score", "a.txt", "b.txt")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].startswith("sample: 6 of 7 killed (85.7%, 95% interval ")
    assert lines[2].startswith("estimated score of all 10: 85.7% (")
    empty = root / "empty.txt"
    empty.write_text("")
    out = run(root, "score", "a.txt", "empty.txt")
    assert out.returncode == 2 and "empty.txt names no mutants" in out.stderr
