"""Stage `train`: one configuration (loss x device x precision x mode), `train.repeats` seeded runs.

Reads the configuration's check file (the loss, its code's digests, the device,
the platform) and writes into ``<out>``: ``steps.csv`` (every step's loss, for
every repeat), ``grads.npz`` (every parameter's step-1 gradient),
``weights.npz`` (the final weights), for a reference under the envelope rule its envelope (``envelope.csv``,
each member's losses and the float64 run's; ``envelope_gradients.json``), for a candidate ``cost.json`` (its
step time beside its reference's, timed in turn here: lossbench.timing) and, last, ``run.json`` (status, params,
digests, wall-clock, phases, platform). All through temporary files, so an
interrupted or failed run leaves no steps.csv or run.json that looks complete.
"""

import argparse
import sys
import time
from pathlib import Path

from lossbench.config import load_params
from lossbench.errors import run
from lossbench.files import read_json, write_json, write_steps, write_tensors
from lossbench.machines import host_name

OUTPUTS = ("run.json", "steps.csv", "grads.npz", "weights.npz", "envelope.csv", "envelope_gradients.json", "cost.json")


def train_stage(check_path, params_path, root, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in OUTPUTS:
        (out / stale).unlink(missing_ok=True)
    try:
        _train(read_json(check_path), params_path, root, out)
    finally:
        if not any(out.iterdir()):  # it failed before writing anything: no empty run directory is left behind
            out.rmdir()


def _train(check, params_path, root, out):
    record = {
        "config": check["config"], "loss": check["loss"], "device": check["device"],
        "precision": check["precision"], "mode": check["mode"],
        "fn": check["fn"], "args": check["args"], "loss_source": check["source"], "platform": check["platform"],
        "host": host_name(),
    }
    if not check["available"]:  # before importing torch: a configuration that cannot run costs ~0.1 s, not 3
        write_json(out / "run.json", {**record, "status": "unavailable", "reason": check["reason"]})
        print(f"train: {check['config']}: not run: {check['reason']}", file=sys.stderr)
        return
    if check["unsupported"]:  # the pre-flight saw it fail under this setting: a finding, reported, not trained
        write_json(out / "run.json", {**record, "status": "unsupported", "reason": check["unsupported"]["message"],
                                      "dtypes": check["dtypes"]})
        print(f"train: {check['config']}: not trained: {check['unsupported']['message']}", file=sys.stderr)
        return
    from lossbench import determinism, problems
    from lossbench.engine import RunError
    from lossbench.losses import resolve
    from lossbench.training import train_config

    flags = determinism.set_determinism()  # before anything touches CUDA
    params = load_params(params_path)
    train = params.train
    record |= {"params": train.model_dump(exclude={"losses", "devices"}), "loader": train.loader,
               "determinism": flags}
    spec = resolve(check["loss"], check["fn"], check["args"])
    members = (check.get("envelope") or {}).get("members", 0)  # a reference's: its rounding-noise ensemble
    try:
        steps, result, tensors = train_config(spec, check["device"], train, root, check["config"], members,
                                              check["precision"], check["mode"])
    except RunError as e:
        if (check["precision"], check["mode"]) == ("fp32", "eager"):  # the tutorial's: a loss failing there is broken
            raise
        unsupported = problems.unsupported(check["precision"], check["mode"], check["device"], e.problem)
        write_json(out / "run.json", {**record, "status": "unsupported", "reason": unsupported.at(e.where),
                                      "dtypes": check["dtypes"]})
        print(f"train: {check['config']}: {unsupported.at(e.where)}", file=sys.stderr)
        return
    write_steps(out / "steps.csv", steps)
    write_tensors(out / "grads.npz", tensors["grads"])
    write_tensors(out / "weights.npz", tensors["weights"])
    if members:
        write_steps(out / "envelope.csv", tensors["envelope"])
        write_json(out / "envelope_gradients.json", tensors["envelope_gradients"])
    if check["reference"] and not check["reference"]["unsupported"]:  # its cost, beside its reference, here
        write_json(out / "cost.json", cost_beside_reference(check, spec, params, root))
    write_json(out / "run.json", {**record, **result})  # last: its presence marks a finished run


def cost_beside_reference(check, spec, params, root):
    """The candidate and its reference timed in turn, in this process (lossbench.timing): per round, each one's
    median step and phase seconds. Here rather than in a stage of its own: no second torch import per edit."""
    from lossbench import task
    from lossbench.losses import resolve
    from lossbench.timing import interleaved

    ref = check["reference"]
    train, cost = params.train, params.cost
    specs = {check["config"]: spec, ref["config"]: resolve(ref["loss"], ref["fn"], ref["args"])}
    batches, _ = task.batches(train.loader, root, check["device"], train.batch_size)
    t0 = time.perf_counter()
    timed = interleaved(specs, batches, check["device"], check["precision"], check["mode"], train.lr, train.seed,
                        cost.rounds, cost.steps, cost.warmup_steps)
    return {"params": cost.model_dump(), "loop_seconds": time.perf_counter() - t0, "configurations": timed}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", required=True, help="the configuration's file from the check stage")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", required=True, help="root holding MNIST/raw")
    p.add_argument("--out", required=True, help="run directory")
    args = p.parse_args(argv)
    run(lambda: train_stage(args.check, args.params, args.data, args.out), "train")


if __name__ == "__main__":
    main()
