"""Power planning: how many training runs per arm a claim's comparison needs for a decisive
answer at the effect size the paper reports (`udit plan --claims`). Pure functions, no I/O.

A comparison "row A has a lower metric than row B" with paper values a < b has the relative
effect
    d = (b - a) / ((a + b) / 2)
Each arm is the mean of n independent training runs whose metric has relative noise (coefficient
of variation over training seeds) s. With the unpaired normal approximation (both arms' standard
deviation s x the mean of a and b, independent runs, known variance), the difference of the two
means has relative standard deviation s x sqrt(2 / n), and a two-sided test at level alpha
detects d with probability `power` when
    n = ceil(2 x (z_{1-alpha/2} + z_{power})^2 x (s / d)^2),  at least 1
(alpha 0.05, power 0.8: z 1.960 + 0.842 = 2.802, so n = ceil(15.70 x (s / d)^2)). Checkpoints
of one run (T5's milestones) are treated as independent runs too: an over-estimate, as they
share their seed's noise.

When one arm is a single network that cannot be retrained (a released checkpoint), only the
other arm has n runs: the difference has relative standard deviation s x sqrt(1 + 1 / n), so
    k = (z_{1-alpha/2} + z_{power})^2 x (s / d)^2,  n = ceil(k / (1 - k)),  none when k >= 1
(no number of runs of the other arm averages away the fixed arm's own noise).

A metric with no noise (GFLOPs: fvcore counts are deterministic) needs 1 count, no replicate. A
claim with several comparisons needs the most runs any of them needs.
"""

import math
from collections.abc import Iterable
from statistics import NormalDist

ALPHA = 0.05  # two-sided test level
POWER = 0.8  # probability of a decisive answer when the paper's effect is real
DETERMINISTIC_METRICS = frozenset({"gflops"})  # fvcore counts: same number every time
_ROUNDING = 1e-9  # 2.0000000000000004 runs is 2, not 3


def relative_effect(lower: float, higher: float) -> float:
    """d = (higher - lower) / mean of the two: positive when the claimed-lower value is lower."""
    mean = (lower + higher) / 2
    if mean <= 0:
        raise ValueError(f"relative effect needs positive values, got {lower} and {higher}")
    return (higher - lower) / mean


def z_total(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_{1-alpha/2} + z_{power}: 1.960 + 0.842 = 2.802 at alpha 0.05, power 0.8."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    normal = NormalDist()
    return normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)


def _ratio(d: float, s: float) -> float:
    if d <= 0:
        raise ValueError(f"the paper's values are not in the claimed order (effect {d:+.3g})")
    if s < 0:
        raise ValueError(f"noise must be >= 0, got {s}")
    return s / d


def replicates(d: float, s: float, *, alpha: float = ALPHA, power: float = POWER) -> int:
    """Runs per arm: ceil(2 (z_{1-alpha/2} + z_{power})^2 (s / d)^2), at least 1 (see the
    module docstring). s = 0 (a deterministic metric) needs 1; d <= 0 raises ValueError."""
    n = 2 * z_total(alpha, power) ** 2 * _ratio(d, s) ** 2
    return max(1, math.ceil(n - _ROUNDING))


def replicates_one_fixed(
    d: float, s: float, *, alpha: float = ALPHA, power: float = POWER
) -> int | None:
    """Runs of the one arm that can be retrained when the other is a single fixed network:
    ceil(k / (1 - k)) with k = (z_{1-alpha/2} + z_{power})^2 (s / d)^2; None when k >= 1."""
    k = z_total(alpha, power) ** 2 * _ratio(d, s) ** 2
    if k >= 1:
        return None
    return max(1, math.ceil(k / (1 - k) - _ROUNDING))


def metric_replicates(metric: str, d: float, s: float, *, fixed_arm: bool = False) -> int | None:
    """Runs per arm for one comparison on `metric`: 1 for a deterministic metric whatever s."""
    if metric in DETERMINISTIC_METRICS:
        _ratio(d, 0.0)  # the direction must still hold on the paper's numbers
        return 1
    return replicates_one_fixed(d, s) if fixed_arm else replicates(d, s)


def claim_replicates(per_comparison: Iterable[int | None]) -> int | None:
    """A claim needs the most runs any of its comparisons needs (None: one cannot be decided)."""
    values = list(per_comparison)
    if not values:
        raise ValueError("a claim without comparisons has no replicate count")
    return None if None in values else max(values)
