"""The two paper tables that hold no sample metrics: Table 8 (U-DiT configurations and
parameter counts, from the model registry) and Table 11 (training speed, from the JSON that
`benchmarks/speed.py --json` writes), each beside the paper's.

The speed JSON (schema 1) as read here: top-level `quick` (tiny sizes on CPU: marked not
comparable), `device`, `device_name`, `gpus`, `torch`, `created`, and `train`, one row per
(model, path) with `model` (registry name), `path`, `precision`, `batch_per_gpu`,
`input_size` and `steps_per_s_8x256` (images/s normalised to 8 GPUs at global batch 256).
"""

import functools
import os
from pathlib import Path

import pandas as pd
import torch

from udit.errors import UserError
from udit.flops import param_count
from udit.models import get_spec
from udit.paper import paper_numbers
from udit.plan import load_speed_json, positive_number

PARAMS_TOLERANCE = 0.005  # T8 params: the registry must land within 0.5% of the paper
# Table 11 rows (paper_numbers.yaml training_speed_T11) -> the registry model measured.
SPEED_ROWS = {
    "DiT-XL/2 (replicated)": "DiT-XL/2",
    "U-DiT-B vanilla": "U-DiT-B vanilla",
    "U-DiT-L vanilla": "U-DiT-L vanilla",
    "U-DiT-L all modifications": "U-DiT-L",
}
QUICK_NOTE = "quick (tiny sizes, CPU): not comparable"


@functools.cache  # the registry is fixed once imported; a build takes 0.5-2 s on CPU
def deployed_params(name: str) -> int:
    """Deployed parameters of a registry model. Built on the meta device: no weights are
    allocated (U-DiT-L has 810M), and the re-parameterised FFNs count at their fused size
    (udit.flops.param_count), the paper's convention."""
    with torch.device("meta"):
        return param_count(get_spec(name).build())


def registry_config(name: str) -> dict:
    """Channels, heads, depths and deployed parameters (M) of a registry model."""
    cfg = get_spec(name).extra.get("config", {})
    return {
        "channels": cfg.get("hidden_size"),
        "heads": cfg.get("num_heads"),
        "depths": list(cfg.get("depths", [])),
        "params_m": deployed_params(name) / 1e6,
    }


def configurations_t8() -> list[dict]:
    """One line per U-DiT of paper Table 8: paper vs registry, params judged within 0.5%."""
    lines = []
    for name, paper in paper_numbers()["configurations_T8"].items():
        ours = registry_config(name)
        rel = ours["params_m"] / paper["params_m"] - 1
        lines.append(
            {
                "model": name,
                "paper": {k: paper[k] for k in ("channels", "heads", "depths", "params_m")},
                "registry": ours,
                "params_rel": rel,
                "same_layout": all(ours[k] == paper[k] for k in ("channels", "heads", "depths")),
                "status": "reproduced" if abs(rel) <= PARAMS_TOLERANCE else "disagrees",
            }
        )
    return lines


def read_speed(path: Path) -> dict | None:
    """The speed JSON, or None when it has not been measured (an optional input). A file
    that is there is checked by the plan's reader (schema 1, every rate positive and finite)
    and for the one number this table shows; anything else is an error naming the file, the
    field and the fix."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    data = load_speed_json(path)
    if not isinstance(data.get("train"), list):
        raise UserError(f"speed JSON {path}: no 'train' list; re-run `snakemake speed`")
    for i, row in enumerate(data["train"]):
        value = row.get("steps_per_s_8x256")
        if value is not None and not positive_number(value):
            raise UserError(
                f"speed JSON {path}: train[{i}].steps_per_s_8x256 is {value!r}, expected a "
                "positive finite number; re-run `snakemake speed`"
            )
    return data


def speed_t11(speed: dict | None) -> dict:
    """Table 11: per paper row, the paper's steps/s (8x A100) and every measured path of the
    same model (steps_per_s_8x256: normalised to 8 GPUs at global batch 256)."""
    paper = paper_numbers()["training_speed_T11"]
    train = (speed or {}).get("train", [])
    lines = []
    for row, model in SPEED_ROWS.items():
        measured = [r for r in train if r.get("model") == model]
        runs = [
            {
                "path": r.get("path", "?"),
                "precision": r.get("precision", "?"),
                "batch_per_gpu": r.get("batch_per_gpu"),
                "input_size": r.get("input_size"),
                "steps_per_s": r.get("steps_per_s_8x256"),
                "ratio": None
                if r.get("steps_per_s_8x256") is None
                else r["steps_per_s_8x256"] / paper[row],
            }
            for r in measured
        ]
        lines.append({"row": row, "model": model, "paper": paper[row], "runs": runs})
    quick = bool((speed or {}).get("quick", False))
    return {
        "measured": speed is not None,
        "quick": quick,
        "note": QUICK_NOTE if quick else "",
        "device": (speed or {}).get("device"),
        "device_name": (speed or {}).get("device_name"),
        "gpus": (speed or {}).get("gpus"),
        "torch": (speed or {}).get("torch"),
        "created": (speed or {}).get("created"),
        "paper_hardware": paper_numbers()["training_settings"]["hardware"],
        "lines": lines,
    }


def t8_frame(lines: list[dict]) -> pd.DataFrame:
    """Table 8 as CSV columns: paper_* beside the registry's."""
    return pd.DataFrame(
        {
            "model": ln["model"],
            **{f"paper_{k}": _cell(v) for k, v in ln["paper"].items()},
            **{k: _cell(v) for k, v in ln["registry"].items()},
            "params_rel": ln["params_rel"],
            "status": ln["status"],
        }
        for ln in lines
    )


def t11_frame(table: dict) -> pd.DataFrame:
    """Table 11 as CSV: one line per (paper row, measured path); unmeasured rows kept."""
    keys = ("path", "precision", "batch_per_gpu", "input_size", "steps_per_s", "ratio")
    return pd.DataFrame(
        {
            "row": ln["row"],
            "model": ln["model"],
            "paper_steps_per_s_8xA100": ln["paper"],
            **{k: run.get(k) for k in keys},
            "device_name": table["device_name"],
            "gpus": table["gpus"],
            "quick": table["quick"],
        }
        for ln in table["lines"]
        for run in ln["runs"] or [{}]
    )


def _cell(value):
    return "-".join(map(str, value)) if isinstance(value, list) else value
