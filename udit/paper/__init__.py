"""Every number the paper reports: udit/paper/paper_numbers.yaml, read in one place."""
from functools import cache
from importlib import resources

import yaml


@cache
def paper_numbers() -> dict:
    """The whole of paper_numbers.yaml (tables keyed as in the file; see its header)."""
    return yaml.safe_load(resources.files("udit.paper").joinpath("paper_numbers.yaml").read_text())


def training_settings() -> dict:
    """paper_numbers.yaml `training_settings`: the recipe of paper section 4 + official code."""
    return paper_numbers()["training_settings"]
