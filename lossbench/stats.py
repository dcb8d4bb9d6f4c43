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


def _t_interval(x):
    """Mean and 95% half-width of a few figures (half-width NaN for fewer than two)."""
    if x.size < 2:
        return float(np.mean(x)), float("nan")
    return float(np.mean(x)), t975(x.size - 1) * float(np.std(x, ddof=1)) / math.sqrt(x.size)


def mean_ci(values):
    """Geometric mean of a few positive per-round figures (times, ratios) and its 95% interval: a t-interval
    on their logarithms, so it stays positive however noisy the rounds (an arithmetic one went below 0 ms
    on a loaded machine)."""
    v = np.asarray(values, dtype=float)
    if np.all(v > 0):
        mean, half = _t_interval(np.log(v))
        return math.exp(mean), math.exp(mean - half), math.exp(mean + half)
    mean, half = _t_interval(v)  # a phase too short for its clock: no logarithm; arithmetic, floored at 0
    return mean, max(0.0, mean - half), mean + half


def spread(values, reference):
    """The per-round ratios' standard deviation as a share of their mean: how noisy the measurement was."""
    r = np.asarray(values, dtype=float) / np.asarray(reference, dtype=float)
    return float(np.std(r, ddof=1) / np.mean(r)) if r.size > 1 else float("nan")


NOISY = 0.10  # pyperf warns from a standard deviation of 10% of the mean


def label(ratio, lo, hi, min_effect, noise=None):
    """`no measurable difference` while the interval holds 1; `below the <min_effect> effect floor` when it excludes
    1 by less than ``min_effect``; else slower or faster. A measurement whose per-round ratios spread by
    ``NOISY`` or more (``noise``: lossbench.stats.spread) says so."""
    if math.isnan(lo) or lo <= 1 <= hi:
        text = "no measurable difference"
    elif max(ratio, 1 / ratio) < min_effect:
        text = f"below the {min_effect:g} effect floor"
    else:
        text = "slower" if ratio > 1 else "faster"
    if noise is not None and noise >= NOISY:
        text += f" (noisy: rounds spread {100 * noise:.0f}%; re-run on a quieter machine)"
    return text
