"""The report's one reader of the metrics JSON that `udit evaluate` writes
(results/{experiment}/metrics/{step}-cfg{cfg}.json).

A file is valid when it is a JSON object holding every metric the report shows as a finite
number in its range, `uncalibrated` as true or false, and objects where the provenance table
looks inside. Anything else is *invalid*: never a number in a table, never "pending" (which
means "not run yet"), and always reported with the file and the reason.

    read(path)   -> MetricsRead: the data, or why there is none (missing / invalid)
    interval(data, metric) -> the metric's bootstrap interval, or None (old file, --bootstrap 0)
    load(path)   -> dict, or InvalidMetricsError naming the file, the field and the value
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from udit import experiments as ex
from udit.argtypes import FINITE, NONNEG, PROBABILITY, Range
from udit.errors import BadValueError, UserError, message

# The metrics the report shows, and the range each can take (ADM evaluator definitions).
METRIC_RANGES = {
    "fid": Range("float", 0),  # a squared Frechet distance
    "sfid": Range("float", 0),
    "is": Range("float", 1),  # exp of a mean KL divergence, so at least 1
    "precision": PROBABILITY,
    "recall": PROBABILITY,
}
# Written by udit evaluate but not shown in the tables: checked when present. KID's unbiased
# estimate can be slightly negative, so only finiteness.
OPTIONAL_RANGES = {"kid": FINITE, "kid_std": NONNEG}
# Fields the provenance table reads inside: each must be an object when present.
OBJECT_FIELDS = (
    "protocol",
    "provenance",
    "provenance.inception_weights",
    "provenance.versions",
    "provenance.sha256",
)
# Uncertainty (udit.metrics.intervals): optional, as files from before it and `--bootstrap 0`
# have none; when present an interval must be usable, or a verdict would rest on garbage.
INFINITY_FIELDS = ("fid_infinity", "is_infinity")  # a number, or null where the fit failed
MAX_METRICS_BYTES = 10_000_000  # udit evaluate writes about 5 KB
NOT_RUN = "not run yet"


class InvalidMetricsError(BadValueError):
    """A metrics file that exists but cannot be believed; the message names file and field."""


@dataclass(frozen=True)
class MetricsRead:
    data: dict | None  # the checked document, or None
    why: str  # '' with data; NOT_RUN when the file is absent; else why it is invalid
    invalid: bool


def _field(data: dict, dotted: str):
    """The value at 'a.b' in nested objects, or None where a level is absent."""
    value = data
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def problem(data) -> str | None:
    """Why a parsed metrics document is invalid, or None. Names the field and the value."""
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    missing = [key for key in METRIC_RANGES if key not in data]
    if missing:
        return f"missing {', '.join(missing)} (udit evaluate writes {', '.join(METRIC_RANGES)})"
    ranges = {**METRIC_RANGES, **{k: r for k, r in OPTIONAL_RANGES.items() if k in data}}
    wrong = [f"{key} {why}" for key, allowed in ranges.items() if (why := allowed.check(data[key]))]
    if wrong:
        return "; ".join(wrong)
    if not isinstance(data.get("uncalibrated"), bool):
        return f"uncalibrated must be true or false, got {data.get('uncalibrated')!r}"
    for dotted in OBJECT_FIELDS:
        value = _field(data, dotted)
        if value is not None and not isinstance(value, dict):
            return f"{dotted} must be an object, got {type(value).__name__}"
    return _uncertainty_problem(data)


def _uncertainty_problem(data: dict) -> str | None:
    for key in INFINITY_FIELDS:
        if data.get(key) is not None and (why := FINITE.check(data[key])):
            return f"{key} {why}"
    spread = data.get("intervals")
    if spread is None:
        return None
    if not isinstance(spread, dict):
        return f"intervals must be an object, got {type(spread).__name__}"
    for metric, entry in spread.items():
        if not isinstance(entry, dict):
            return f"intervals.{metric} must be an object, got {type(entry).__name__}"
        if "low" not in entry and "high" not in entry:
            continue  # {"reason": why not}: no interval for this metric, said so
        for key in ("low", "high"):
            if why := FINITE.check(entry.get(key)):
                return f"intervals.{metric}.{key} {why}"
        if entry["low"] > entry["high"]:
            return f"intervals.{metric}: low {entry['low']} above high {entry['high']}"
        level = entry.get("level", 0.95)
        if why := Range("float", 0, 1, True, True).check(level):
            return f"intervals.{metric}.level {why}"
    return None


def interval(data: dict | None, metric: str) -> dict | None:
    """The checked bootstrap interval of `metric` ({low, high, level, resamples, ...}), or None
    where the file has none for it (an old file, `--bootstrap 0`, or a reason instead)."""
    entry = ((data or {}).get("intervals") or {}).get(metric)
    if not isinstance(entry, dict) or "low" not in entry:
        return None
    return {"level": 0.95, **entry}


def load(path: str | Path) -> dict:
    """The checked metrics document at `path`; InvalidMetricsError (or a ConfigError-style
    UserError for an unreadable file) naming the file otherwise."""
    text = ex.read_bounded_text(
        path, what="metrics file", max_bytes=MAX_METRICS_BYTES, error=InvalidMetricsError
    )
    try:
        data = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer of over 4300 digits
        raise InvalidMetricsError(f"{path}: not JSON ({err})") from None
    why = problem(data)
    if why:
        raise InvalidMetricsError(f"{path}: {why}")
    return data


def read(path: str | Path) -> MetricsRead:
    """Absent (not even a broken link): not run yet. Present: checked; `why` of an invalid
    file is the reason without the path (the caller shows the path beside it)."""
    path = Path(path)
    if not os.path.lexists(path):
        return MetricsRead(None, NOT_RUN, False)
    try:
        return MetricsRead(load(path), "", False)
    except (UserError, OSError) as err:
        why = message(err)
        prefix = f"{path}: "
        return MetricsRead(None, why.removeprefix(prefix), True)
