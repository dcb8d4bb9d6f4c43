"""Stage `train`: one configuration (loss x device), `train.repeats` seeded runs.

Writes ``<out>/steps.csv`` (every step's loss, for every repeat) and
``<out>/run.json`` (status, params, weight digests, wall-clock, phases,
platform). Both are written only after every run finished, through a temporary
file, so an interrupted run leaves no steps.csv that looks complete.
"""

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from stages import data, determinism, gpu
from stages.config import load_params
from stages.io import atomic_path, read_json, write_json
from stages.losses import resolve
from stages.model import AutoEncoder

class NonFiniteLoss(RuntimeError):
    pass


def weights_digest(model):
    """SHA-256 over every parameter's name and bytes, in state_dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_once(make_loss, batches, device, epochs, lr, seed, label="", progress=None):
    """The tutorial's loop. Returns the steps table and the weight digests.

    ``batches()`` yields one epoch of (B, 784) tensors on ``device``. The loss
    recorded for a step is the one computed before that step's update.
    """
    determinism.seed_everything(seed)
    model = AutoEncoder().to(device)  # built right after seeding, then moved
    start = weights_digest(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = make_loss()
    rows = []
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for step, x in enumerate(batches(), 1):  # x: (B, 784), input and target
            t0 = time.perf_counter()
            out = model(x)  # (B, 784)
            loss = loss_fn(out, x)  # scalar
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()  # waits for the device, so t1 - t0 is the whole step
            t1 = time.perf_counter()
            if not math.isfinite(value):
                raise NonFiniteLoss(
                    f"{label}: loss is {value} at epoch {epoch}, step {step} "
                    f"(global step {len(rows) + 1})"
                )
            rows.append((epoch, step, len(rows) + 1, value, t1 - t0))
            if progress is not None:
                progress.update()
    total = time.perf_counter() - t_start
    steps = pd.DataFrame(rows, columns=["epoch", "step", "global_step", "loss", "seconds"])
    return steps, {"weights_start": start, "weights_end": weights_digest(model), "total_seconds": total}


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


PHASES = ("forward", "loss", "backward", "step")
STEP_COLUMNS = ["repeat", "epoch", "step", "global_step", "loss", "seconds"]  # steps.csv


def profile_phases(make_loss, batches, device, steps, lr, seed):
    """A separate, seeded timing pass: median seconds per phase over ``steps`` steps.

    Kept apart from the measured runs so its marks never distort their totals.
    """
    determinism.seed_everything(seed)
    model = AutoEncoder().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = make_loss()
    clock = Clock(device)
    times = []
    while len(times) < steps:
        for x in batches():
            if len(times) == steps:
                break
            m = [clock.mark()]
            out = model(x)
            m.append(clock.mark())
            loss = loss_fn(out, x)
            m.append(clock.mark())
            opt.zero_grad()
            loss.backward()
            m.append(clock.mark())
            opt.step()
            m.append(clock.mark())
            times.append(clock.elapsed(m))
    med = np.median(np.array(times), axis=0)  # (len(PHASES),)
    return {"method": clock.method, "steps": steps, "median_seconds": dict(zip(PHASES, map(float, med)))}


def step_stats(seconds, warmup):
    kept = np.asarray(seconds)[warmup:]
    return {"median": float(np.median(kept)), "p90": float(np.percentile(kept, 90))}


def make_batches(loader, root, device, batch_size):
    """A function that yields one epoch of batches, for the chosen data path."""
    if loader == "preloaded":
        images = data.preload(root, device)  # (N, 784) float32 on device
        return lambda: data.preloaded_batches(images, batch_size)
    return lambda: data.dataloader_batches(root, batch_size, device)


def train_config(loss, device, train, root, label):
    """All repeats of one configuration, plus the timing pass. Returns (steps, run)."""
    spec = resolve(loss)
    batches = make_batches(train.loader, root, device, train.batch_size)
    n_steps = train.epochs * data.steps_per_epoch(len(data.mnist(root)), train.batch_size)
    tables, repeats = [], []
    with tqdm(total=n_steps * train.repeats, desc=label, file=sys.stderr, mininterval=1) as bar:
        for r in range(1, train.repeats + 1):
            steps, info = run_once(spec.make, batches, device, train.epochs, train.lr,
                                   train.seed, f"{label} repeat {r}", bar)
            info["step_seconds"] = step_stats(steps["seconds"], train.warmup_steps)
            repeats.append(info)
            tables.append(steps.assign(repeat=r))
    phases = profile_phases(spec.make, batches, device, train.profile_steps, train.lr, train.seed)
    first = repeats[0]
    run = {
        "status": "ran",
        "loss": loss,
        "device": device,
        "updates_weights": spec.updates_weights,
        "weights_start": first["weights_start"],
        "weights_end": first["weights_end"],
        "weights_changed": first["weights_start"] != first["weights_end"],
        "steps": n_steps,
        "warmup_steps_excluded": train.warmup_steps,
        "repeats": repeats,
        "phases": phases,
    }
    return pd.concat(tables)[STEP_COLUMNS], run


def write_steps(path, steps):
    # float64 repr of a float32 value round-trips it exactly
    with atomic_path(path) as tmp:
        steps.to_csv(tmp, index=False)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--loss", required=True)
    p.add_argument("--device", required=True, choices=["cpu", "cuda"])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", required=True, help="root holding MNIST/raw")
    p.add_argument("--platform", required=True, help="platform.json from the platform stage")
    p.add_argument("--out", required=True, help="run directory")
    args = p.parse_args(argv)

    flags = determinism.set_determinism()  # before anything touches CUDA
    train = load_params(args.params).train
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("steps.csv", "run.json"):
        (out / stale).unlink(missing_ok=True)
    label = f"{args.loss}-{args.device}"
    record = {
        "config": label,
        "params": train.model_dump(),
        "loader": train.loader,
        "determinism": flags,
        "platform": read_json(args.platform),
    }

    reason = gpu.unavailable_reason() if args.device == "cuda" else None
    if reason is not None:
        write_json(out / "run.json", {**record, "status": "unavailable", "reason": reason})
        if gpu.devices_required():
            sys.exit(f"{label}: device unavailable and {gpu.REQUIRE_DEVICES}=1: {reason}")
        print(f"{label}: not run: {reason}", file=sys.stderr)
        return

    try:
        steps, run = train_config(args.loss, args.device, train, args.data, label)
    except (NonFiniteLoss, ValueError) as e:
        sys.exit(f"train: {e}")
    write_steps(out / "steps.csv", steps)
    write_json(out / "run.json", {**record, **run})  # last: its presence marks a finished run


if __name__ == "__main__":
    main()
