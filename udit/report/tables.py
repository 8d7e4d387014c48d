"""Paper tables beside the reproduction: one long record per (paper row, run, metric), and one
wide table per paper table (CSV + HTML), laid out like the paper.

The report reads only what the jobs wrote (paths in udit/paths.py):
    results/flops/flops.json                          fvcore GFLOPs rows (udit flops)
    results/{experiment}/metrics/{step}-cfg{cfg}.json  metrics + provenance (udit evaluate)
    results/{released}/metrics/released-cfg{cfg}.json  the same, of an official checkpoint
Paper numbers come from udit/paper/paper_numbers.yaml through the config's references
(udit.experiments.PaperRef); a node whose metrics file does not exist yet is "pending".
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from udit import experiments as ex
from udit import paths
from udit.report.tolerances import STATUSES, TOLERANCES, UNJUDGED, gflops_tolerance, judge

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
        Node(eid, exp.title or exp.model, exp.model, bool(exp.model_kw), e)
        for eid, exp in experiments.items()
        for e in exp.evaluations
    ]
    for rid, rel in released.items():
        size = (datasets or {}).get(rel.dataset, {}).get("image_size", 256)
        latent = LATENT_512 if size >= 512 else LATENT_256
        for e in rel.evaluations:
            title = f"{rel.model} {size}px (released checkpoint)"
            node = Node(rid, title, rel.model, bool(rel.model_kw), e, latent=latent)
            if node.metrics_path(results).is_file():
                nodes.append(node)
    return nodes


def read_metrics(path: Path) -> tuple[dict | None, str]:
    """(metrics dict, '') or (None, why): missing -> pending; unreadable -> pending with
    the reason."""
    if not path.is_file():
        return None, "not run yet"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"unreadable metrics file: {err}"
    if not isinstance(data, dict):
        return None, "metrics file is not a JSON object"
    return data, ""


def read_flops(path: Path) -> dict[tuple[str, int], dict]:
    """(model, input_size) -> flops.json row; {} when the FLOPs node has not run."""
    if not Path(path).is_file():
        return {}
    try:
        rows = json.loads(Path(path).read_text())
        return {(r["model"], int(r["input_size"])): r for r in rows}
    except (OSError, ValueError, TypeError, KeyError) as err:  # a half-written or foreign file
        print(
            f"[report] {path}: not a udit flops table ({err!r}); GFLOPs shown as pending",
            file=sys.stderr,
        )
        return {}


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


def collect_records(
    *, experiments: dict, released: dict, results: Path, datasets: dict | None = None
) -> tuple[pd.DataFrame, list[dict]]:
    """Long table: one record per (paper table, paper row, node, metric); plus one provenance
    dict per node that has metrics (with `scores` when no paper row references the node).
    Paper rows no config node covers appear with node None; released checkpoints go to
    RELEASED_TABLE."""
    results = Path(results)
    flops = read_flops(Path(paths.flops(results)))
    nodes = config_nodes(
        experiments=experiments, released=released, results=results, datasets=datasets
    )
    by_ref: dict[tuple[str, str, str | None], list[Node]] = {}
    for node in nodes:
        for ref in [] if node.evaluation.released else node.evaluation.paper:
            by_ref.setdefault((ref.table, ref.row, ref.key), []).append(node)

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
                    provenance=provenance,
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
                provenance=provenance,
            )
    # Nodes no paper row references (T7's dense-conv downsampler: its caption gives only
    # GFLOPs) still get provenance, their scores and their place in the uncalibrated banner.
    for node in nodes:
        if node.evaluation.paper:
            continue  # handled above, with its paper rows
        path = node.metrics_path(results)
        metrics, _ = read_metrics(path)
        if metrics is not None:
            scores = {m: metrics.get(m) for m in ("fid", "sfid", "is", "precision", "recall")}
            provenance[node.name] = {
                **provenance_of(metrics, node, path.relative_to(results)),
                "scores": scores,
            }
    return pd.DataFrame.from_records(records), list(provenance.values())


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
    provenance: dict,
) -> list[dict]:
    base = {
        "table": table.key,
        "row": row + (f" @ {key}" if key else ""),
        "experiment": None,
        "node": None,
        "step": None,
        "cfg": None,
        "uncalibrated": False,
        "note": "not in this config",
    }
    metrics, why = (None, "")
    if node is not None:
        path = node.metrics_path(results)
        metrics, why = read_metrics(path)
        base.update(
            experiment=node.experiment,
            node=node.name,
            step=node.step_tag,
            cfg=node.cfg,
            note=why,
        )
        if metrics is not None:
            prov = provenance_of(metrics, node, path.relative_to(results))
            provenance.setdefault(node.name, prov)
            base["uncalibrated"] = prov["uncalibrated"]
    out = []
    for metric in METRICS:
        reproduced, tol, note = None, TOLERANCES[metric], base["note"]
        if node is not None and metric == "gflops":
            frow = flops.get((node.model, table.latent))
            reproduced = None if frow is None else float(frow["gflops"])
            tol = gflops_tolerance(node.model, frow) if frow is not None else tol
            note = (
                "flops table not run yet"
                if not flops
                else ("" if frow else f"{node.model} not in flops.json")
            )
            if node.shrunk and frow is not None:
                note = (
                    "fvcore count of the paper-size architecture "
                    "(this run trained a shrunk variant)"
                )
        elif metrics is not None:
            value = metrics.get(metric)
            reproduced = None if value is None else float(value)
        p = paper.get(metric)
        status = (
            "not in config"
            if node is None
            else judge(metric, p, reproduced, uncalibrated=base["uncalibrated"], tol=tol)
        )
        diff = None if p is None or reproduced is None else reproduced - p
        out.append(
            {
                **base,
                "metric": metric,
                "paper": p,
                "reproduced": reproduced,
                "diff": diff,
                "rel_diff": None if diff is None or not p else diff / abs(p),
                "status": status,
                "note": note,
                "tolerance": tol.describe(),
            }
        )
    return out


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


def fmt(value, metric: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f"{value:.3f}" if metric in ("precision", "recall") else f"{value:.2f}"


def wide_table(records: pd.DataFrame, table_key: str) -> pd.DataFrame:
    """The paper's layout: one line per (row, run), columns (metric, paper | reproduced | diff).
    Pending cells read 'pending', never 0."""
    sub = records[records["table"] == table_key]
    lines = []
    for (row, node), group in sub.groupby(["row", "node"], sort=False, dropna=False):
        line = {("", "row"): row, ("", "run"): node if isinstance(node, str) else "not in config"}
        for rec in group.itertuples():
            label = METRIC_LABELS[rec.metric]
            # a paper-only row (node NaN: truthy) is blank, not pending
            pending = "pending" if isinstance(rec.node, str) else ""
            reproduced = fmt(rec.reproduced, rec.metric) or pending
            if rec.status == "uncalibrated":
                reproduced += " (uncalibrated)"
            line[(label, "paper")] = fmt(rec.paper, rec.metric) or "-"
            line[(label, "reproduced")] = reproduced
            line[(label, "diff")] = (
                "" if rec.diff is None or pd.isna(rec.diff) else f"{rec.diff:+.3g}"
            )
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
