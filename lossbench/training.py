"""The tutorial's training loop, timed, with the evidence the report judges.

Per configuration: ``repeats`` seeded runs (every step's loss and time), the
step-1 gradient of every parameter, and the final weights, all through the one
training step (lossbench.engine). What a loss costs beside its reference is
measured apart, all losses in turn (lossbench.timing). A loss that raises or
returns a non-scalar stops the run there; a NaN or Inf loss is named at the
first step it appeared, once the run's losses are read. Either way the
configuration, repeat, epoch and step are named.
"""

import hashlib
import sys
import time

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lossbench import evidence, problems, task
from lossbench.engine import RunError, Trainer
from lossbench.files import STEP_COLUMNS


def weights_digest(model):
    """SHA-256 over every parameter's name and bytes, in state_dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _at(label, epoch, step, global_step):
    return f"{label}, epoch {epoch}, step {step} (global step {global_step})"


def run_once(make_loss, batches, device, epochs, lr, seed, label="", progress=None, member=0, dtype=torch.float32,
             precision="fp32", mode="eager", graphed=False):
    """The tutorial's loop. Returns the steps table and the weights (digests, final tensors).

    ``batches()`` yields one epoch of (B, 784) tensors on ``device``. The loss
    recorded for a step is the one computed before that step's update. Nothing
    here waits for the device between steps: the losses stay on it and each
    step is timed by the clock's marks around it (CUDA events on CUDA), all
    read once at the end.
    """
    trainer = Trainer(make_loss, device, lr, seed, member, dtype, precision, mode, graphed)
    start = weights_digest(trainer.model)
    clock = Clock(device)
    where, values, marks = [], [], []
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for step, x in enumerate(batches(), 1):  # x: (B, 784), input and target
            where.append((epoch, step))
            at = _at(label, epoch, step, len(where))
            marks.append(clock.mark())
            values.append(trainer.step(x, at))  # scalar, on the device
            marks.append(clock.mark())
            if progress is not None:
                progress.update()
    seconds = clock.elapsed(marks)[::2]  # (start, end) of each step; waits for the device once
    losses = torch.stack(values).double().cpu().numpy()  # (steps,): exactly the values, whatever their float dtype
    total = time.perf_counter() - t_start
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:  # the first step whose loss is NaN or Inf, named as if it had stopped there
        i = int(bad[0])
        raise RunError(problems.not_finite(losses[i]), _at(label, *where[i], i + 1))
    steps = pd.DataFrame({"epoch": [e for e, _ in where], "step": [s for _, s in where],
                          "global_step": np.arange(1, len(where) + 1), "loss": losses, "seconds": seconds})
    weights = {k: v.detach().cpu().numpy() for k, v in trainer.model.state_dict().items()}
    return steps, {"weights_start": start, "weights_end": weights_digest(trainer.model), "total_seconds": total,
                   "weights": weights, "dtypes": trainer.dtypes, "numpy_calls": trainer.numpy_calls}


def first_step_gradients(make_loss, batches, device, seed, member=0, precision="fp32", mode="eager"):
    """Every parameter's gradient after step 1's backward, from the seeded initial weights.

    A parameter that no gradient reaches gets zeros (the detached control).
    """
    trainer = Trainer(make_loss, device, 1e-3, seed, member, precision=precision, mode=mode)  # no step is taken: the learning rate plays no part
    return trainer.gradients(next(iter(batches())), "step-1 gradients")  # the first batch, (B, 784)


class Clock:
    """Phase timer: CUDA events on CUDA (device time), perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.method = "cuda events" if self.cuda else "perf_counter"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def elapsed(self, marks):
        """Seconds between consecutive marks."""
        if self.cuda:
            marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]


def step_stats(seconds, warmup):
    kept = np.asarray(seconds)[warmup:]
    return {"median": float(np.median(kept)), "p90": float(np.percentile(kept, 90))}


def compile_stats():
    """What torch.compile did in this process so far: graph breaks (count and reasons) and graphs compiled."""
    from torch._dynamo.utils import counters

    reasons = {str(k): int(v) for k, v in counters["graph_break"].items()}
    return {"graph_breaks": sum(reasons.values()), "reasons": reasons,
            "graphs": int(counters["stats"]["unique_graphs"])}


def train_config(spec, device, train, root, label, members=0, precision="fp32", mode="eager"):
    """All repeats of one configuration and the gradient evidence; for a reference, its envelope.

    Returns (steps, run, tensors): tensors holds ``grads`` (step 1) and ``weights`` (final, repeat 1),
    and with ``members`` (a reference's) ``envelope``: each member's losses, one column per member, and the
    same run in float64 (column ``fp64``: a diagnostic, the decision is the members'), and
    ``envelope_gradients``: per parameter, the members' largest step-1 gradient difference.
    """
    batches, per_epoch = task.batches(train.loader, root, device, train.batch_size)
    n_steps = train.epochs * per_epoch
    tables, repeats = [], []
    if mode == "compiled":  # this configuration's compilations only
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    with tqdm(total=n_steps * (train.repeats + members + bool(members)), desc=label, file=sys.stderr, mininterval=1) as bar:
        for r in range(1, train.repeats + 1):
            steps, info = run_once(spec.make, batches, device, train.epochs, train.lr,
                                   train.seed, f"{label} repeat {r}", bar, precision=precision, mode=mode)
            weights = info.pop("weights")
            dtypes = info.pop("dtypes")  # the same in every repeat
            numpy_calls = info.pop("numpy_calls")
            info["step_seconds"] = step_stats(steps["seconds"], train.warmup_steps)
            repeats.append(info)
            tables.append(steps.assign(repeat=r))
            if r == 1:
                final = weights
                seconds = steps["seconds"].to_numpy()
                compiled = None if mode == "eager" else {
                    **compile_stats(),
                    # the first step compiles: its time beyond a step's, kept out of the step statistics
                    "seconds": float(seconds[0] - np.median(seconds[1:])) if seconds.size > 1 else None}
        ensemble, t0 = {}, time.perf_counter()
        for m in range(1, members + 1):  # the reference's own rounding noise: the same run, nudged by one ulp
            member, _ = run_once(spec.make, batches, device, train.epochs, train.lr, train.seed,
                                 f"{label} noise member {m}", bar, member=m, precision=precision, mode=mode)
            ensemble[f"member_{m}"] = member["loss"].to_numpy()
        noise_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        if members:  # the same run in float64: how far float32 rounding carried the reference (a diagnostic)
            oracle, _ = run_once(spec.make, batches, device, train.epochs, train.lr, train.seed,
                                 f"{label} in float64", bar, dtype=torch.float64)
            ensemble["fp64"] = oracle["loss"].to_numpy()
        fp64_seconds = time.perf_counter() - t1
    grads = first_step_gradients(spec.make, batches, device, train.seed, precision=precision, mode=mode)
    if compiled:  # graphs compiled after the first run: recompilations (a new model, the gradients' pass)
        compiled["recompilations"] = compile_stats()["graphs"] - compiled["graphs"]
    first = repeats[0]
    run = {
        "status": "ran",
        "updates_weights": spec.updates_weights,
        "dtypes": dtypes,  # what the loss received, computed in and returned, observed at its first step
        "numpy_calls": numpy_calls,  # NumPy calls in the loss's second step, as they ran (0: none ran)
        "compile": compiled,
        "weights_start": first["weights_start"],
        "weights_end": first["weights_end"],
        "weights_changed": first["weights_start"] != first["weights_end"],
        "steps": n_steps,
        "warmup_steps_excluded": train.warmup_steps,
        "repeats": repeats,
    }
    tensors = {"grads": grads, "weights": final}
    if members:
        run["envelope"] = {"members": members, "seconds": noise_seconds, "fp64_seconds": fp64_seconds,
                           "perturbation": "every initial weight moved by one ulp, up or down at random (signs "
                           "seeded by the member's number)"}
        tensors["envelope"] = pd.DataFrame({"global_step": np.arange(1, n_steps + 1), **ensemble})
        tensors["envelope_gradients"] = evidence.gradient_noise(
            [first_step_gradients(spec.make, batches, device, train.seed, member=m, precision=precision, mode=mode)
             for m in range(1, members + 1)],
            grads)
    return pd.concat(tables)[STEP_COLUMNS], run, tensors
