"""`udit begin-node --run-dir D --step S --from START`: what a training DAG node does before it
launches `udit train --stop-at S` (workflow/rules/train.smk).

The first attempt of a node drops the run's checkpoints past START, so `--forcerun` retrains that
stretch instead of resuming past it; a requeued attempt finds the marker and keeps them.
"""

import argparse
import re
import sys
from pathlib import Path

from udit import argtypes
from udit.cli import add_dry_run, dry_run
from udit.errors import BadValueError, command_main
from udit.paths import CKPT_DIR, step_tag

# No torch here: every DAG training node runs this first, and importing torch (through the
# training store) cost 1.5 s of start-up per node.
NODE_FILE = re.compile(r"^ckpt-(\d+)\.")  # a checkpoint, its sidecar or its .corrupt copy


def node_marker(run_dir: Path, step: int) -> Path:
    """Present while the DAG node that trains `run_dir` up to `step` has not finished."""
    return Path(run_dir) / f".node-{step_tag(step)}.incomplete"


def begin_node(run_dir: Path, *, step: int, start: int) -> list[Path]:
    """Start the DAG node that trains `run_dir` from `start` to `step`. On its first attempt (no
    marker) every checkpoint file past `start` goes, so a --forcerun really retrains that
    stretch; a requeued attempt (marker left) keeps them and resumes. `udit train` removes the
    marker when it reaches --stop-at. -> the removed files."""
    marker = node_marker(run_dir, step)
    directory = Path(run_dir) / CKPT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    if marker.exists():
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        found = NODE_FILE.match(path.name)
        if found and int(found.group(1)) > start:
            path.unlink()
            removed.append(path)
    marker.touch()
    return removed


@command_main("udit begin-node")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="udit begin-node", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="the run folder of train")
    parser.add_argument("--step", type=argtypes.STEPS, required=True, help="the node's --stop-at")
    parser.add_argument(
        "--from", dest="start", type=argtypes.STEPS_OR_ZERO, required=True,
        help="the step the node starts from (0: from scratch)",
    )  # fmt: skip
    add_dry_run(parser)
    args = parser.parse_args(argv)
    if args.start >= args.step:
        raise BadValueError(f"--from {args.start} must be below --step {args.step}")
    if dry_run(args):
        return 0
    for path in begin_node(args.run_dir, step=args.step, start=args.start):
        print(f"removed {path} (past step {args.start}: this node retrains it)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
