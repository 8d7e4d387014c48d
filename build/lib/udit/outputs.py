"""One place that opens a command's outputs: never over an input, never over another result.

Every command that writes files calls, before any work:

    claim = outputs.check(inputs={"--samples": s, ...}, outputs={"--out": out}, overwrite=False)

which refuses (exit 2, naming both flags and the path)
- an output that is one of the command's inputs: the same path after resolving symlinks and
  `..`, or the same file through a hard link;
- two outputs that are one file (`--grid` equal to `--out`);
- an output that is an existing folder where a file goes, or whose folder cannot be written
  (read-only, no permission), so the error comes before hours of work, not after.

`replace_result` then decides about an existing result at an output path: the same options make
the command a no-op, other options (or a file that is not this command's result) are refused,
naming what differs, unless `--overwrite` was given.

`locked(path)` is the one-run-one-writer guarantee: an advisory `fcntl` lock on a run folder or
an output file (`.NAME.lock` beside it). A second process refuses at once, naming the holder's
PID and host; the kernel drops the lock when its holder dies, so a lock file left by a dead
process never blocks.
"""

import contextlib
import fcntl
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from udit.errors import BadValueError, UserError
from udit.io import nearest_existing

OVERWRITE_HELP = (
    "replace an existing result at the output path even if it was made with other options "
    "(without it such a result is refused; the same options are always a no-op)"
)


class OutputClashError(BadValueError):
    """An output path that is an input, another output, or a result made with other options."""


class LockedError(UserError):
    """Another live process writes the same run folder or output file."""


def add_overwrite(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving, or one inode (hard link)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop: os.stat below says so with the path
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one of them does not exist yet: they cannot be one inode


def check(
    *,
    inputs: Mapping[str, str | Path | None],
    outputs: Mapping[str, str | Path | None],
    folders: tuple[str, ...] = (),
) -> None:
    """Refuse aliasing and unwritable outputs (module docstring). `inputs` / `outputs` map the
    flag (e.g. '--samples') to its path; None entries are skipped. Output flags listed in
    `folders` are folders (a run dir, an output tree); the others are files."""
    ins = {flag: Path(p) for flag, p in inputs.items() if p is not None}
    outs = {flag: Path(p) for flag, p in outputs.items() if p is not None}
    for in_flag, src in ins.items():
        _check_readable_kind(in_flag, src)
    for out_flag, out in outs.items():
        for in_flag, src in ins.items():
            if _same(out, src):
                raise OutputClashError(
                    f"{out_flag} {out} is the input {in_flag} {src}: writing it would destroy "
                    f"that input; choose another {out_flag}"
                )
            if out_flag in folders and _is_within(src, out):
                raise OutputClashError(
                    f"{out_flag} {out} holds the input {in_flag} {src}: writing it could destroy "
                    f"that input; choose another {out_flag}"
                )
            if src.is_dir() and _is_within(out, src):  # e.g. a run dir inside the image tree
                raise OutputClashError(
                    f"{out_flag} {out} lies inside the input folder {in_flag} {src}: the output "
                    f"would change that input (a new class folder, a stray shard); choose "
                    f"another {out_flag}"
                )
    flags = list(outs)
    for i, a in enumerate(flags):
        for b in flags[i + 1 :]:
            if _same(outs[a], outs[b]):
                raise OutputClashError(
                    f"{a} and {b} are the same file {outs[a]}; give them different paths"
                )
    for flag, out in outs.items():
        try:  # a symlink loop, a file used as a folder: the OS error names the path
            os.stat(out)
        except FileNotFoundError:
            pass
        if flag not in folders and out.is_dir():
            raise OutputClashError(f"{flag} {out} is a folder; name a file inside it")
        if out.exists() and not (out.is_dir() or out.is_file()):
            raise OutputClashError(
                f"{flag} {out} is not a regular file (a device, pipe or socket); name a file"
            )
        if flag in folders and out.exists() and not out.is_dir():
            raise OutputClashError(f"{flag} {out} is a file; name a folder")
        parent = out if flag in folders and out.is_dir() else nearest_existing(out.parent)
        if not os.access(parent, os.W_OK):
            raise PermissionError(
                f"{flag} {out}: cannot write in {parent} (read-only or no permission); "
                f"choose a writable folder"
            )


def _check_readable_kind(flag: str, path: Path) -> None:
    """An existing input must be a regular file or a folder: reading a pipe, a socket or a
    device such as /dev/zero would block forever or never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # the command's own loader names a missing input with its fix
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise BadValueError(
            f"{flag} {path} is not a regular file (a device, pipe or socket): reading it would "
            f"block or never end; give a file"
        )


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def differing_keys(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """Dotted paths of the values that differ, nested dicts walked ('config.seed'); values are
    compared as JSON, so NaN equals NaN and a tuple its list (options read back from a file)."""

    def norm(v):
        return json.dumps(v, sort_keys=True, default=str)

    changed = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += differing_keys(a, b, f"{prefix}{key}.")
        elif norm(a) != norm(b):
            changed.append(f"{prefix}{key}")
    return changed


def _value_at(options: Mapping, dotted: str):
    for part in dotted.split("."):
        options = options.get(part) if isinstance(options, Mapping) else None
    return options


def replace_result(
    path: str | Path,
    *,
    flag: str,
    options: Mapping,
    recorded: Callable[[Path], Mapping | None],
    overwrite: bool,
) -> bool:
    """Decide about an existing file at output `path`; -> True when it already holds the result
    of `options` (nothing to do). `recorded(path)` returns the options the existing file was
    made with, or None when it is not a result of this command (another kind of file).

    Absent: False (write it). Same options: True. Other options or another kind of file:
    refused naming what differs, unless `overwrite` (then False: write it)."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        old = recorded(path)
    except (OSError, ValueError, UserError):
        old = None
    if old is not None and not differing_keys(old, options):
        return True
    if overwrite:
        return False
    if old is None:
        raise OutputClashError(
            f"{flag} {path} exists and is not a result of this command (or its record is "
            f"missing): refusing to replace it; choose another {flag} or pass --overwrite"
        )
    changed = differing_keys(old, options)
    shown = ", ".join(
        f"{k} {_value_at(old, k)!r} -> {_value_at(options, k)!r}" for k in changed[:6]
    )
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    raise OutputClashError(
        f"{flag} {path} holds a result made with other options ({shown}{more}); "
        f"choose another {flag}, delete it, or pass --overwrite to replace it"
    )


def lock_file(path: str | Path) -> Path:
    """Where the lock of a folder or file `path` lives: a hidden file beside it, the same place
    whether or not `path` exists yet (two processes must always meet at one lock)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def locked(path: str | Path, *, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive advisory lock on the folder or file `path` for the block; a second
    holder gets LockedError at once with the first one's PID and host. The lock file is removed
    on release; a process that locked a lock file just removed sees that it no longer is the
    file at the path and tries again, so two holders never coexist."""
    lock = lock_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(LOCK_ATTEMPTS):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"{flag} {path} is being written by {holder} (lock {lock}); wait for it to "
                f"finish or stop it; a lock of a process that has died does not block"
            ) from None
        if _is_current(fd, lock):
            break
        os.close(fd)  # we locked a file its holder removed on release: lock the new one
    else:
        raise LockedError(f"{flag} {path}: could not take its lock {lock}; try again")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still held: no one can lock it in between
        os.close(fd)  # closing releases the flock


LOCK_ATTEMPTS = 5


def _is_current(fd: int, lock: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(lock).st_ino
    except FileNotFoundError:
        return False
