"""`udit report`: every paper table and figure, paper beside reproduction, as one HTML page.

    udit report --configfile config/smoke.yaml --results results --out report/

Reads only job outputs (results/flops/flops.json, results/*/metrics/*.json,
results/*/train/log.jsonl, results/*/samples/*.png, results/speed/speed.json if measured),
the model registry (Table 8) and writes
    report/index.html          the page (opens from disk: images beside it, relative links)
    report/figures/*.png|svg   figures (marked with report() in the make_report rule)
    report/tables/*.csv|html   one table per paper table + records.csv (long form)
    report/samples/*.png       sample grids copied from results
Anything not run yet is "pending"; numbers from a stand-in Inception get a red banner; a result
file that exists but is broken (a metrics JSON with NaN, out-of-range or missing metrics, a bad
flops.json, a grid that does not decode) is "invalid": marked in its cells, listed with the reason
in a banner and on stderr, and `--strict` exits 2 on it.
"""

import argparse
import datetime
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import jinja2
import pandas as pd

from udit import experiments as ex
from udit import outputs, paths
from udit.errors import UserError, command_main
from udit.io import atomic_write_bytes, git_commit
from udit.report import claims, figures, lottery, model_tables, samples, tables, tolerances

TEMPLATE = "index.html.j2"
REPORT_MODE = 0o644  # the report is meant to be shared, whatever the umask
PACKAGES = [
    "torch",
    "torchvision",
    "torch-fidelity",
    "fvcore",
    "diffusers",
    "numpy",
    "pandas",
    "matplotlib",
]
BARS = (
    " Error bars on reproduced points: their 95% interval, the value +- 1.96 bootstrap standard "
    "errors over the generated samples, or a Student-t interval over K training seeds where "
    "K > 1 (hollow markers or bars, n=K: the mean of K seeds) or over one run's sampling seeds; "
    "points without bars have no interval. Paper points have "
    "none (one run, no interval reported)."
)
FIGURES = {  # file stem -> caption (the page and workflow/captions/figure.rst)
    "fid_vs_gflops": "FID-50K vs GFLOPs at 400K iterations (the paper's headline comparison, "
    "Table 2, with Table 3's other architectures as triangles): paper points left, reproduced "
    "runs right (GFLOPs from fvcore)." + BARS,
    "fid_vs_iterations": "FID vs training iterations: the paper's Table 5 curves left, "
    "each reproduced run over its evaluated milestones right "
    "(dotted lines: milestone checkpoints)." + BARS,
    "ablation_ladder": "The ablation ladder (Table 9) as FID bars: paper left, reproduction right."
    + BARS,
    "training_loss": "Training loss (mse + vb, hybrid objective) from each run's log.jsonl: "
    "one panel per paper table with the runs it compares (log-scaled steps).",
}


def atomic_write(path: Path, data: str | bytes) -> None:
    """Temp file beside the target + os.replace: a reader sees the old or the new file,
    never half."""
    data = data.encode() if isinstance(data, str) else data
    atomic_write_bytes(path, data, file_mode=REPORT_MODE)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def copy_grids(nodes: list[tables.Node], *, results: Path, out_dir: Path) -> list[dict]:
    """Copy each evaluated node's sample grid beside the page; one entry per grid found."""
    grids = []
    for node in nodes:
        src = node.grid_path(results)
        if src.is_file():
            name = f"{node.experiment}-{node.tag}.png"
            atomic_write(out_dir / name, src.read_bytes())
            grids.append(
                {
                    "src": f"samples/{name}",
                    "experiment": node.experiment,
                    "title": node.title,
                    "tag": node.tag,
                }
            )
    return grids


def cell_lines(records: pd.DataFrame, table_key: str) -> list[dict]:
    """Template rows of one paper table: row, run, and per metric
    paper / reproduced / diff / status."""
    lines = []
    sub = records[records["table"] == table_key]
    for (row, node), group in sub.groupby(["row", "node"], sort=False, dropna=False):
        cells = []
        for rec in group.itertuples():
            invalid = tables.is_invalid(rec)
            cells.append(
                {
                    "metric": rec.metric,
                    "paper": tables.fmt(rec.paper, rec.metric) or "-",
                    "reproduced": tables.fmt(rec.reproduced, rec.metric)
                    or tables.missing_text(rec)
                    or "-",
                    "interval": tables.interval_text(rec),
                    "verdict": rec.status if rec.status in tables.VERDICTS else "",
                    "basis": rec.basis if isinstance(rec.basis, str) else "",
                    "diff": "" if pd.isna(rec.diff) else f"{rec.diff:+.3g}",
                    "rel": "" if pd.isna(rec.rel_diff) else f"{rec.rel_diff:+.1%}",
                    "status": rec.status,
                    "css": "invalid" if invalid else rec.status.replace(" ", "-"),
                    "invalid": invalid,
                    "note": rec.note or "",
                    "tolerance": rec.tolerance,
                }
            )
        lines.append(
            {
                "row": row,
                "node": node if isinstance(node, str) else None,
                "cells": cells,
                "uncalibrated": bool(group["uncalibrated"].any()),
                "fid_infinity": tables.infinity_text(group),
            }
        )
    return lines


def loss_panels(experiments: dict, results: Path) -> dict[str, dict[str, Path]]:
    """Panel title -> {run: log.jsonl} per paper table: the runs whose evaluations cite it
    (or that the config files under it, e.g. T7's dense-conv run), logs that exist only."""
    panels = {}
    for table in tables.PAPER_TABLES:
        number = table.label.split()[-1]
        runs = {
            eid: Path(paths.train_log(results, eid))
            for eid, exp in experiments.items()
            if exp.table == f"T{number}"
            or any(ref.table == table.key for e in exp.evaluations for ref in e.paper)
        }
        runs = {eid: log for eid, log in runs.items() if log.is_file()}
        if runs:
            panels[f"{table.label}: {table.title.split(':')[0]}"] = runs
    return panels


def final_grid_entry(experiments: dict, grids: list[dict]) -> dict | None:
    """The copied grid of U-DiT-L's last milestone (1M in the paper config), if sampled."""
    found = samples.final_grid(experiments)
    if found is None:
        return None
    eid, evaluation = found
    for g in grids:
        if g["experiment"] == eid and g["tag"] == evaluation.tag:
            return {**g, "step": samples.step_label(evaluation.step)}
    return None


@dataclass(frozen=True)
class Built:
    summary: dict[str, int]  # paper numbers per status (tables.summary)
    invalid: list[dict]  # broken inputs: metrics files, flops.json (tables), grids (samples)


def build_report(*, config: Path, results: Path, out: Path) -> Built:
    """Write the whole report into `out`; returns the summary counts and the invalid files."""
    cfg = ex.load_config(config)
    experiments, released = ex.resolve_experiments(cfg), ex.resolve_released(cfg)
    results, out = Path(results), Path(out)
    collected = tables.collect_records(
        experiments=experiments, released=released, results=results, datasets=cfg["datasets"]
    )
    records, provenance = collected.records, collected.provenance
    table_files = tables.write_tables(records, out_dir=out / "tables", write=atomic_write)

    made = draw_figures(records, experiments, results=results, fig_dir=out / "figures")
    nodes = tables.config_nodes(
        experiments=experiments, released=released, results=results, datasets=cfg["datasets"]
    )
    grids = copy_grids(nodes, results=results, out_dir=out / "samples")
    invalid = list(collected.invalid)  # broken inputs: metrics files, flops.json, grids
    strips = samples.strips(experiments, results=results, out_dir=out / "figures", invalid=invalid)
    t8, t11 = write_model_tables(results, out=out, table_files=table_files)
    summary = tables.summary(records)
    uncalibrated = sorted(p["node"] for p in provenance if p["uncalibrated"]) if provenance else []
    html = render_page(
        description=cfg.get("description", ""),
        config=Path(config).as_posix(),
        summary=summary,
        claims=claims.claim_lines(records),
        lottery=lottery.measure(experiments, results),
        tables=table_entries(records),
        figures=[figure_entry(name) for name in made],
        grids=grids,
        strips=strips,
        final_grid=final_grid_entry(experiments, grids),
        t8=t8,
        t11=t11,
        provenance=provenance,
        uncalibrated=uncalibrated,
        invalid=invalid,
        table_files=table_files,
    )
    atomic_write(out / "index.html", html)
    return Built(summary=summary, invalid=invalid)


def draw_figures(records, experiments: dict, *, results: Path, fig_dir: Path) -> list[str]:
    """The paper's figures from the records (error bars where intervals exist) and the losses."""
    milestones = {eid: exp.milestones for eid, exp in experiments.items()}
    return [
        figures.fid_vs_gflops(records, fig_dir).name,
        figures.fid_vs_iterations(records, milestones, fig_dir).name,
        figures.ablation_ladder(records, fig_dir).name,
        figures.training_loss(loss_panels(experiments, results), fig_dir),
    ]


def write_model_tables(results: Path, *, out: Path, table_files: list[str]):
    """Tables 8 (the registry) and 11 (measured speed) as CSV beside the paper tables."""
    t8 = model_tables.configurations_t8()
    t11 = model_tables.speed_t11(model_tables.read_speed(Path(paths.speed(results))))
    for key, frame in [
        ("configurations_T8", model_tables.t8_frame(t8)),
        ("training_speed_T11", model_tables.t11_frame(t11)),
    ]:
        atomic_write(out / "tables" / f"{key}.csv", frame.to_csv(index=False))
        table_files.append(f"{key}.csv")
    return t8, t11


def table_entries(records) -> list[dict]:
    return [
        {
            "key": t.key,
            "label": t.label,
            "title": t.title,
            "lines": cell_lines(records, t.key),
            "csv": f"tables/{t.key}.csv",
        }
        for t in tables.shown_tables(records)
    ]


def figure_entry(name: str) -> dict:
    stem = Path(name).stem
    return {"src": f"figures/{name}", "svg": f"figures/{stem}.svg", "caption": FIGURES[stem]}


def render_page(**context) -> str:
    """index.html from the template; a template mistake fails the job (StrictUndefined)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("udit.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template(TEMPLATE).render(
        **context,
        tolerances=tolerances.TOLERANCES,
        labels=tables.METRIC_LABELS,
        metrics=tables.METRICS,
        params_tolerance=model_tables.PARAMS_TOLERANCE,
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        report_commit=git_commit(),
        versions=package_versions(),
    )


class InvalidResultsFound(UserError):
    """--strict: the report was written, but some result files it reads are invalid."""


@command_main("udit report")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="udit report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configfile", type=Path, required=True, help="the workflow config the results come from"
    )
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="results folder of the DAG"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("report"), help="folder for index.html and its files"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 2 when any result file it reads (metrics JSON, flops.json, sample grid) is "
        "invalid; the page is written and marks them either way",
    )
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        raise UserError(f"results folder {args.results} does not exist (or is not a folder)")
    outputs.check(
        inputs={"--results": args.results, "--configfile": args.configfile},
        outputs={"--out": args.out},
        folders=("--out",),
    )
    built = build_report(config=args.configfile, results=args.results, out=args.out)
    for bad in built.invalid:
        print(f"[report] invalid result file {bad['path']}: {bad['why']}", file=sys.stderr)
    counts = ", ".join(f"{k} {v}" for k, v in built.summary.items())
    print(f"[report] {args.out / 'index.html'}: {counts}")
    if args.strict and built.invalid:
        first = built.invalid[0]
        raise InvalidResultsFound(
            f"--strict: {len(built.invalid)} invalid result file(s), the first "
            f"{first['path']}: {first['why']}; fix them or re-run the jobs that write them"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
