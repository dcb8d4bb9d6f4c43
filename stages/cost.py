"""Stage `cost`: every loss of one device timed in turn, in one process (lossbench.timing), setting by
setting (precision and mode), so that a candidate is timed beside its reference.

Writes ``<out>``: per configuration, per round, the median step seconds and the median
seconds of each phase, with the params of the measurement and the platform. The
report turns them into each candidate's cost ratio to its reference, with a 95%
interval. A device that cannot run here gets a file that says so.
"""

import argparse
import time
from pathlib import Path

from lossbench.config import load_params
from lossbench.errors import run
from lossbench.io import read_json, write_json
from lossbench.machines import host_name


def cost_stage(device, params_path, root, check_dir, out):
    checks = [read_json(p) for p in sorted(Path(check_dir).glob("*.json"))]  # <key>.json, this device's
    record = {"device": device, "platform": checks[0]["platform"], "host": host_name()}
    runnable = [c for c in checks if c["available"] and not c["unsupported"]]
    if not runnable:  # before importing torch (~3 s): nothing to time on this host
        write_json(out, {**record, "status": "unavailable",
                         "reason": next((c["reason"] for c in checks if not c["available"]), "nothing runs here")})
        return
    from lossbench import determinism, task
    from lossbench.losses import resolve
    from lossbench.timing import interleaved

    flags = determinism.set_determinism()  # before anything touches CUDA
    params = load_params(params_path)
    train, cost = params.train, params.cost
    record |= {"params": cost.model_dump(), "determinism": flags}
    batches, _ = task.batches(train.loader, root, device, train.batch_size)
    timed, loop = {}, 0.0
    for precision, mode in sorted({(c["precision"], c["mode"]) for c in runnable}):  # beside its reference
        group = {c["config"]: c for c in runnable if (c["precision"], c["mode"]) == (precision, mode)}
        specs = {k: resolve(c["loss"], c["fn"], c["args"]) for k, c in group.items()}
        t0 = time.perf_counter()
        timed |= interleaved(specs, batches, device, precision, mode, train.lr, train.seed, cost.rounds, cost.steps,
                             cost.warmup_steps)
        loop += time.perf_counter() - t0  # warm-up included: `make bench` weighs the pipeline against its loops
    write_json(out, {**record, "status": "ran", "loop_seconds": loop, "configurations": timed})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", required=True)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", required=True, help="root holding MNIST/raw")
    p.add_argument("--check", required=True, help="the check stage's folder of this device: <key>.json")
    p.add_argument("--out", required=True, help="the device's cost file")
    args = p.parse_args(argv)
    run(lambda: cost_stage(args.device, args.params, args.data, args.check, args.out), "cost")


if __name__ == "__main__":
    main()
