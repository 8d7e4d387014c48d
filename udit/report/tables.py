"""Paper tables beside the reproduction: one long record per (paper row, run, metric), and one
wide table per paper table (CSV + HTML), laid out like the paper.

The report reads only what the jobs wrote (paths in udit/paths.py):
    results/flops/flops.json                          fvcore GFLOPs rows (udit flops)
    results/{experiment}/metrics/{step}-cfg{cfg}.json  metrics + provenance (udit evaluate)
    results/{released}/metrics/released-cfg{cfg}.json  the same, of an official checkpoint
Paper numbers come from udit/paper/paper_numbers.yaml through the config's references
(udit.experiments.PaperRef); a node whose metrics file does not exist yet is "pending", one
whose file exists but fails metrics_json's checks is "invalid" (never a number, never pending).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from udit import experiments as ex
from udit import paths
from udit.argtypes import IMAGE_SIZE, NONNEG, POSITIVE
from udit.errors import UserError, message
from udit.metrics import clip_interval
from udit.report import metrics_json
from udit.report.tolerances import (
    STATUSES,
    TOLERANCES,
    UNJUDGED,
    gflops_tolerance,
    seeds_interval,
    verdict,
)

METRICS = ["gflops", "fid", "sfid", "is", "precision", "recall"]  # paper_numbers.yaml `columns`
METRIC_LABELS = {
    "gflops": "GFLOPs",
    "fid": "FID",
    "sfid": "sFID",
    "is": "IS",
    "precision": "Precision",
    "recall": "Recall",
}
LOWER_IS_BETTER = {"gflops", "fid", "sfid"}
VERDICTS = ("reproduced", "disagrees", "inconclusive")  # a comparison with the paper was made
LATENT_256, LATENT_512 = (
    32,
    64,
)  # fvcore input sizes of udit.flops (ImageNet 256 / 512 through the f=8 VAE)


@dataclass(frozen=True)
class PaperTable:
    key: str  # table of paper_numbers.yaml
    label: str  # e.g. 'Table 2'
    title: str
    latent: int = LATENT_256


# Reading order of the report; T10 and T6 appear when the config runs them.
PAPER_TABLES = [
    PaperTable("toy_T1", "Table 1", "Toy experiment: DiT vs DiT-UNet vs downsampled tokens (400K)"),
    PaperTable(
        "ablation_T9", "Table 9", "Ablation ladder: from DiT-UNet to U-DiT-T and each improvement"
    ),
    PaperTable("downsampler_T7", "Table 7", "Downsampler ablation (toy scale)"),
    PaperTable(
        "main_400k_T2", "Table 2", "Main comparison at 400K iterations, ImageNet 256, no guidance"
    ),
    PaperTable(
        "other_architectures_T3",
        "Table 3",
        "Other architectures at 400K iterations in the same setting, no guidance",
    ),
    PaperTable("cfg_1.5_T4", "Table 4", "Classifier-free guidance, cfg = 1.5 (400K)"),
    PaperTable(
        "longer_training_T5", "Table 5", "Longer training: 200K to 1M iterations, no guidance"
    ),
    PaperTable("vanilla_vs_all_T10", "Table 10", "Vanilla U-DiTs vs all modifications (400K)"),
    PaperTable("imagenet512_T6", "Table 6", "ImageNet 512x512 (400K)", latent=LATENT_512),
]
ALWAYS_SHOWN = {
    "toy_T1",
    "ablation_T9",
    "downsampler_T7",
    "main_400k_T2",
    "other_architectures_T3",
    "cfg_1.5_T4",
    "longer_training_T5",
}


# Official checkpoints (`snakemake released`): one line per (checkpoint evaluation, paper
# number it answers), whichever paper table holds that number (DiT's final FIDs, T5's 7M and
# 1M rows). Shown once one of them has metrics; kept out of the paper tables so the summary
# counts each measurement once.
RELEASED_TABLE = PaperTable(
    "released", "Released checkpoints", "Official checkpoints against the numbers reported"
)
SOURCE_LABELS = {t.key: t.label for t in PAPER_TABLES} | {
    "dit_xl2_final": "DiT paper, 7M iterations",
}


def released_row(ref: ex.PaperRef) -> str:
    """'Table 5: DiT-XL/2 @ 7M', 'DiT paper, 7M iterations: 256': where the number is from."""
    where = SOURCE_LABELS.get(ref.table, ref.table)
    return f"{where}: {ref.row}" + (f" @ {ref.key}" if ref.key else "")


@dataclass(frozen=True)
class Node:
    """One evaluation node of the DAG: a run's checkpoint sampled at one cfg scale."""

    experiment: str
    title: str
    model: str
    shrunk: bool  # trained with model_kw (smoke): not the paper-size architecture
    evaluation: ex.Evaluation
    latent: int = LATENT_256  # fvcore input size of a released checkpoint's GFLOPs
    group: str = ""  # the experiment this node's run replicates (udit.experiments)
    replicate: int = 0  # training seed index within the group (0: the config's experiment)

    @property
    def lead(self) -> bool:
        """The node a paper row is judged on: replicate 0's first sampling seed; the row's
        value pools every replicate and sampling seed of its (step, cfg)."""
        return not self.replicate and not self.evaluation.draw

    @property
    def pool_key(self) -> str:  # 'u-dit-t/0000008-cfg1.0': the nodes pooled into one value
        return f"{self.group}/{self.evaluation.base_tag}"

    @property
    def cfg(self) -> float:
        return self.evaluation.cfg

    @property
    def tag(self) -> str:  # '0400000-cfg1.0' or 'released-cfg1.5' (udit.paths)
        return self.evaluation.tag

    @property
    def step_tag(self) -> str:  # '0400000' or 'released'
        return paths.parse_eval_tag(self.tag)[0]

    @property
    def name(self) -> str:  # 'u-dit-b/0400000-cfg1.0': the report's key for this node
        return f"{self.experiment}/{self.tag}"

    def metrics_path(self, results: Path) -> Path:
        return Path(paths.metrics(results, self.experiment, self.tag))

    def grid_path(self, results: Path) -> Path:
        return Path(paths.grid(results, self.experiment, self.tag))


def config_nodes(
    *, experiments: dict, released: dict, results: Path, datasets: dict | None = None
) -> list[Node]:
    """Every trained evaluation node, plus released-checkpoint nodes whose metrics exist
    (`snakemake released` is optional, so an un-run released node is not 'pending').
    `datasets` (the config's) gives a released checkpoint's resolution for its GFLOPs."""
    nodes = [
        Node(
            eid, exp.title or exp.model, exp.model, bool(exp.model_kw), e,
            group=exp.group or eid, replicate=exp.replicate,
        )
        for eid, exp in experiments.items()
        for e in exp.evaluations
    ]  # fmt: skip
    for rid, rel in released.items():
        size = (datasets or {}).get(rel.dataset, {}).get("image_size", 256)
        latent = LATENT_512 if size >= 512 else LATENT_256
        for e in rel.evaluations:
            title = f"{rel.model} {size}px (released checkpoint)"
            node = Node(rid, title, rel.model, bool(rel.model_kw), e, latent=latent)
            if os.path.lexists(node.metrics_path(results)):  # even a broken one: it is shown
                nodes.append(node)
    return nodes


@dataclass(frozen=True)
class FlopsRead:
    rows: dict  # (model, input_size) -> flops.json row; {} when absent or invalid
    why: str  # '' when read; NOT_RUN when absent; else why the table is invalid
    invalid: bool


# flops.json row field -> its range (udit flops writes them; the report computes with them)
FLOPS_RANGES = {
    "input_size": IMAGE_SIZE,
    "gflops": POSITIVE,
    "tolerance": NONNEG,  # optional
}


def _flops_row_problem(i: int, row) -> str | None:
    if not isinstance(row, dict) or not isinstance(row.get("model"), str):
        return f"row {i} is not an object with a model name"
    for key, allowed in FLOPS_RANGES.items():
        if key == "tolerance" and row.get(key) is None:
            continue
        why = allowed.check(row.get(key))
        if why:
            return f"row {i} ({row['model']}): {key} {why}"
    return None


def read_flops(path: Path) -> FlopsRead:
    """flops.json of `udit flops`, every row checked; an invalid table is reported (banner,
    stderr, --strict) and its GFLOPs cells read 'invalid', never 'pending'."""
    if not os.path.lexists(path):
        return FlopsRead({}, metrics_json.NOT_RUN, False)
    try:
        text = ex.read_bounded_text(
            path, what="flops table", max_bytes=metrics_json.MAX_METRICS_BYTES, error=UserError
        )
        rows = json.loads(text)
    except (UserError, OSError, ValueError) as err:
        return FlopsRead({}, f"not a udit flops table ({message(err)})", True)
    if not isinstance(rows, list):
        return FlopsRead({}, f"not a JSON list of rows but {type(rows).__name__}", True)
    for i, row in enumerate(rows):
        why = _flops_row_problem(i, row)
        if why:
            return FlopsRead({}, why, True)
    return FlopsRead({(r["model"], r["input_size"]): r for r in rows}, "", False)


def provenance_of(metrics: dict | None, node: Node, path: Path) -> dict:
    prov = (metrics or {}).get("provenance", {})
    weights = prov.get("inception_weights", {})
    return {
        "node": node.name,
        "title": node.title,
        "experiment": node.experiment,
        "step": node.step_tag,
        "cfg": node.cfg,
        "samples_N": (metrics or {}).get("protocol", {}).get("N"),
        "git_commit": prov.get("git_commit"),
        "versions": prov.get("versions", {}),
        "weights_file": weights.get("file"),
        "weights_sha256": weights.get("sha256"),
        "samples_sha256": prov.get("sha256", {}).get("samples"),
        "time_utc": prov.get("time_utc"),
        "device": prov.get("device"),
        "metrics_file": path.as_posix(),
        "uncalibrated": bool((metrics or {}).get("uncalibrated", False)),
    }


@dataclass(frozen=True)
class Collected:
    records: pd.DataFrame  # one record per (paper table, paper row, node, metric)
    provenance: list[dict]  # one per node with valid metrics
    invalid: list[dict]  # one per metrics file that exists but is invalid: node, path, file, why


def read_all_metrics(nodes: list[Node], results: Path) -> dict[str, metrics_json.MetricsRead]:
    """Node name -> its metrics file, read and checked once (metrics_json)."""
    return {node.name: metrics_json.read(node.metrics_path(results)) for node in nodes}


def invalid_files(nodes: list[Node], reads: dict, results: Path) -> list[dict]:
    return [
        {
            "node": node.name,
            "path": str(node.metrics_path(results)),
            "file": node.metrics_path(results).relative_to(results).as_posix(),
            "why": reads[node.name].why,
        }
        for node in nodes
        if reads[node.name].invalid
    ]


def collect_records(
    *, experiments: dict, released: dict, results: Path, datasets: dict | None = None
) -> Collected:
    """Long table: one record per (paper table, paper row, node, metric); one provenance dict
    per node that has valid metrics (with `scores` when no paper row references the node); and
    every invalid metrics file. Paper rows no config node covers appear with node None;
    released checkpoints go to RELEASED_TABLE."""
    results = Path(results)
    flops = read_flops(Path(paths.flops(results)))
    nodes = config_nodes(
        experiments=experiments, released=released, results=results, datasets=datasets
    )
    reads = read_all_metrics(nodes, results)
    invalid = invalid_files(nodes, reads, results)
    if flops.invalid:
        path = Path(paths.flops(results))
        file = path.relative_to(results).as_posix()
        invalid.insert(0, {"node": "flops", "path": str(path), "file": file, "why": flops.why})
    by_ref, replicas = _index_nodes(nodes)
    records, provenance = [], {}
    for table in PAPER_TABLES:
        for row, key in paper_rows(table.key):
            paper = ex.paper_row(table=table.key, row=row, key=key)
            for node in by_ref.get((table.key, row, key), [None]):
                records += _row_records(
                    table,
                    row,
                    key,
                    paper,
                    node,
                    flops=flops,
                    results=results,
                    reads=reads,
                    provenance=provenance,
                    replicas=replicas,
                )
    for node in (n for n in nodes if n.evaluation.released):
        table = PaperTable(RELEASED_TABLE.key, "", "", latent=node.latent)
        for ref in node.evaluation.paper:
            records += _row_records(
                table,
                released_row(ref),
                None,
                ref.values(),
                node,
                flops=flops,
                results=results,
                reads=reads,
                provenance=provenance,
            )
    _add_unjudged_provenance(nodes, reads, results=results, provenance=provenance)
    return Collected(
        records=pd.DataFrame.from_records(records),
        provenance=list(provenance.values()),
        invalid=invalid,
    )


def _index_nodes(nodes: list[Node]) -> tuple[dict, dict]:
    """(paper row -> the lead nodes that answer it, pool key -> a lead node's replicates and
    sampling seeds, itself first): their metrics are pooled into the lead's records."""
    by_ref: dict[tuple[str, str, str | None], list[Node]] = {}
    replicas: dict[str, list[Node]] = {}
    for node in nodes:
        refs = node.evaluation.paper if node.lead and not node.evaluation.released else []
        for ref in refs:
            by_ref.setdefault((ref.table, ref.row, ref.key), []).append(node)
        replicas.setdefault(node.pool_key, []).append(node)
    return by_ref, replicas


def _add_unjudged_provenance(nodes: list[Node], reads: dict, *, results: Path, provenance: dict):
    """Nodes no paper record is judged on (T7's dense-conv downsampler, whose caption gives only
    GFLOPs; the replicates of a row) still get provenance, their scores and their place in the
    uncalibrated banner."""
    for node in nodes:
        if node.evaluation.paper and node.lead:
            continue  # handled with its paper rows
        metrics = reads[node.name].data
        if metrics is not None:
            scores = {m: metrics.get(m) for m in ("fid", "sfid", "is", "precision", "recall")}
            path = node.metrics_path(results).relative_to(results)
            provenance[node.name] = {**provenance_of(metrics, node, path), "scores": scores}


def paper_rows(table_key: str) -> list[tuple[str, str | None]]:
    """(row, key) pairs of a paper table in the paper's order (key for T5's iteration rows)."""
    rows = []
    for row, value in ex.paper_numbers()[table_key].items():
        if isinstance(value, dict):
            rows += [(str(row), str(k)) for k in value]
        else:
            rows.append((str(row), None))
    return rows


def _row_records(
    table: PaperTable,
    row: str,
    key: str | None,
    paper: dict,
    node: Node | None,
    *,
    flops: dict,
    results: Path,
    reads: dict,
    provenance: dict,
    replicas: dict | None = None,
) -> list[dict]:
    """The records of one paper row answered by `node` (or by nothing), one per metric."""
    base, metrics = _node_base(table, row, key, node, results=results, reads=reads,
                               provenance=provenance)  # fmt: skip
    group = (replicas or {}).get(node.pool_key, []) if node else []
    out = []
    for metric in METRICS:
        reproduced, tol, note = None, TOLERANCES[metric], base["note"]
        invalid, spread = base["invalid"], None
        draws = draw_values(group, reads, metric) if metric != "gflops" else {}
        replicates = {k: sum(v) / len(v) for k, v in draws.items()}
        if node is not None and metric == "gflops":
            reproduced, tol, note = _gflops_cell(node, table, flops)
            invalid = flops.invalid
        elif metrics is not None:
            reproduced, spread = _pooled(metrics, metric, draws)
        record = _judged(metric, paper.get(metric), reproduced, spread, base=base, tol=tol,
                         samples=(metrics or {}).get("protocol", {}).get("N"), node=node,
                         invalid=invalid)  # fmt: skip
        out.append(
            {
                **record,
                "note": note,
                "fid_infinity": (metrics or {}).get("fid_infinity"),
                "replicates": replicates,  # replicate -> value, for paired claims (claims.py)
            }
        )
    return out


def _node_base(table, row, key, node, *, results: Path, reads: dict, provenance: dict):
    """(the fields every record of this row and node shares, the node's metrics or None)."""
    base = {
        "table": table.key,
        "row": row + (f" @ {key}" if key else ""),
        "experiment": None,
        "node": None,
        "step": None,
        "cfg": None,
        "uncalibrated": False,
        "invalid": False,  # the file its value comes from exists but is invalid
        "note": "not in this config",
    }
    if node is None:
        return base, None
    read = reads[node.name]
    base.update(
        experiment=node.experiment,
        node=node.name,
        step=node.step_tag,
        cfg=node.cfg,
        invalid=read.invalid,
        note=f"invalid metrics file: {read.why}" if read.invalid else read.why,
    )
    if read.data is not None:
        prov = provenance_of(read.data, node, node.metrics_path(results).relative_to(results))
        provenance.setdefault(node.name, prov)
        base["uncalibrated"] = prov["uncalibrated"]
    return base, read.data


def _pooled(metrics: dict, metric: str, draws: dict) -> tuple[float, dict | None]:
    """(value, interval) of a metric from replicate -> its sampling seeds' values. K >= 2
    replicates: the mean of their per-run means (each over its sampling seeds) with the t
    interval over runs, which holds both lotteries. One run with M >= 2 sampling seeds: their
    mean and t interval (the generation lottery alone). Else the node's own value and its
    bootstrap interval."""
    runs = [sum(v) / len(v) for v in draws.values()]
    seeds = min((len(v) for v in draws.values()), default=1)
    if len(runs) >= 2:
        return sum(runs) / len(runs), _clipped(metric, seeds_interval(runs), sampling_seeds=seeds)
    if seeds >= 2:
        (values,) = draws.values()
        interval = _clipped(metric, seeds_interval(values), runs=1, sampling_seeds=seeds)
        return sum(values) / seeds, interval
    # metrics_json checked it is a finite number
    return float(metrics[metric]), metrics_json.interval(metrics, metric)


def _clipped(metric: str, interval: dict, **extra) -> dict:
    """A t interval within the metric's range (udit.metrics.RANGES), with `extra` fields."""
    low, high = clip_interval(metric, interval["low"], interval["high"])
    return {**interval, "low": low, "high": high, **extra}


def _judged(metric, p, reproduced, spread, *, base, tol, samples, node, invalid) -> dict:
    """The record's number, interval and verdict (and what the verdict rests on)."""
    judged = verdict(metric, p, reproduced, uncalibrated=base["uncalibrated"], tol=tol,
                     interval=spread, samples=samples)  # fmt: skip
    status = "not in config" if node is None else judged.status
    if status == "pending" and invalid:
        status = "invalid"  # it ran, but its numbers cannot be believed: not pending
    diff = None if p is None or reproduced is None else reproduced - p
    return {
        **base,
        "metric": metric,
        "paper": p,
        "reproduced": reproduced,
        "low": None if spread is None else float(spread["low"]),
        "high": None if spread is None else float(spread["high"]),
        "level": None if spread is None else float(spread["level"]),
        "diff": diff,
        "rel_diff": None if diff is None or not p else diff / abs(p),
        "status": status,
        "basis": judged.basis if status == judged.status else "",
        "invalid": invalid,
        "tolerance": tol.describe(),
        "runs": 1 if spread is None else int(spread.get("runs", 1)),
    }


def draw_values(group: list, reads: dict, metric: str) -> dict[int, list[float]]:
    """Replicate index -> the metric of each of its sampling seeds with a valid metrics file."""
    values: dict[int, list[float]] = {}
    for n in group:
        data = reads[n.name].data
        if data is not None and data.get(metric) is not None:
            values.setdefault(n.replicate, []).append(float(data[metric]))
    return values


def _gflops_cell(node: Node, table: PaperTable, flops: FlopsRead):
    """(reproduced GFLOPs or None, tolerance, note) of a node from flops.json."""
    if flops.invalid:
        return None, TOLERANCES["gflops"], f"invalid flops table: {flops.why}"
    frow = flops.rows.get((node.model, table.latent))
    if frow is None:
        note = "flops table not run yet" if not flops.rows else f"{node.model} not in flops.json"
        return None, TOLERANCES["gflops"], note
    note = ""
    if node.shrunk:
        note = "fvcore count of the paper-size architecture (this run trained a shrunk variant)"
    return float(frow["gflops"]), gflops_tolerance(node.model, frow), note


def summary(records: pd.DataFrame) -> dict[str, int]:
    """How many paper numbers (with a paper value) are in each status."""
    judged = records[~records["status"].isin(UNJUDGED)] if len(records) else records
    counts = judged["status"].value_counts().to_dict() if len(judged) else {}
    return {s: int(counts.get(s, 0)) for s in STATUSES if s not in UNJUDGED} | {
        "total": len(judged)
    }


def shown_tables(records: pd.DataFrame) -> list[PaperTable]:
    """The always-shown tables plus T10/T6 when the config has a node for them, and the
    released checkpoints once one has metrics."""
    with_nodes = set(records.loc[records["node"].notna(), "table"]) if len(records) else set()
    shown = [t for t in PAPER_TABLES if t.key in ALWAYS_SHOWN or t.key in with_nodes]
    return shown + ([RELEASED_TABLE] if RELEASED_TABLE.key in with_nodes else [])


def is_invalid(rec) -> bool:
    """Whether a record's value is missing because the file it comes from (its metrics file,
    or flops.json for GFLOPs) is invalid."""
    return bool(rec.invalid)  # an invalid file gives no number, so the cell is empty


def missing_text(rec) -> str:
    """What a cell without a number says: 'invalid' (the file is broken), 'pending' (its node
    has not run) or '' (a paper-only row: node NaN)."""
    if not isinstance(rec.node, str):
        return ""
    return "invalid" if is_invalid(rec) else "pending"


def fmt(value, metric: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:.3f}" if metric in ("precision", "recall") else f"{value:.2f}"


def interval_text(rec) -> str:
    """'[16.50, 17.30]': the reproduction's interval, '' where it has none."""
    if pd.isna(rec.low) or pd.isna(rec.high):
        return ""
    return f"[{fmt(rec.low, rec.metric)}, {fmt(rec.high, rec.metric)}]"


def reproduced_text(rec) -> str:
    """A reproduced cell: '16.90 [16.50, 17.30]', 'pending', 'invalid' or ''."""
    value = fmt(rec.reproduced, rec.metric)
    if not value:
        return missing_text(rec)
    spread = interval_text(rec)
    return f"{value} {spread}" if spread else value


def infinity_text(group: pd.DataFrame) -> str:
    """FID at N = infinity of a line's node, '' where absent (null at smoke scale)."""
    values = group["fid_infinity"].dropna() if "fid_infinity" in group else []
    return f"{float(values.iloc[0]):.2f}" if len(values) else ""


def wide_table(records: pd.DataFrame, table_key: str) -> pd.DataFrame:
    """The paper's layout: one line per (row, run), columns (metric, paper | reproduced | diff).
    Pending cells read 'pending', never 0."""
    sub = records[records["table"] == table_key]
    lines = []
    for (row, node), group in sub.groupby(["row", "node"], sort=False, dropna=False):
        line = {("", "row"): row, ("", "run"): node if isinstance(node, str) else "not in config"}
        for rec in group.itertuples():
            label = METRIC_LABELS[rec.metric]
            reproduced = reproduced_text(rec)
            if rec.status == "uncalibrated":
                reproduced += " (uncalibrated)"
            line[(label, "paper")] = fmt(rec.paper, rec.metric) or "-"
            line[(label, "reproduced")] = reproduced
            line[(label, "diff")] = (
                "" if rec.diff is None or pd.isna(rec.diff) else f"{rec.diff:+.3g}"
            )
            line[(label, "verdict")] = rec.status if rec.status in VERDICTS else ""
        line[("FID-infinity", "reproduced")] = infinity_text(group)
        lines.append(line)
    frame = pd.DataFrame(lines)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def write_tables(records: pd.DataFrame, *, out_dir: Path, write) -> list[str]:
    """tables/{key}.csv and .html per shown paper table, plus records.csv (the long form);
    `write(path, text)` writes atomically. Returns the file names written."""
    out_dir = Path(out_dir)
    names = []
    for table in shown_tables(records):
        frame = wide_table(records, table.key)
        write(out_dir / f"{table.key}.csv", frame.to_csv(index=False))
        write(out_dir / f"{table.key}.html", frame.to_html(index=False, na_rep="", border=0))
        names += [f"{table.key}.csv", f"{table.key}.html"]
    write(out_dir / "records.csv", records.to_csv(index=False))
    return names + ["records.csv"]
