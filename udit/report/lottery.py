"""The training lottery, measured: how much FID moves between training seeds of one experiment.

An experiment with `replicates: K` trains K runs that differ only in their seed (udit.experiments:
`id`, `id-seed{seed+1}`, ...). For each such group and evaluation (step, cfg) where at least two
replicates have valid metrics, the report shows every seed's FID, their mean, sample standard
deviation (K - 1), coefficient of variation (sd / mean) and the Student-t interval of the mean
(udit.report.tolerances.seeds_interval, the interval the verdicts use). One line sets the median
CoV over groups (each group at its last evaluated milestone, cfg 1.0 where it has one) beside
the 1.3% the verdicts assume for the paper's single run (tolerances.PAPER_NOISE).

A run with several sampling seeds (`sample_seeds`) enters with the mean of its seeds' FIDs.

A stand-in Inception's FID (smoke) is marked uncalibrated: its CoV is still a real measurement of
this harness's seed noise, but at toy scale, not the paper's.
"""

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

from udit import experiments as ex
from udit import paths
from udit.report import metrics_json
from udit.report.tolerances import PAPER_NOISE, seeds_interval

METRIC = "fid"


@dataclass(frozen=True)
class Seed:
    experiment: str  # the replicate's run id
    seed: int  # its training seed
    fid: float


@dataclass(frozen=True)
class Line:
    """One replicated group at one evaluation: K seeds' FIDs and their spread."""

    group: str
    tag: str  # '0000008-cfg1.0'
    step: int
    cfg: float
    seeds: tuple[Seed, ...]
    samples: int | None  # generated samples per FID (the smallest N over the seeds)
    uncalibrated: bool  # any seed measured with a stand-in Inception
    in_median: bool = False  # the line its group contributes to the median CoV

    @property
    def k(self) -> int:
        return len(self.seeds)

    @property
    def interval(self) -> dict:  # low, high, level, runs, sd (Student t, K - 1 dof)
        return seeds_interval([s.fid for s in self.seeds])

    @property
    def mean(self) -> float:
        return statistics.fmean(s.fid for s in self.seeds)

    @property
    def sd(self) -> float:
        return self.interval["sd"]

    @property
    def cov(self) -> float:
        """Coefficient of variation: sample sd / mean (not the variance)."""
        return self.sd / self.mean if self.mean else float("nan")


@dataclass(frozen=True)
class Lottery:
    lines: list[Line]
    median_cov: float | None  # over groups (their in_median lines); None without any
    groups: int  # groups in the median
    uncalibrated: bool  # a line in the median is from a stand-in Inception
    assumed_cov: float  # PAPER_NOISE's FID CoV
    assumed_source: str

    @property
    def rows(self) -> list[dict]:  # the page's table
        return rows(self)


def _line(group: str, evaluation: ex.Evaluation, runs: list, results: Path) -> Line | None:
    """The group's line at one evaluation, or None with fewer than 2 valid metrics files."""
    seeds, samples, uncalibrated = [], [], False
    for run in runs:
        draws = [e for e in run.evaluations if e.base_tag == evaluation.base_tag]
        reads = [metrics_json.read(Path(paths.metrics(results, run.id, e.tag))) for e in draws]
        found = [r.data for r in reads if r.data is not None]  # else not run, or invalid
        if not found:
            continue
        seeds.append(Seed(run.id, run.seed, statistics.fmean(d[METRIC] for d in found)))
        samples += [d.get("protocol", {}).get("N") for d in found]
        uncalibrated = uncalibrated or any(d.get("uncalibrated", False) for d in found)
    if len(seeds) < 2:
        return None
    known = [n for n in samples if isinstance(n, int)]
    return Line(
        group=group,
        tag=evaluation.tag,
        step=evaluation.step,
        cfg=evaluation.cfg,
        seeds=tuple(seeds),
        samples=min(known) if known else None,
        uncalibrated=uncalibrated,
    )


def _median_line(lines: list[Line]) -> Line:
    """A group's line for the median: its last milestone, unguided (cfg 1.0) where it has one."""
    unguided = [ln for ln in lines if ln.cfg == 1.0] or lines
    return max(unguided, key=lambda ln: (ln.step, -ln.cfg))


def measure(experiments: dict[str, ex.Experiment], results: Path) -> Lottery:
    """Every replicated group's lines, and the median CoV over groups."""
    lines: list[Line] = []
    chosen: list[Line] = []
    for group, runs in ex.replicate_groups(experiments).items():
        if len(runs) < 2:
            continue
        found = [
            line
            for evaluation in runs[0].evaluations
            if not evaluation.draw
            and (line := _line(group, evaluation, runs, Path(results))) is not None
        ]
        if found:
            pick = _median_line(found)
            chosen.append(pick)
            lines += [dataclasses.replace(ln, in_median=ln is pick) for ln in found]
    covs = [ln.cov for ln in chosen]
    cov, source = PAPER_NOISE[METRIC]
    return Lottery(
        lines=lines,
        median_cov=statistics.median(covs) if covs else None,
        groups=len(chosen),
        uncalibrated=any(ln.uncalibrated for ln in chosen),
        assumed_cov=cov,
        assumed_source=source,
    )


def rows(lottery: Lottery) -> list[dict]:
    """The template's rows: numbers formatted, one per (group, evaluation)."""
    out = []
    for ln in lottery.lines:
        spread = ln.interval
        out.append(
            {
                "group": ln.group,
                "tag": ln.tag,
                "k": ln.k,
                "seeds": [f"seed {s.seed}: {s.fid:.2f}" for s in ln.seeds],
                "mean": f"{ln.mean:.2f}",
                "sd": f"{ln.sd:.3g}",
                "cov": f"{ln.cov:.1%}",
                "interval": f"[{spread['low']:.2f}, {spread['high']:.2f}]",
                "level": f"{spread['level']:.0%}",
                "samples": ln.samples if ln.samples is not None else "?",
                "uncalibrated": ln.uncalibrated,
                "in_median": ln.in_median,
            }
        )
    return out
