"""What a loss costs, measured so that machine drift cancels.

Every loss of a device is timed in turn in one process, round after round (as
asv and pyperf do): each round runs ``steps`` training steps of every loss, in
an order rotated each round, after ``warmup`` untimed steps per loss. A
candidate's cost is its per-round median step time over its reference's in the
same round; the ratio's 95% confidence interval comes from the spread of those
per-round ratios (a t-interval on their logarithms), so drift between rounds
cancels and only what differs within a round counts.
"""

import math
import time

import numpy as np
import torch

from lossbench import determinism
from lossbench.errors import debugging, raised
from lossbench.model import AutoEncoder
from lossbench.training import PHASES, Clock, RunError

# two-sided 95% Student t quantiles by degrees of freedom (rounds - 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}


def t975(df):
    return T975[max(k for k in T975 if k <= df)] if df < 30 else 1.96 + 2.5 / df  # within 0.2% past 30


class Runner:
    """One loss's training state: seeded model, Adam, and an endless walk through the batches."""

    def __init__(self, spec, batches, device, lr, seed):
        determinism.seed_everything(seed)
        self.model = AutoEncoder().to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.loss_fn = spec.make()
        self.batches, self.it = batches, iter(batches())
        self.clock = Clock(device)

    def next_batch(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.batches())
            return next(self.it)

    def steps(self, n, timed=True):
        """``n`` steps; per step its wall seconds and its phases (forward, loss, backward, step)."""
        rows = []
        for _ in range(n):
            x = self.next_batch()  # (B, 784), input and target
            t0 = time.perf_counter()
            m = [self.clock.mark()]
            out = self.model(x)
            m.append(self.clock.mark())
            loss = self.loss_fn(out, x)
            m.append(self.clock.mark())
            self.opt.zero_grad()
            loss.backward()
            m.append(self.clock.mark())
            self.opt.step()
            m.append(self.clock.mark())
            loss.item()  # waits for the device: the step is timed whole
            if timed:
                rows.append((time.perf_counter() - t0, *self.clock.elapsed(m)))
        return np.array(rows)  # (n, 1 + len(PHASES))


def _run(runner, n, timed, where):
    try:
        return runner.steps(n, timed)
    except Exception as e:  # the loss under test is user code: say which and where
        if debugging():
            raise
        raise RunError(f"{where}: the loss raised {raised(e)}") from e


def interleaved(specs, batches, device, lr, seed, rounds, steps, warmup):
    """Per loss, per round: the median step seconds and the median seconds of each phase."""
    runners = {name: Runner(spec, batches, device, lr, seed) for name, spec in specs.items()}
    for name, r in runners.items():  # first steps (allocator, thread pool, caches) stay out of the figures
        _run(r, warmup, False, f"{name}-{device} timing, warm-up")
    names = list(runners)
    out = {name: [] for name in names}
    for k in range(rounds):
        for name in names[k % len(names):] + names[: k % len(names)]:  # rotated: no loss always runs first
            rows = _run(runners[name], steps, True, f"{name}-{device} timing, round {k + 1}")
            out[name].append(np.median(rows, axis=0))
    return {name: {"step_seconds": [float(row[0]) for row in rows],
                   "phase_seconds": {p: [float(row[1 + i]) for row in rows] for i, p in enumerate(PHASES)}}
            for name, rows in out.items()}


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
