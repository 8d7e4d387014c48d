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


def fid_vs_gflops(records: pd.DataFrame, out_dir: Path) -> str:
    """The headline figure: FID-50K vs GFLOPs at 400K (T2), paper | reproduction."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    t2 = _pivot(records, "main_400k_T2")
    paper = t2.drop_duplicates("row") if len(t2) else t2
    for _, r in paper.iterrows():
        if pd.notna(r.get("paper_fid")) and pd.notna(r.get("paper_gflops")):
            marker = "*" if r["row"].startswith("U-DiT") else "o"
            cited = r["row"].endswith("(dit-paper)")  # DiT's own number: hollow, unlabelled
            left.scatter(
                r["paper_gflops"],
                r["paper_fid"],
                marker=marker,
                s=90 if marker == "*" else 40,
                facecolors="none" if cited else PAPER_COLOR,
                edgecolors=PAPER_COLOR,
            )
            if not cited:
                left.annotate(
                    r["row"].replace(" (replicated)", ""),
                    (r["paper_gflops"], r["paper_fid"]),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
    left.set(
        xscale="log",
        xlabel="GFLOPs (paper)",
        ylabel="FID-50K",
        title="Paper (Table 2; hollow: DiT paper)",
    )
    plain_log_ticks(left.xaxis)
    done = t2[t2["fid"].notna() & t2["gflops"].notna()].drop_duplicates("node") if len(t2) else t2
    if len(done):
        for _, r in done.iterrows():
            marker = "*" if r["row"].startswith("U-DiT") else "o"
            right.scatter(
                r["gflops"],
                r["fid"],
                marker=marker,
                s=90 if marker == "*" else 40,
                color=REPRO_COLOR,
            )
            right.annotate(
                r["node"].split("/")[0],
                (r["gflops"], r["fid"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        right.set(xscale="log", xlabel="GFLOPs (fvcore, paper-size architecture)", ylabel="FID")
        plain_log_ticks(right.xaxis)
        repro_title(right, "Reproduction (Table 2 runs)", bool(done["uncalibrated"].any()))
    else:
        pending(right, "no Table 2 run evaluated yet")
        right.set_title("Reproduction (Table 2 runs)")
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


def training_loss(logs: dict[str, Path], out_dir: Path) -> str:
    """Training loss (mse + vb) per run from each run's log.jsonl."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    drawn = 0
    for experiment, path in logs.items():
        log = read_log(path)
        if len(log):
            ax.plot(log["step"], log["loss"], label=experiment, linewidth=1)
            drawn += 1
    if drawn:
        ax.set(
            xlabel="training step", ylabel="loss (mse + vb)", yscale="log", title="Training loss"
        )
        ax.legend(fontsize=7, ncol=2)
    else:
        pending(ax, "no training log yet")
        ax.set_title("Training loss")
    return save(fig, out_dir, "training_loss")
