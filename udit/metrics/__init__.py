"""Sample-quality metrics (FID, sFID, IS, precision, recall, KID), ADM protocol, via torch-fidelity.

inception.py  feature extractor (pool_3, logits, sFID map) registered with torch-fidelity
npz.py        memory-mapped ADM npz image batches
scores.py     every metric from features, with torch-fidelity's metric functions
reference.py  `udit build-reference`: ADM-format reference npz from an image folder
evaluate.py   `udit evaluate`: metrics JSON with protocol and provenance
provenance.py versions, hashes, official-weights check, atomic writes
"""

import math

# The values each metric can take: an interval around a value (value +- z se, or a t interval
# over seeds) is clipped to them, so a recall near 0 never gets a negative lower bound. IS is
# exp(mean KL) with KL >= 0; the unbiased KID can be negative.
RANGES = {
    "fid": (0.0, math.inf),
    "sfid": (0.0, math.inf),
    "is": (1.0, math.inf),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "kid": (-math.inf, math.inf),
}


def clip_interval(metric: str, low: float, high: float) -> tuple[float, float]:
    """(low, high) within the metric's range (unchanged for a metric without one)."""
    lo, hi = RANGES.get(metric, (-math.inf, math.inf))
    return min(max(low, lo), hi), max(min(high, hi), lo)
