"""Stage `check@<device>`: runs first, every time, in seconds; stops the pipeline on bad input.

Validates params.yaml (YAML 1.2, as DVC reads it), imports every loss and
reference, applies LOSSBENCH_REQUIRE_DEVICES, and runs each loss once on a small
batch on the device. Then writes, per loss, ``<out>/<device>/<loss>.json``: the
loss (fn, args, where its code lives, with digests), the device's availability
and the device's platform (lossbench.platform.for_device). Each train stage
depends on its own file alone, so it re-runs exactly when its loss's code, its
device or that device's platform changed, and never because another device's
machine did. Nothing is written unless every check passed.

A device this machine does not run (a GPU it lacks, or a device labelled for
another machine) keeps the results another machine pushed: where
``<runs>/<loss>-<device>/run.json`` ran with the loss's current code, the file
is what that machine's check wrote, so DVC sees nothing to re-run.
"""

import argparse
import sys
import time
from pathlib import Path

from lossbench import gpu, platform
from lossbench.config import kind, load_params, machine, owner
from lossbench.configuration import Configuration
from lossbench.errors import UserError, run
from lossbench.io import read_json, write_json
from lossbench.losses import resolve
from lossbench.preflight import check, source


class DeviceRequired(UserError):
    exit_code = 3


def key(params_path, params, name, fn):
    """Where a loss is named in params, and its fn unless the name is the fn itself (package.module:attr)."""
    where = f"{params_path}: losses.{name}" if name in params.losses else f"{params_path}: train.losses: {name!r}"
    return where if fn == name else f"{where} ({fn})"


def elsewhere(record, runs, reason):
    """The record another machine wrote for this configuration, if its run is here and current; else not run."""
    path = Configuration(record["loss"], record["device"]).run_dir(runs) / "run.json"
    ran = read_json(path) if path.is_file() else {}
    if ran.get("status") == "ran" and ran.get("loss_source") == record["source"]:
        return {**record, "available": True, "reason": None, "platform": ran["platform"]}, None
    why = reason
    if ran.get("status") == "ran":
        why = (f"{reason}; its result from {ran.get('host', {}).get('name', 'another machine')} is stale "
               "(the loss's code changed since): re-run it there")
    elif owner(record["device"]) is not None:  # meant to come from its machine: say how
        why = f"{reason}; no result of it is here: `make push` on that machine, then `make pull` here"
    return {**record, "available": False, "reason": why}, why


def main_check(params_path, devices, out, runs):
    t0 = time.perf_counter()
    params = load_params(params_path)
    devices = devices or params.train.devices
    unknown = sorted(set(devices) - set(params.train.devices))
    if unknown:
        raise UserError(f"{params_path}: train.devices: {unknown[0]!r} (--device) is not in {params.train.devices}")
    host = platform.collect()
    reasons = {d: platform.why_not_here(d, host) for d in devices}
    required = [d for d in devices if reasons[d] is not None and owner(d) in (None, machine())]
    if required and gpu.devices_required():
        raise DeviceRequired(f"{params_path}: train.devices: {required[0]!r} cannot run here and "
                             f"{gpu.REQUIRE_DEVICES}=1: {reasons[required[0]]}")
    records, notes = {}, []
    for name, j in params.plan().items():
        try:
            spec = resolve(name, j.fn, j.args)
        except UserError as e:
            raise UserError(f"{key(params_path, params, name, j.fn)}: {e}") from e
        loss = {"loss": name, "fn": j.fn, "args": j.args, "source": source(j.fn)}
        for device in devices:
            config = Configuration(name, device)
            record = {**loss, "config": config.key, "device": device, "available": reasons[device] is None,
                      "reason": reasons[device], "platform": platform.for_device(host, device)}
            if reasons[device] is None:
                problem = check(spec, kind(device))
                if problem:
                    raise UserError(f"{key(params_path, params, name, j.fn)} on {device}: {problem.message}")
                notes.append(platform.replaced(config.run_dir(runs) / "run.json", record["platform"]))
            else:
                record, why = elsewhere(record, runs, reasons[device])
                notes.append(why and f"{device} configurations will be reported as not run: {why}")
            records[(device, name)] = record
    kept = sorted({d for (d, _), r in records.items() if r["available"] and reasons[d] is not None})
    for (device, name), record in records.items():
        write_json(Path(out) / device / f"{name}.json", record)
    for note in dict.fromkeys(n for n in notes if n):
        print(f"check: {note}", file=sys.stderr)
    for device in kept:
        print(f"check: {device}: not run here; the results its machine pushed are kept", file=sys.stderr)
    here = [d for d in devices if reasons[d] is None]
    print(f"check: {len(params.plan())} losses ok"
          + (f", run on {', '.join(here)}" if here else ", imported (none of them runs here)")
          + f" ({time.perf_counter() - t0:.2f} s)", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--device", action="append", help="a device of train.devices (repeatable; default: all)")
    p.add_argument("--out", required=True, help="folder for <device>/<loss>.json")
    p.add_argument("--runs", default="data/runs", help="the train stages' results, kept for devices run elsewhere")
    args = p.parse_args(argv)
    run(lambda: main_check(args.params, args.device, args.out, args.runs), "check")


if __name__ == "__main__":
    main()
