"""The reproduction report (`udit report`): paper tables and figures beside reproduced numbers.

tables.py collects records and writes one table per paper table, model_tables.py builds
Tables 8 (registry) and 11 (speed JSON), samples.py cuts the samples-over-training strips,
figures.py draws the figures, render.py fills templates/index.html.j2 and holds the CLI.
"""

from udit.report.render import build_report, main

__all__ = ["build_report", "main"]
