"""Statistics of the cost figures: intervals and labels. No torch: the report and `make compare` use them."""

import math

import numpy as np

# two-sided 95% Student t quantiles by degrees of freedom (rounds - 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}


def t975(df):
    return T975[max(k for k in T975 if k <= df)] if df < 30 else 1.96 + 2.5 / df  # within 0.2% past 30


def ratio_ci(values, reference):
    """Mean per-round ratio values / reference (geometric) and its 95% interval."""
    return mean_ci(np.asarray(values) / np.asarray(reference))


def mean_ci(values):
    """Geometric mean of a few positive per-round figures (times, ratios) and its 95% interval: a t-interval
    on their logarithms, so it stays positive however noisy the rounds (an arithmetic one went below 0 ms
    on a loaded machine)."""
    v = np.asarray(values, dtype=float)
    if np.any(v <= 0):  # a phase too short for its clock: no logarithm; the arithmetic interval, floored at 0
        half = t975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else float("nan")
        return float(v.mean()), max(0.0, float(v.mean() - half)), float(v.mean() + half)
    logs = np.log(v)
    mean = float(np.mean(logs))
    if len(logs) < 2:
        return math.exp(mean), float("nan"), float("nan")
    half = t975(len(logs) - 1) * float(np.std(logs, ddof=1)) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def label(ratio, lo, hi, min_effect):
    """`no measurable difference` unless the interval excludes 1 and the effect passes ``min_effect``."""
    if math.isnan(lo) or lo <= 1 <= hi or max(ratio, 1 / ratio) < min_effect:
        return "no measurable difference"
    return "slower" if ratio > 1 else "faster"
