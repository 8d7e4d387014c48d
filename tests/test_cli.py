"""`udit` dispatches every registered command to an importable module's main()."""

import importlib
import subprocess
import sys

import pytest

from udit.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_fails_clearly(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_module_has_main(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.main)


def test_console_script_installed():
    # The `udit` entry point is what the README and the DAG call.
    proc = subprocess.run(
        [sys.executable, "-m", "udit.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "flops" in proc.stdout
