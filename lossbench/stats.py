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
    logs = np.log(np.asarray(values) / np.asarray(reference))
    mean = float(np.mean(logs))
    if len(logs) < 2:
        return math.exp(mean), float("nan"), float("nan")
    half = t975(len(logs) - 1) * float(np.std(logs, ddof=1)) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def mean_ci(values):
    """Mean and 95% interval of a few per-round figures."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = t975(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def label(ratio, lo, hi, min_effect):
    """`no measurable difference` unless the interval excludes 1 and the effect passes ``min_effect``."""
    if math.isnan(lo) or lo <= 1 <= hi or max(ratio, 1 / ratio) < min_effect:
        return "no measurable difference"
    return "slower" if ratio > 1 else "faster"
