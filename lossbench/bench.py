"""`make bench`: the tutorial's DataLoader loop vs the preloaded default, side by side.

Both data paths train the same configuration in one process, alternating, so
they share the machine's state; the preloaded time includes loading the
dataset onto the device. Prints the times, the ratio, and whether the losses
are bitwise identical (they must be: exit 1 otherwise).
"""

import argparse
import sys
import time

import numpy as np

from lossbench import determinism, training
from lossbench.config import load_params
from lossbench.losses import resolve


def time_loader(loader, spec, root, device, p):
    t0 = time.perf_counter()
    batches = training.make_batches(loader, root, device, p.batch_size)
    steps, _ = training.run_once(spec.make, batches, device, p.epochs, p.lr, p.seed, loader)
    return time.perf_counter() - t0, steps["loss"].to_numpy()


def bench(params, root, device, loss, rounds):
    spec = resolve(loss, loss, {})
    times = {"dataloader": [], "preloaded": []}
    losses = {}
    for r in range(rounds):
        for loader in times:
            seconds, losses[loader] = time_loader(loader, spec, root, device, params)
            times[loader].append(seconds)
            print(f"round {r + 1}: {loader:10s} {seconds:7.2f} s", file=sys.stderr)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return med, med["dataloader"] / med["preloaded"], np.array_equal(losses["dataloader"], losses["preloaded"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--loss", default="torch_mse")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)
    determinism.set_determinism()
    params = load_params(args.params).train
    med, ratio, identical = bench(params, args.data, args.device, args.loss, args.rounds)
    print(f"{args.loss} on {args.device}, {params.epochs} epochs, batch {params.batch_size}, "
          f"median of {args.rounds} round(s):")
    print(f"  dataloader (tutorial loop): {med['dataloader']:.2f} s")
    print(f"  preloaded (default):        {med['preloaded']:.2f} s")
    print(f"  speed-up: {ratio:.1f}x; losses bitwise identical: {identical}")
    if not identical:
        sys.exit("bench: the two data paths gave different losses")


if __name__ == "__main__":
    main()
