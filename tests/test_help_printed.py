"""Every command's `--help`, line for line, against tests/printed/help/ (tests/printed_text.py).

The help is the documentation a researcher reads at the terminal: a flag's default, its units
and what it changes. Formatted by argparse at a fixed width on the Python of environment.yml.
"""

import importlib

import pytest
from printed_text import check_printed

from udit.cli import COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_is_the_one_read(command, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps at the terminal's width
    main = importlib.import_module(COMMANDS[command][0]).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    check_printed(capsys.readouterr().out, f"help/{command}.txt")
