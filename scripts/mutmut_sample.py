"""A mutation score from a seeded random sample of mutants, with its 95% interval.

Running every mutant of `[tool.mutmut].only_mutate` takes most of a day on 2 cores. The score of
a uniform random sample of the mutants not yet run estimates theirs: k killed of n run gives
k / n with a Wilson interval, and the whole score is the exactly known part plus that rate times
the rest. Run from the project root, after `mutmut run` has generated the mutants:

    python scripts/mutmut_sample.py pick 1000 --seed 1 > sample.txt   # names not yet run
    mutmut run --max-children 2 $(cat sample.txt)
    python scripts/mutmut_sample.py score sample.txt

A sample may grow in batches while time allows: run one batch whole, then pick the next (it is
drawn from the mutants still not run, so never from an earlier batch) and score them together,
`score a.txt b.txt`: batches drawn one after another from what is left make one uniform sample.

`score` counts every mutant with a result and not in the sample exactly, and the sample's
survivors, "no tests" and timeouts as not killed. A sample only part run is refused: mutmut runs
the cheapest mutants first, so a partial sample is not a random one.
"""

import argparse
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code
from mutmut_fresh import meta_files, positive

NOT_RUN = "not checked"


def fail(message: str):
    print(f"mutmut_sample.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def statuses() -> dict[str, str]:
    """mutant name -> mutmut's status word, over every results file under mutants/."""
    out = {}
    for meta in meta_files():
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = status_by_exit_code[code]
    return out


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% at z = 1.96)."""
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def pick(count: int, seed: int) -> list[str]:
    pool = sorted(name for name, status in statuses().items() if status == NOT_RUN)
    if count > len(pool):
        fail(f"{count} asked, {len(pool)} mutants not yet run")
    return sorted(random.Random(seed).sample(pool, count))


def score(sample: set[str]) -> str:
    status = statuses()
    unknown = sorted(sample - status.keys())
    if unknown:
        fail(f"not mutants of this run: {', '.join(unknown[:3])}")
    in_sample = Counter(status[name] for name in sample)
    if in_sample[NOT_RUN]:
        fail(f"{in_sample[NOT_RUN]} of the sample not run yet")
    rest = Counter(status for name, status in status.items() if name not in sample)
    known = sum(rest.values()) - rest[NOT_RUN]
    killed, n = in_sample["killed"], len(sample)
    low, high = wilson(killed, n)
    total = known + rest[NOT_RUN] + n  # the sample stands for every mutant not run
    estimate = [(rest["killed"] + q * (rest[NOT_RUN] + n)) / total for q in (killed / n, low, high)]
    return (
        f"run in full: {rest['killed']} of {known} killed ({rest['killed'] / max(known, 1):.1%})\n"
        f"sample: {killed} of {n} killed ({killed / n:.1%}, 95% interval {low:.1%} to {high:.1%}),"
        f" standing for {rest[NOT_RUN] + n} mutants not run in full\n"
        f"estimated score of all {total}: {estimate[0]:.1%}"
        f" ({estimate[1]:.1%} to {estimate[2]:.1%})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pick", help="print a seeded random sample of the mutants not yet run")
    p.add_argument("count", type=positive(int))
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="the exact part plus the sample's estimate, with intervals")
    s.add_argument(
        "samples",
        nargs="+",
        help="files of mutant names, one per line (the output of pick); several files are one "
        "sample (batches drawn one after another, each from the mutants not yet run)",
    )
    args = parser.parse_args(argv)
    if args.command == "pick":
        print("\n".join(pick(args.count, args.seed)))
    else:
        names = set()
        for sample in args.samples:
            try:
                batch = set(Path(sample).read_text().split())
            except OSError as err:
                parser.error(f"cannot read {sample}: {err.strerror}")
            if not batch:
                parser.error(f"{sample} names no mutants")
            names |= batch
        print(score(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
