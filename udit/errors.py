"""One error style for every `udit` command.

An expected failure (bad input; a missing, corrupt or contradicting file) raises `UserError`
(or one of the project's error classes below, which subclass it) with a message that names the
file, key or value and the fix. `command_main` turns it into one `udit <cmd>: error: ...` line
on stderr and exit code 2, never a traceback; `--debug` or UDIT_DEBUG=1 shows the traceback
too. Anything else is a bug and keeps its traceback.

    @command_main("udit sample")
    def main(argv: list[str] | None = None) -> int: ...
"""

import functools
import os
import sys
import traceback

DEBUG_ENV = "UDIT_DEBUG"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """An expected failure whose message tells the user what to fix."""

    exit_code = EXIT_USER_ERROR  # a subclass may pick another (NonFiniteLossError: 1)


class BadValueError(UserError, ValueError):
    """A bad argument, option or input value. Still a ValueError, so callers (and tests) that
    catch ValueError keep working; a plain ValueError stays a bug and keeps its traceback."""


def user_error(err: BaseException) -> bool:
    """Whether `err` is an expected failure: a UserError, or one of the exceptions the standard
    library raises for a missing or unreadable path (their messages name the file)."""
    return isinstance(
        err,
        (
            UserError,
            FileNotFoundError,
            FileExistsError,  # e.g. --out names a file where a folder is made
            NotADirectoryError,
            IsADirectoryError,
            PermissionError,
        ),
    )


def command_main(prog: str):
    """Decorator for a command's `main(argv) -> int`: expected failures exit 2 with one line."""

    def wrap(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = sys.argv[1:] if argv is None else list(argv)
            debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
            argv = [a for a in argv if a != "--debug"]
            try:
                return main(argv)
            except Exception as err:  # sorted into expected / bug just below
                if not user_error(err):
                    raise
                if debug:
                    traceback.print_exc()
                print(f"{prog}: error: {err}", file=sys.stderr)
                return getattr(err, "exit_code", EXIT_USER_ERROR)

        return run

    return wrap
