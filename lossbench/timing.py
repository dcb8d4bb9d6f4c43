"""What a loss costs, measured so that machine drift cancels.

Every loss of a device is timed in turn in one process, round after round (as
asv and pyperf do): each round runs ``steps`` training steps of every loss, the
losses taking turns a step at a time in an order rotated every step, after
``warmup`` untimed steps per loss. A candidate's cost is its per-round median
step time over its reference's in the same round; the ratio's 95% confidence interval comes from the spread of those
per-round ratios (a t-interval on their logarithms), so drift between rounds
cancels and only what differs within a round counts.
"""

import time

import numpy as np
import torch

from lossbench import determinism
from lossbench.errors import debugging, raised
from lossbench.model import AutoEncoder
from lossbench.io import PHASES
from lossbench.training import Clock, RunError

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
    """Per loss, per round: the median step seconds and the median seconds of each phase.

    Within a round the losses take turns one step at a time, the order rotated every step: a
    block of steps per loss let the machine drift between blocks (per-round ratios spread 7-12%
    here, intervals up to 4.4% wide); turn by turn they spread 5-8% (intervals 1.1-1.8%).
    """
    runners = {name: Runner(spec, batches, device, lr, seed) for name, spec in specs.items()}
    for name, r in runners.items():  # first steps (allocator, thread pool, caches) stay out of the figures
        _run(r, warmup, False, f"{name}-{device} timing, warm-up")
    names = list(runners)
    out = {name: [] for name in names}
    for k in range(rounds):
        rows = {name: [] for name in names}
        for s in range(steps):
            j = (k * steps + s) % len(names)
            for name in names[j:] + names[:j]:  # rotated: no loss always runs first
                rows[name].append(_run(runners[name], 1, True, f"{name}-{device} timing, round {k + 1}")[0])
        for name in names:
            out[name].append(np.median(rows[name], axis=0))
    return {name: {"step_seconds": [float(row[0]) for row in rows],
                   "phase_seconds": {p: [float(row[1 + i]) for row in rows] for i, p in enumerate(PHASES)}}
            for name, rows in out.items()}
