"""One error style for every `udit` command.

An expected failure (bad input; a missing, corrupt or contradicting file; an OS fault such as a
full disk) raises `UserError` (or one of the project's error classes below, which subclass it)
with a message that names the file, key or value and the fix. `command_main` turns it into one
`udit <cmd>: error: ...` line on stderr and exit code 2, never a traceback; `--debug` or
UDIT_DEBUG=1 shows the traceback too. Anything else is a bug and keeps its traceback.

    @command_main("udit sample")
    def main(argv: list[str] | None = None) -> int: ...

Ctrl-C (SIGINT) in a command that does not checkpoint ends it with one line and exit 130 (the
shell's 128 + SIGINT); `udit train` / `udit sample` treat it as a stop signal (udit.stop).
"""

import errno
import functools
import os
import pickle
import re
import sys
import traceback

DEBUG_ENV = "UDIT_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head`
MAX_MESSAGE_LINES = 20  # no error fills more than a screen (a YAML bomb's expansion would)
MAX_MESSAGE_CHARS = 2000


class UserError(Exception):
    """An expected failure whose message tells the user what to fix."""

    exit_code = EXIT_USER_ERROR  # a subclass may pick another (NonFiniteLossError: 1)


class BadValueError(UserError, ValueError):
    """A bad argument, option or input value. Still a ValueError, so callers (and tests) that
    catch ValueError keep working; a plain ValueError stays a bug and keeps its traceback."""


class OSFaultError(UserError, OSError):
    """An OS fault (disk full, read-only, permission, symlink loop, name too long) on a path,
    explained: still an OSError for callers that catch it."""


# errno -> what to do; these are faults of the machine or the path the user gave, not bugs
OS_FAULT_FIXES = {
    errno.ENOSPC: "no space left on the device: free space there or choose another folder",
    errno.EDQUOT: "disk quota exceeded: free space in your quota or choose another folder",
    errno.EROFS: "read-only file system: choose a writable folder",
    errno.EACCES: "permission denied: fix the permissions or choose another path",
    errno.EPERM: "operation not permitted: fix the permissions or choose another path",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop): fix the link",
    errno.ENAMETOOLONG: "the path or one of its names is too long: choose a shorter path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a folder, where a file is expected: name a file",
    errno.EEXIST: "it exists already: choose another path or remove it",
    errno.ENOTEMPTY: "the folder is not empty: choose another path or empty it",
    errno.EMFILE: "too many open files: raise `ulimit -n` or use fewer workers",
    errno.ENFILE: "too many open files on the system: retry later or use fewer workers",
    errno.EXDEV: "the path crosses file systems where a rename is needed: use one file system",
}


# raised by this package with a message that names the file (e.g. "checkpoint not found: X")
PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def explain_os_error(err: OSError) -> OSFaultError | None:
    """An OSError with a known errno -> OSFaultError naming the path(s) and the fix; None for
    other errnos (a bug or an unknown fault keeps its traceback)."""
    if isinstance(err, UserError):
        return err
    if err.errno is None and isinstance(err, PATH_ERRORS):  # raised by us with a full message
        return OSFaultError(str(err))
    fix = OS_FAULT_FIXES.get(err.errno)
    if fix is None:
        return None
    where = " -> ".join(shown(p) for p in (err.filename, err.filename2) if p is not None)
    return OSFaultError(err.errno, f"{where or 'a file'}: {fix}")


def user_error(err: BaseException) -> bool:
    """Whether `err` is an expected failure: a UserError, or an OSError whose errno says the
    machine or the path is at fault (their messages name the path)."""
    return isinstance(err, UserError) or (
        isinstance(err, OSError) and explain_os_error(err) is not None
    )


def shown(path) -> str:
    """A path as an error message shows it: as is, or quoted with escapes when it holds a line
    break or another unprintable character (the message must stay one line)."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    return text if text.isprintable() else repr(text)


def one_screen(text: str) -> str:
    """`text` cut to MAX_MESSAGE_LINES lines and MAX_MESSAGE_CHARS characters, saying so."""
    lines = text.split("\n")
    if len(lines) <= MAX_MESSAGE_LINES and len(text) <= MAX_MESSAGE_CHARS:
        return text
    cut = "\n".join(lines[:MAX_MESSAGE_LINES])[:MAX_MESSAGE_CHARS]
    return f"{cut} ... [{len(text) - len(cut)} more characters not shown]"


def message(err: BaseException) -> str:
    """The one-line (at most one-screen) text of an expected failure."""
    if isinstance(err, OSError) and not isinstance(err, UserError):
        err = explain_os_error(err) or err
    if isinstance(err, OSFaultError):
        return one_screen(err.strerror or (err.args[0] if err.args else str(err)))
    return one_screen(_without_worker_traceback(str(err)))


MAX_CAUSE_CHARS = 160  # of the first sentence of a loader's error


def load_failure(err: BaseException) -> str:
    """Why `torch.load(..., weights_only=True)` refused a file, in a few words: the global it
    would have had to run, unreadable pickle data, or the error's type and first sentence
    (torch's messages run to paragraphs, a migration guide after the first line)."""
    blocked = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if blocked:
        return f"it pickles {blocked.group(1)}"
    if isinstance(err.__cause__ or err, pickle.UnpicklingError):
        return "its pickle data is unreadable"
    first = str(err).strip().split("\n")[0].split(". ")[0][:MAX_CAUSE_CHARS]
    return f"{type(err).__name__}: {first}"


WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def _without_worker_traceback(text: str) -> str:
    """torch re-raises an error of a DataLoader worker with the worker's traceback as its
    message; keep the original message (the traceback's last line, minus its type)."""
    if WORKER_TRACEBACK not in text:
        return text
    last = [ln for ln in text.split(WORKER_TRACEBACK, 1)[1].splitlines() if ln.strip()][-1]
    kind, sep, rest = last.partition(": ")
    return rest if sep and kind.replace(".", "").isidentifier() else last


def _close_progress_bars() -> None:
    """End any tqdm bar still open, so the error starts its own line instead of trailing the
    bar's last frame."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def command_main(prog: str):
    """Decorator for a command's `main(argv) -> int`: expected failures exit 2 with one line,
    Ctrl-C exits 130 with one line, a closed output pipe exits 141 quietly."""

    def wrap(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = sys.argv[1:] if argv is None else list(argv)
            debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
            argv = [a for a in argv if a != "--debug"]
            try:
                code = main(argv)
                sys.stdout.flush()  # a closed pipe shows here, inside the handler below
                return code
            except KeyboardInterrupt:
                _close_progress_bars()
                if debug:
                    traceback.print_exc()
                # every output goes through udit.io.atomic_open: nothing partial is left
                print(f"{prog}: interrupted (Ctrl-C); no partial output was kept", file=sys.stderr)
                return EXIT_INTERRUPTED
            except BrokenPipeError:  # the reader left (`udit plan | head`): nothing to report
                # what stdout still buffers goes to /dev/null, not to a second error at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return EXIT_BROKEN_PIPE
            except Exception as err:  # sorted into expected / bug just below
                if not user_error(err):
                    raise
                _close_progress_bars()
                if debug:
                    traceback.print_exc()
                print(f"{prog}: error: {message(err)}", file=sys.stderr)
                return getattr(err, "exit_code", EXIT_USER_ERROR)

        return run

    return wrap
