# Config validation and the DAG object every stage wires its rules to (no rules here).
# Paths, inputs, job options and resources are methods of udit.dag.Dag, over the experiments
# udit.experiments resolves: one place for this DAG, `udit plan` and `udit report`.
import contextlib
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from udit import experiments as ex
from udit import inputs, outputs, paths
from udit.dag import PYTHON, Dag, python_cmd, rank_threads, udit_cmd
from udit.errors import UserError, one_screen

CONFIG_FILES = [
    os.path.relpath(f) if not os.path.relpath(f).startswith("..") else str(f)
    for f in workflow.configfiles
]
try:
    # Snakemake's own loader keeps the last of two equal keys and expands aliases unbounded:
    # read each file again with ours (duplicate keys, size and alias caps) before anything
    # walks the config, then our schema check (one short line per key) before Snakemake's
    # (which fills in defaults, and whose error would print the whole config)
    for _configfile in CONFIG_FILES:
        ex.load_yaml(_configfile)
    ex.validate_config(config, source=", ".join(CONFIG_FILES) or "config")
    validate(config, schema="../schemas/config.schema.yaml")
    _chain = tuple(os.path.realpath(f) for f in CONFIG_FILES)  # a `base` loop is refused
    CONFIG = ex.expand_base(config, root=workflow.basedir, chain=_chain)
    # not `DAG`: the Snakefile runs in snakemake.workflow's namespace, which has a DAG class
    NODES = Dag(CONFIG, config_files=CONFIG_FILES, error=WorkflowError)
except UserError as err:
    named = any(str(err).startswith(f) for f in CONFIG_FILES)  # YAML errors name file:line
    source = "" if named else f" {', '.join(CONFIG_FILES)}"
    raise WorkflowError(one_screen(f"invalid config{source}: {err}")) from None
except WorkflowError as err:  # Snakemake's schema check quotes the instance
    raise WorkflowError(one_screen(str(err))) from None


R = NODES.results
# train and sample: torchrun over the job's GPUs / nodes, stopped before the time limit
LAUNCH = f"bash {shlex.quote(str(Path(workflow.current_basedir).parent / 'scripts' / 'launch.sh'))}"


# One Snakemake run per results folder: Snakemake's own lock is per working directory, and a
# second run from another one would delete, as outputs of its refused jobs, what the first run
# is writing. Held from onstart (jobs run with --no-hooks) to the end of the process.
RESULTS_LOCK = contextlib.ExitStack()


def hold_results_lock():
    try:
        RESULTS_LOCK.enter_context(outputs.locked(Path(R), flag="results folder"))
    except UserError as err:
        raise WorkflowError(one_screen(str(err))) from None


def check_external_inputs(dag):
    """Stop before the first job when an input the run needs is missing or malformed."""
    found = inputs.problems(CONFIG, NODES.external_needs(dag.needrun_jobs()))
    if found:
        raise WorkflowError(inputs.report(found))


for _path, _what in NODES.missing_external():
    print(
        f"note: {_what} not found at {_path} (needed before the jobs that read it run)",
        file=sys.stderr,
    )
