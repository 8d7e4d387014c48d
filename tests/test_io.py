"""udit.io: atomic writes leave old-or-new, never half, with shared permissions; hashes match
hashlib."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from udit import io


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(io.HASH_CHUNK + 12345)  # more than one chunk, not a multiple of it
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert io.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert io.sha256_file(str(path)) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert io.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_exception_in_block_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), io.atomic_open(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_failed_check_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    seen = []

    def reject(tmp):
        seen.append(tmp.read_bytes())  # the check sees the complete new bytes, closed and flushed
        raise ValueError("rejected")

    with pytest.raises(ValueError, match="rejected"), io.atomic_open(path, check=reject) as f:
        f.write(b"new")
    assert seen == [b"new"]
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_success_replaces_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    with io.atomic_open(path, "w") as f:
        f.write("hello\n")
    assert path.read_text() == "hello\n"
    io.atomic_write_bytes(path, b"again")
    assert path.read_bytes() == b"again"
    assert _leftovers(path.parent) == []


def test_modes(tmp_path):
    io.atomic_write_text(tmp_path / "default.txt", "x")
    umask_mode = 0o666 & ~io._umask()
    assert io.FILE_MODE == umask_mode
    assert (tmp_path / "default.txt").stat().st_mode & 0o777 == umask_mode  # not mkstemp's 0600
    io.atomic_write_bytes(tmp_path / "fixed.bin", b"x", file_mode=0o640)
    assert (tmp_path / "fixed.bin").stat().st_mode & 0o777 == 0o640


def test_bad_mode_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode"), io.atomic_open(tmp_path / "x", "a"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_json_round_trip_and_format(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"nested": "ü"}}
    path = tmp_path / "out.json"
    io.atomic_write_json(path, obj)
    text = path.read_text()
    assert json.loads(text) == obj
    assert text == json.dumps(obj, indent=2) + "\n"  # key order kept, final newline
    io.atomic_write_json(path, obj, sort_keys=True)
    assert path.read_text() == json.dumps(obj, indent=2, sort_keys=True) + "\n"


def test_torch_save_returns_sha_of_file_and_runs_check(tmp_path):
    path = tmp_path / "state.pt"
    checked = []
    digest = io.atomic_torch_save({"w": torch.arange(5.0)}, path, check=checked.append)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert checked and not checked[0].exists()  # ran on the temp file, which then became `path`
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5.0))


def test_savez_round_trip(tmp_path):
    path = tmp_path / "arrays.npz"
    io.atomic_savez(path, arr_0=np.arange(6, dtype=np.uint8).reshape(2, 3), y=np.ones(2))
    with np.load(path) as data:
        assert data["arr_0"].tolist() == [[0, 1, 2], [3, 4, 5]] and data["y"].tolist() == [1.0, 1.0]
    assert path.stat().st_mode & 0o777 == io.FILE_MODE


def test_git_commit_is_hex_or_none():
    commit = io.git_commit()
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)


class Payload:  # a class torch.load(weights_only=True) refuses to build
    pass


def _load_error(path):
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the error under test
        return err
    raise AssertionError(f"{path} loaded")


def test_load_failure_says_why_in_a_few_words(tmp_path):
    """What the three loaders (checkpoints, their sidecar-less check, Inception weights) say
    when torch.load refuses a file: the global it would run, unreadable pickle data, or the
    error's type and first sentence, never torch's paragraphs."""
    from udit.errors import MAX_CAUSE_CHARS, load_failure

    torch.save({"x": Payload()}, tmp_path / "payload.pt")
    assert load_failure(_load_error(tmp_path / "payload.pt")) == (f"it pickles {__name__}.Payload")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02not a pickle at all" * 4)
    assert load_failure(_load_error(tmp_path / "garbage.pt")) == "its pickle data is unreadable"
    torch.save({"x": torch.zeros(1000)}, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    err = _load_error(tmp_path / "cut.pt")
    why = load_failure(err)
    first = str(err).strip().splitlines()[0].split(". ")[0]
    assert why == f"{type(err).__name__}: {first[:MAX_CAUSE_CHARS]}"
    assert why.startswith("RuntimeError: PytorchStreamReader failed") and ". " not in why
    long = RuntimeError("x" * 500 + ". Second sentence.\nA paragraph more.")
    assert load_failure(long) == "RuntimeError: " + "x" * MAX_CAUSE_CHARS
    assert load_failure(ValueError("one line. two")) == "ValueError: one line"
    assert load_failure(ValueError("\n  first line\nsecond line")) == "ValueError: first line"
