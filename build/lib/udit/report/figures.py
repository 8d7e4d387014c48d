"""The report's figures (matplotlib, PNG + SVG): paper beside reproduction.

Paper and reproduction get separate panels, never one shared axis: a smoke run's numbers
(stand-in Inception, toy models) live on another scale and must not be read as paper points.
A figure with no reproduced data yet shows a "pending" panel instead of failing.
"""

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report runs in batch jobs
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

DPI = 110
PAPER_COLOR, REPRO_COLOR, WARN_COLOR = "#1f77b4", "#d62728", "#b00020"
ITER_UNITS = {"K": 1_000, "M": 1_000_000}  # T5 row keys: '200K', '1M', '7M'
UNCALIBRATED_NOTE = "UNCALIBRATED Inception: not paper numbers"


def save(fig, out_dir: Path, name: str) -> str:
    """name.png and name.svg in out_dir; returns the PNG's file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(out_dir / f"{name}.{ext}", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return f"{name}.png"


def pending(ax, what: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"pending\n({what})",
        ha="center",
        va="center",
        fontsize=12,
        color="gray",
        transform=ax.transAxes,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def repro_title(ax, title: str, uncalibrated: bool) -> None:
    ax.set_title(
        f"{title}\n{UNCALIBRATED_NOTE}" if uncalibrated else title,
        color=WARN_COLOR if uncalibrated else "black",
        fontsize=10,
    )


def _iterations(key: str) -> int:
    match = re.fullmatch(r"(\d+)([KM])", key)
    if not match:
        raise ValueError(f"not an iteration key: {key!r}")
    return int(match.group(1)) * ITER_UNITS[match.group(2)]


def _pivot(records: pd.DataFrame, table: str) -> pd.DataFrame:
    """One line per (row, node) of a table: row, node, uncalibrated, paper_<metric>, <metric>."""
    lines = []
    sub = records[records["table"] == table]
    for (row, node), group in sub.groupby(["row", "node"], sort=False, dropna=False):
        line = {
            "row": row,
            "node": node if isinstance(node, str) else None,
            "uncalibrated": bool(group["uncalibrated"].any()),
        }
        for rec in group.itertuples():
            line[f"paper_{rec.metric}"], line[rec.metric] = rec.paper, rec.reproduced
        lines.append(line)
    return pd.DataFrame(lines)


def plain_log_ticks(axis) -> None:
    """Log axis labelled 6, 20, 100 instead of 6x10^0 (minor labels off: they collide)."""
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _marker(row: str) -> tuple[str, int]:
    """U-DiT star, DiT circle, another architecture (Table 3) triangle; marker size."""
    if row.startswith("U-DiT"):
        return "*", 90
    return ("o", 40) if row.startswith("DiT") else ("^", 50)


def reproduced_points(records: pd.DataFrame) -> pd.DataFrame:
    """The reproduced (GFLOPs, FID) points: each evaluated Table 2 or Table 3 node once."""
    both = pd.concat([_pivot(records, "main_400k_T2"), _pivot(records, "other_architectures_T3")])
    if not len(both):
        return both
    return both[both["fid"].notna() & both["gflops"].notna()].drop_duplicates("node")


def fid_vs_gflops(records: pd.DataFrame, out_dir: Path) -> str:
    """The headline figure: FID-50K vs GFLOPs at 400K (T2, with T3's other architectures),
    paper | reproduction."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    t2 = _pivot(records, "main_400k_T2")
    t3 = _pivot(records, "other_architectures_T3")
    paper = t2.drop_duplicates("row") if len(t2) else t2
    if len(t3):  # T3 repeats DiT-XL/2 and U-DiT-B/L from T2: add only the other architectures
        paper = pd.concat([paper, t3[t3["row"].map(_marker).str[0] == "^"].drop_duplicates("row")])
    for _, r in paper.iterrows():
        if pd.notna(r.get("paper_fid")) and pd.notna(r.get("paper_gflops")):
            marker, size = _marker(r["row"])
            cited = r["row"].endswith("(dit-paper)")  # DiT's own number: hollow, unlabelled
            left.scatter(
                r["paper_gflops"],
                r["paper_fid"],
                marker=marker,
                s=size,
                facecolors="none" if cited else PAPER_COLOR,
                edgecolors=PAPER_COLOR,
            )
            if not cited:
                other = marker == "^"  # T3 points crowd DiT-L/2 and XL/2: label them left
                left.annotate(
                    r["row"].replace(" (replicated)", "").split(" (")[0],
                    (r["paper_gflops"], r["paper_fid"]),
                    fontsize=7,
                    xytext=(-4, -9) if other else (4, 3),
                    ha="right" if other else "left",
                    textcoords="offset points",
                )
    left.set(
        xscale="log",
        xlabel="GFLOPs (paper)",
        ylabel="FID-50K",
        title="Paper (Tables 2, 3; hollow: DiT paper; triangles: T3)",
    )
    plain_log_ticks(left.xaxis)
    done = reproduced_points(records)
    if len(done):
        for _, r in done.iterrows():
            marker, size = _marker(r["row"])
            right.scatter(r["gflops"], r["fid"], marker=marker, s=size, color=REPRO_COLOR)
            right.annotate(
                r["node"].split("/")[0],
                (r["gflops"], r["fid"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        right.set(xscale="log", xlabel="GFLOPs (fvcore, paper-size architecture)", ylabel="FID")
        plain_log_ticks(right.xaxis)
        repro_title(right, "Reproduction (Table 2 and 3 runs)", bool(done["uncalibrated"].any()))
    else:
        pending(right, "no Table 2 or 3 run evaluated yet")
        right.set_title("Reproduction (Table 2 and 3 runs)")
    return save(fig, out_dir, "fid_vs_gflops")


def fid_vs_iterations(
    records: pd.DataFrame, milestones: dict[str, list[int]], out_dir: Path
) -> str:
    """FID vs training iterations: paper T5 curves | each reproduced run over its milestones
    (dotted lines). Only cfg 1.0 nodes; a run needs two evaluated milestones for a curve."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    t5 = records[(records["table"] == "longer_training_T5") & (records["metric"] == "fid")]
    for model, group in (
        t5.drop_duplicates("row")
        .assign(
            model=lambda d: d["row"].str.split(" @ ").str[0],
            it=lambda d: d["row"].str.split(" @ ").str[1].map(_iterations),
        )
        .groupby("model", sort=False)
    ):
        group = group.sort_values("it")
        left.plot(group["it"], group["paper"], marker="o", label=model)
    left.set(xscale="log", xlabel="training iterations", ylabel="FID-50K", title="Paper (Table 5)")
    left.xaxis.set_major_formatter(ticker.EngFormatter())
    left.xaxis.set_minor_formatter(ticker.NullFormatter())
    if len(t5):
        left.legend(fontsize=8)

    fid = records[
        (records["metric"] == "fid") & records["reproduced"].notna() & (records["cfg"] == 1.0)
    ]
    fid = fid.drop_duplicates("node")
    curves = 0
    for experiment, group in fid.groupby("experiment", sort=False):
        if experiment not in milestones or len(group) < 2:  # released checkpoints have no steps
            continue
        steps = group["step"].astype(int)
        order = steps.argsort()
        line = right.plot(
            steps.iloc[order], group["reproduced"].iloc[order], marker="o", label=experiment
        )[0]
        for m in milestones[experiment]:
            right.axvline(m, color=line.get_color(), linestyle=":", linewidth=0.8)
        curves += 1
    if curves:
        right.set(xlabel="training iterations (this run)", ylabel="FID")
        right.legend(fontsize=8)
        repro_title(right, "Reproduction (dotted: milestones)", bool(fid["uncalibrated"].any()))
    else:
        pending(right, "no run with two evaluated milestones yet")
        right.set_title("Reproduction")
    return save(fig, out_dir, "fid_vs_iterations")


def ablation_ladder(records: pd.DataFrame, out_dir: Path) -> str:
    """Table 9 as horizontal bars of FID: paper | reproduction (pending rungs labelled)."""
    t9 = _pivot(records, "ablation_T9")
    rows = list(dict.fromkeys(t9["row"])) if len(t9) else []
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 0.45 * max(len(rows), 4) + 1.5), sharey=True
    )
    if not rows:
        pending(left, "no Table 9 rows")
        pending(right, "no Table 9 rows")
        return save(fig, out_dir, "ablation_ladder")
    first = t9.drop_duplicates("row").set_index("row").loc[rows]
    ys = range(len(rows))
    left.barh(ys, first["paper_fid"], color=PAPER_COLOR)
    left.set(yticks=list(ys), yticklabels=rows, xlabel="FID-50K", title="Paper (Table 9)")
    left.invert_yaxis()
    if first["fid"].notna().any():
        right.barh(
            ys,
            first["fid"].fillna(0),
            color=REPRO_COLOR,
            hatch="//" if first["uncalibrated"].any() else None,
        )
        for y, value in zip(ys, first["fid"]):
            if pd.isna(value):
                right.text(0, y, " pending", va="center", color="gray")
        right.set(xlabel="FID")
        repro_title(right, "Reproduction", bool(first["uncalibrated"].any()))
    else:
        pending(right, "no ablation run evaluated yet")
        right.set_title("Reproduction")
        left.set(yticks=list(ys), yticklabels=rows)  # pending() cleared the shared y axis
    return save(fig, out_dir, "ablation_ladder")


def read_log(path: Path) -> pd.DataFrame:
    """log.jsonl of `udit train` (step, loss, mse, vb, ...); a torn last line is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a job killed mid-write leaves a partial line
    frame = pd.DataFrame(rows)
    return frame if {"step", "loss"} <= set(frame.columns) else pd.DataFrame()


SHORT_LOG = 30  # log lines up to which each is marked


def training_loss(panels: dict[str, dict[str, Path]], out_dir: Path) -> str:
    """Training loss (mse + vb) from each run's log.jsonl: one small panel per paper table
    (title -> {run: log}), log-scaled steps, the legend beside the panel, not on the data."""
    drawn = {
        title: {eid: log for eid, path in runs.items() if len(log := read_log(path))}
        for title, runs in panels.items()
    }
    drawn = {title: runs for title, runs in drawn.items() if runs}
    if not drawn:
        fig, ax = plt.subplots(figsize=(8, 3))
        pending(ax, "no training log yet")
        ax.set_title("Training loss")
        return save(fig, out_dir, "training_loss")
    cols = min(2, len(drawn))
    rows = -(-len(drawn) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 2.6 * rows), squeeze=False)
    for ax, (title, runs) in zip(axes.flat, drawn.items()):
        for eid, log in runs.items():
            log = log[log["step"] > 0]
            # A marker where a run has few log lines: a line through one point draws nothing.
            marker = "o" if len(log) <= SHORT_LOG else None
            ax.plot(log["step"], log["loss"], label=eid, linewidth=1, marker=marker, markersize=3)
        ax.set(xscale="log", yscale="log", title=title)
        ax.xaxis.set_major_formatter(ticker.EngFormatter())  # 1, 10, 100, 1k, 100k, 1M
        left, right = ax.get_xlim()
        # Within one decade (short toy runs) only one major tick shows: label the minor ones.
        minor = ticker.EngFormatter() if right / left < 10 else ticker.NullFormatter()
        ax.xaxis.set_minor_formatter(minor)
        plain_log_ticks(ax.yaxis)
        low, high = ax.get_ylim()
        if high / low < 10:  # within one decade no major tick may show: label the minor ones
            ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel("loss (mse + vb)", fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    for ax in axes.flat[len(drawn) :]:
        ax.set_visible(False)
    fig.tight_layout(w_pad=1.0)
    return save(fig, out_dir, "training_loss")


def sample_strip(
    rows: list[tuple[str, np.ndarray, list[int] | None]], *, title: str, out_dir: Path, name: str
) -> str:
    """Samples over training (paper figs. 9-10): one row of images per milestone
    (label, (h, W, 3) uint8 strip, class labels or None), the same seeds and classes in every
    row. Labels that differ between rows are flagged in the title: not a like-for-like strip."""
    height, width = rows[0][1].shape[:2]
    row_inches = 8.0 * height / width + 0.15  # 8 inches of images per row, aspect kept
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(9.0, 0.5 + row_inches * len(rows)), squeeze=False
    )
    classes = [c for _, _, c in rows if c is not None]
    same = all(c == classes[0] for c in classes)
    for ax, (label, strip, _) in zip(axes[:, 0], rows):
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    note = f"classes {classes[0]}" if classes and same else ""
    if classes and not same:
        note = "classes DIFFER between milestones"
    fig.suptitle(
        f"{title}\n{note}" if note else title,
        fontsize=9,
        color=WARN_COLOR if (classes and not same) else "black",
    )
    return save(fig, out_dir, name)
