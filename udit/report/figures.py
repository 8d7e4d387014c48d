"""The report's figures (matplotlib, PNG + SVG): paper beside reproduction.

Paper and reproduction get separate panels, never one shared axis: a smoke run's numbers
(stand-in Inception, toy models) live on another scale and must not be read as paper points.
A figure with no reproduced data yet shows a "pending" panel instead of failing.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report runs in batch jobs
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

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
    """One line per (row, node) of a table: row, node, uncalibrated, paper_<metric>, <metric>,
    and the reproduction's interval <metric>_low, <metric>_high, <metric>_runs (training seeds
    pooled; NaN / 1 where it has none)."""
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
            line[f"{rec.metric}_low"] = _number(getattr(rec, "low", None))
            line[f"{rec.metric}_high"] = _number(getattr(rec, "high", None))
            line[f"{rec.metric}_runs"] = _runs(getattr(rec, "runs", 1))
            line[f"{rec.metric}_level"] = _number(getattr(rec, "level", None))
        lines.append(line)
    return pd.DataFrame(lines)


def _number(value) -> float:
    return float("nan") if value is None or pd.isna(value) else float(value)


def _runs(value) -> int:
    return 1 if value is None or pd.isna(value) else int(value)


# --- error bars: the reproduction's interval (udit.report.tolerances' verdicts rest on it) ---
BAR_NOTE = "bootstrap over samples, or t over K training seeds where K > 1"
SEEDS_NOTE = "hollow, n=K: mean of K training seeds"
# the bars' legend under the panel (below its x label): never over a point, a bar or a label
BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "fontsize": 7, "frameon": False}


@dataclass(frozen=True)
class Drawn:
    """A saved figure: its PNG's file name and the matplotlib Figure (closed, but its artists
    can still be read: the error bars drawn, for the tests)."""

    name: str
    figure: Figure


def has_interval(frame: pd.DataFrame, metric: str = "fid") -> pd.Series:
    """Rows whose reproduced value has an interval (both ends)."""
    if f"{metric}_low" not in frame:
        return pd.Series(False, index=frame.index)
    cols = frame[[metric, f"{metric}_low", f"{metric}_high"]]
    return cols.notna().all(axis=1)


def bar_lengths(values, lows, highs) -> np.ndarray:
    """(2, n) asymmetric error bar lengths: value - low below, high - value above, each clipped
    at 0 as the verdicts' intervals are (a bootstrap FID interval can sit above its point
    value: the bar then starts at the point)."""
    values, lows, highs = (np.asarray(a, dtype=float) for a in (values, lows, highs))
    return np.vstack([np.clip(values - lows, 0, None), np.clip(highs - values, 0, None)])


def bar_label(levels) -> str:
    """Legend text of the bars: '95% interval: bootstrap over samples, or t over ...'."""
    levels = sorted({float(v) for v in levels if pd.notna(v)}) or [0.95]
    return f"{'/'.join(f'{v:.0%}' for v in levels)} interval: {BAR_NOTE}"


def draw_bars(ax, frame: pd.DataFrame, x: str, y: str, *, color, horizontal=False):
    """Error bars at the rows of `frame` with an interval of `y` (the value drawn on the value
    axis; `x` the position axis), labelled for the legend; None when no row has one."""
    shown = frame[has_interval(frame, y)]
    if not len(shown):
        return None
    lengths = bar_lengths(shown[y], shown[f"{y}_low"], shown[f"{y}_high"])
    where, value = shown[x].to_numpy(dtype=float), shown[y].to_numpy(dtype=float)
    return ax.errorbar(
        value if horizontal else where,
        where if horizontal else value,
        **{"xerr" if horizontal else "yerr": lengths},
        fmt="none",
        ecolor=color,
        elinewidth=1.2,
        capsize=3,
        zorder=2,
        label=bar_label(shown.get(f"{y}_level", [])),
    )


def seeds_text(runs: int) -> str:
    """' n=3' for a value pooled over 3 training seeds, '' for one run."""
    return f" n={runs}" if runs > 1 else ""


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


def fid_vs_gflops(records: pd.DataFrame, out_dir: Path) -> Drawn:
    """The headline figure: FID-50K vs GFLOPs at 400K (T2, with T3's other architectures),
    paper | reproduction (with its intervals as error bars)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _paper_gflops_panel(left, records)
    done = reproduced_points(records)
    if len(done):
        _repro_gflops_panel(right, done)
    else:
        pending(right, "no Table 2 or 3 run evaluated yet")
        right.set_title("Reproduction (Table 2 and 3 runs)")
    return Drawn(save(fig, out_dir, "fid_vs_gflops"), fig)


def _paper_gflops_panel(left, records: pd.DataFrame) -> None:
    """Paper points of T2 and T3's other architectures: one run each, no interval reported."""
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


def _repro_gflops_panel(right, done: pd.DataFrame) -> None:
    """Reproduced points: error bars where an interval exists, hollow + n=K where seeds pooled."""
    bars = draw_bars(right, done, "gflops", "fid", color=REPRO_COLOR)
    for _, r in done.iterrows():
        marker, size = _marker(r["row"])
        seeds = _runs(r.get("fid_runs"))
        right.scatter(
            r["gflops"],
            r["fid"],
            marker=marker,
            s=size,
            facecolors="white" if seeds > 1 else REPRO_COLOR,
            edgecolors=REPRO_COLOR,
            zorder=3,
        )
        right.annotate(
            r["node"].split("/")[0] + seeds_text(seeds),
            (r["gflops"], r["fid"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    right.set(xscale="log", xlabel="GFLOPs (fvcore, paper-size architecture)", ylabel="FID")
    plain_log_ticks(right.xaxis)
    _bars_legend(right, bars, seeds=bool((done.get("fid_runs", pd.Series(dtype=int)) > 1).any()))
    repro_title(right, "Reproduction (Table 2 and 3 runs)", bool(done["uncalibrated"].any()))


def _hollow_handle(color, marker: str = "o") -> Line2D:
    return Line2D(
        [], [], marker=marker, linestyle="none", markerfacecolor="white", markeredgecolor=color
    )


def _bars_legend(ax, bars, *, seeds: bool, marker: str = "o") -> None:
    """A legend saying what the bars are (and what hollow markers are), when there are any."""
    handles, labels = ([bars], [bars.get_label()]) if bars is not None else ([], [])
    if seeds:
        handles, labels = handles + [_hollow_handle(REPRO_COLOR, marker)], labels + [SEEDS_NOTE]
    if handles:
        ax.legend(handles=handles, labels=labels, **BELOW)


def fid_vs_iterations(
    records: pd.DataFrame, milestones: dict[str, list[int]], out_dir: Path
) -> Drawn:
    """FID vs training iterations: paper T5 curves | each reproduced run over its milestones
    (dotted lines), error bars where a point has an interval. Only cfg 1.0 nodes; a run needs
    two evaluated milestones for a curve."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _paper_iterations_panel(left, records)
    fid = records[
        (records["metric"] == "fid") & records["reproduced"].notna() & (records["cfg"] == 1.0)
    ]
    fid = fid.drop_duplicates("node")
    curves, seeds = 0, False
    for experiment, group in fid.groupby("experiment", sort=False):
        if experiment not in milestones or len(group) < 2:  # released checkpoints have no steps
            continue
        seeds = (
            _repro_curve(right, experiment, _curve_points(group), milestones[experiment]) or seeds
        )
        curves += 1
    if curves:
        right.set(xlabel="training iterations (this run)", ylabel="FID")
        handles, labels = right.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # every curve's bars share one label: one entry
        if seeds:
            unique[SEEDS_NOTE] = _hollow_handle("gray")
        right.legend(handles=list(unique.values()), labels=list(unique), **BELOW)
        repro_title(right, "Reproduction (dotted: milestones)", bool(fid["uncalibrated"].any()))
    else:
        pending(right, "no run with two evaluated milestones yet")
        right.set_title("Reproduction")
    return Drawn(save(fig, out_dir, "fid_vs_iterations"), fig)


def _repro_curve(ax, experiment: str, points: pd.DataFrame, milestones: list[int]) -> bool:
    """One run's FID over its milestones: line, error bars, hollow n=K points where seeds are
    pooled, dotted milestone lines. Returns whether a point pools seeds."""
    color = ax.plot(points["step"], points["fid"], marker="o", label=experiment)[0].get_color()
    draw_bars(ax, points, "step", "fid", color=color)
    pooled = points[points["fid_runs"] > 1]
    ax.scatter(pooled["step"], pooled["fid"], facecolors="white", edgecolors=color, zorder=3)
    for _, p in pooled.iterrows():
        ax.annotate(
            f"n={int(p['fid_runs'])}",
            (p["step"], p["fid"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    for m in milestones:
        ax.axvline(m, color=color, linestyle=":", linewidth=0.8)
    return bool(len(pooled))


def _paper_iterations_panel(left, records: pd.DataFrame) -> None:
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


def _curve_points(group: pd.DataFrame) -> pd.DataFrame:
    """One run's evaluated milestones in step order: step, fid and its interval columns."""

    def column(name: str) -> np.ndarray:
        values = group.get(name, pd.Series(np.nan, index=group.index))
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)

    points = pd.DataFrame(
        {
            "step": group["step"].astype(int).to_numpy(),
            "fid": column("reproduced"),
            "fid_low": column("low"),
            "fid_high": column("high"),
            "fid_level": column("level"),
            "fid_runs": [_runs(v) for v in column("runs")],
        }
    )
    return points.sort_values("step").reset_index(drop=True)


def ablation_ladder(records: pd.DataFrame, out_dir: Path) -> Drawn:
    """Table 9 as horizontal bars of FID: paper | reproduction (pending rungs labelled), the
    reproduction's intervals as error bars."""
    t9 = _pivot(records, "ablation_T9")
    rows = list(dict.fromkeys(t9["row"])) if len(t9) else []
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 0.45 * max(len(rows), 4) + 1.5), sharey=True
    )
    if not rows:
        pending(left, "no Table 9 rows")
        pending(right, "no Table 9 rows")
        return Drawn(save(fig, out_dir, "ablation_ladder"), fig)
    first = t9.drop_duplicates("row").set_index("row").loc[rows]
    ys = range(len(rows))
    left.barh(ys, first["paper_fid"], color=PAPER_COLOR)
    left.set(yticks=list(ys), yticklabels=rows, xlabel="FID-50K", title="Paper (Table 9)")
    left.invert_yaxis()
    if first["fid"].notna().any():
        _repro_ladder_panel(right, first.reset_index().assign(y=list(ys)))
    else:
        pending(right, "no ablation run evaluated yet")
        right.set_title("Reproduction")
        left.set(yticks=list(ys), yticklabels=rows)  # pending() cleared the shared y axis
    return Drawn(save(fig, out_dir, "ablation_ladder"), fig)


def _repro_ladder_panel(right, rungs: pd.DataFrame) -> None:
    """Reproduced rungs (y: position): bars, error bars, 'pending' and 'n=K' labels."""
    pooled = rungs["fid_runs"] > 1 if "fid_runs" in rungs else pd.Series(False, rungs.index)
    right.barh(
        rungs["y"],
        rungs["fid"].fillna(0),
        color=[("white" if p else REPRO_COLOR) for p in pooled],
        edgecolor=REPRO_COLOR,
        hatch="//" if rungs["uncalibrated"].any() else None,
    )
    bars = draw_bars(right, rungs, "y", "fid", color="black", horizontal=True)
    for _, r in rungs.iterrows():
        if pd.isna(r["fid"]):
            right.text(0, r["y"], " pending", va="center", color="gray")
        elif r.get("fid_runs", 1) > 1:
            end = r["fid_high"] if pd.notna(r.get("fid_high")) else r["fid"]
            right.text(
                max(end, r["fid"]), r["y"], f"  n={int(r['fid_runs'])}", va="center", fontsize=8
            )
    right.set(xlabel="FID")
    _bars_legend(right, bars, seeds=bool(pooled.any()), marker="s")
    repro_title(right, "Reproduction", bool(rungs["uncalibrated"].any()))


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
