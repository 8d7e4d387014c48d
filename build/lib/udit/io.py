"""Shared file helpers: SHA-256 of a file, atomic writes, the git commit of this checkout.

Every output a job writes goes through `atomic_open`: the bytes go to a temporary file in the
same directory (so os.replace is a rename on one filesystem), are flushed and fsync'ed, get
the usual permissions, may be checked, and only then replace the target. A job killed at
any point leaves either the old file or the new one under the final name, never half a file.
"""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from udit.errors import BadValueError, OSFaultError

HASH_CHUNK = 1 << 20  # bytes read at a time while hashing


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it and restore it
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; other jobs and users read our outputs, so give them the mode
# open() would have given (0666 minus the umask)
FILE_MODE = 0o666 & ~_umask()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks (checkpoints are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(directory: str | Path) -> None:
    """Persist a rename itself (POSIX: a directory entry is durable only after the dir is
    synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, check=None, file_mode: int | None = None):
    """Yield a file object whose contents replace `path` only if the block finishes.

    On success: flush + fsync + close, chmod to `file_mode` (default FILE_MODE), then
    `check(tmp_path)` if given (it raises to reject the file), os.replace, fsync of the
    directory. On any exception (in the block or in `check`) the temp file is removed and
    nothing at `path` changes.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # a write error (disk full) names no file: name the target
            if err.filename is not None or err.errno is None:
                raise
            raise OSError(err.errno, err.strerror, str(path)) from err
        os.chmod(tmp, FILE_MODE if file_mode is None else file_mode)
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_json(path: str | Path, *, what: str = "file", hint: str = ""):
    """json.load of `path`; a truncated or corrupt file raises BadValueError naming the file and
    the position (JSONDecodeError alone names neither the file nor what to do)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        fix = f"; {hint}" if hint else ""
        raise BadValueError(
            f"{what} {path} is not valid JSON (truncated or corrupt: {err}){fix}"
        ) from err


def atomic_write_bytes(path: str | Path, data: bytes, *, file_mode: int | None = None) -> None:
    with atomic_open(path, "wb", file_mode=file_mode) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, *, file_mode: int | None = None) -> None:
    # encoded here rather than opened in text mode: no newline translation, always UTF-8
    atomic_write_bytes(path, text.encode(), file_mode=file_mode)


def atomic_write_json(path: str | Path, obj, *, sort_keys: bool = False, indent: int = 2) -> None:
    """json.dumps(obj, indent, sort_keys) plus a final newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nested dict/list/tuple (a checkpoint's size, give or take its
    pickled metadata)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else the nearest folder above it that does: where a write
    to `path` would create things (the folder whose space and permissions count)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(folder: str | Path, need: int, *, what: str) -> None:
    """Refuse to start writing `need` bytes into `folder` when it has less free space, saying
    both numbers (a full disk mid-write ends in torch's `unexpected pos`, which says neither)."""
    folder = nearest_existing(Path(folder))
    free = shutil.disk_usage(folder).free
    if need > free:
        raise OSFaultError(
            errno.ENOSPC,
            f"{folder}: not enough free space for {what} ({_size(need)} needed, {_size(free)} "
            f"free); free space there or choose another folder",
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def atomic_torch_save(obj, path: str | Path, *, check=None, file_mode: int | None = None) -> str:
    """torch.save `obj` atomically; returns the SHA-256 of the bytes written.

    Checks free space first (the tensors' bytes); a disk that fills up anyway (another writer)
    raises OSError ENOSPC naming the path, not torch's zip-writer RuntimeError.
    `check(tmp_path)` runs on the complete temp file before it replaces `path`.
    """
    import torch  # here, not at the top: commands that never save a tensor skip ~2 s of import

    path = Path(path)
    check_free_space(path.parent, tensor_bytes(obj), what=f"{path.name}")
    digest = {}

    def hash_then_check(tmp: Path) -> None:
        digest["sha256"] = sha256_file(tmp)  # of the exact bytes that will sit at `path`
        if check is not None:
            check(tmp)

    try:
        with atomic_open(path, "wb", check=hash_then_check, file_mode=file_mode) as f:
            torch.save(obj, f)
    except RuntimeError as err:  # torch's zip writer reports a full disk as "unexpected pos"
        if "unexpected pos" not in str(err) and "file write failed" not in str(err):
            raise
        free = shutil.disk_usage(path.parent).free
        raise OSFaultError(
            errno.ENOSPC,
            f"{path}: the disk filled up while writing it ({_size(free)} free now); nothing was "
            f"replaced; free space there or choose another folder",
        ) from err
    return digest["sha256"]


def atomic_savez(path: str | Path, **arrays) -> None:
    """np.savez (uncompressed, so readers can memory-map it) written atomically."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def git_commit() -> str | None:
    """HEAD of the checkout this package runs from, or None (installed wheel, no git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
