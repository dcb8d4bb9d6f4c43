"""What a loss costs, measured so that machine drift cancels.

Every loss of a device is timed in turn in one process, round after round (as
asv and pyperf do): each round runs ``steps`` training steps of every loss, the
losses taking turns a step at a time in an order rotated every step, after
``warmup`` untimed steps per loss. A candidate's cost is its per-round median
step time over its reference's in the same round; the ratio's 95% confidence interval comes from the spread of those
per-round ratios (a t-interval on their logarithms), so drift between rounds
cancels and only what differs within a round counts.
"""

import numpy as np

from lossbench.files import PHASES
from lossbench.engine import Trainer
from lossbench.training import Clock


class Runner:
    """One loss's training state (the one Trainer) and an endless walk through the batches."""

    def __init__(self, spec, batches, device, precision, mode, lr, seed, label):
        self.trainer = Trainer(spec.make, device, lr, seed, precision=precision, mode=mode)
        self.batches, self.it = batches, iter(batches())
        self.clock = Clock(device)
        self.label = label

    def next_batch(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.batches())
            return next(self.it)

    def step(self, where):
        """One step; its clock marks: before the forward and after each phase (forward, loss, backward, step)."""
        marks = []
        self.trainer.step(self.next_batch(), f"{self.label}, {where}", lambda: marks.append(self.clock.mark()))
        return marks

    def seconds(self, marks):
        """Per step of ``marks``: its whole time and each phase's (n, 1 + len(PHASES)); waits for the device once."""
        rows = np.array([self.clock.elapsed(m) for m in marks])  # (n, len(PHASES))
        return np.column_stack([rows.sum(axis=1), rows])


def interleaved(specs, batches, device, precision, mode, lr, seed, rounds, steps, warmup):
    """Per configuration (``specs``: its key -> its loss), per round: the median step seconds and the median
    seconds of each phase.

    Within a round the losses take turns one step at a time, the order rotated every step: a
    block of steps per loss let the machine drift between blocks (per-round ratios spread 7-12%
    here, intervals up to 4.4% wide); turn by turn they spread 5-8% (intervals 1.1-1.8%).
    """
    runners = {key: Runner(spec, batches, device, precision, mode, lr, seed, f"{key} timing")
               for key, spec in specs.items()}
    for r in runners.values():  # first steps (allocator, thread pool, caches) stay out of the figures
        for _ in range(warmup):
            r.step("warm-up")
    names = list(runners)
    out = {name: [] for name in names}
    for k in range(rounds):
        marks = {name: [] for name in names}
        for s in range(steps):
            j = (k * steps + s) % len(names)
            for name in names[j:] + names[:j]:  # rotated: no loss always runs first
                marks[name].append(runners[name].step(f"round {k + 1}"))
        for name in names:  # read after the round: no step waited for the device
            out[name].append(np.median(runners[name].seconds(marks[name]), axis=0))
    return {name: {"step_seconds": [float(row[0]) for row in rows],
                   "phase_seconds": {p: [float(row[1 + i]) for row in rows] for i, p in enumerate(PHASES)}}
            for name, rows in out.items()}
