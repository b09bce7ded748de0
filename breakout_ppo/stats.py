"""The two statistics every comparison of agents here needs, in one place (scipy does the t).

- `mean_ci`: a mean and the half-width of its Student-t confidence interval (seeds, episodes);
- `welch`: Welch's t test and interval for the difference of two means, with no assumption that
  the two spreads are equal (a better agent's returns usually spread more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (nan from fewer than 2 values)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan
    quantile = stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1)
    return mean, float(quantile * values.std(ddof=1) / math.sqrt(len(values)))


@dataclass(frozen=True)
class Welch:
    """Welch's test of mean(x) - mean(y)."""

    difference: float
    half_width: float
    """Of the confidence interval of the difference (0 when neither sample varies)."""
    df: float
    """Welch-Satterthwaite degrees of freedom (inf when neither sample varies)."""
    t: float
    p: float
    """Two-sided; nan where the test cannot be made (fewer than 2 values a side, or no spread)."""
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.difference - self.half_width

    @property
    def high(self) -> float:
        return self.difference + self.half_width

    @property
    def significant(self) -> bool:
        """The interval excludes 0: at this confidence, the means differ."""
        return self.low > 0 or self.high < 0


def welch(x, y, confidence: float = 0.95) -> Welch:
    """Welch's t test and interval for mean(x) - mean(y) from two independent samples."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    difference = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return Welch(difference, math.nan, math.nan, math.nan, math.nan, confidence)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)  # squared standard errors of the means
    if vx + vy == 0:
        return Welch(difference, 0.0, math.inf, math.nan, math.nan, confidence)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    t = difference / math.sqrt(vx + vy)
    half_width = stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(vx + vy)
    return Welch(difference, float(half_width), float(df), float(t), float(2 * stats.t.sf(abs(t), df)), confidence)
