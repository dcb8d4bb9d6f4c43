"""Stage `check`: runs first, every time, in about a second; stops the pipeline on bad input.

Validates params.yaml (YAML 1.2, as DVC reads it), imports every loss and
reference, applies LOSSBENCH_REQUIRE_DEVICES, and runs each loss once on a small
batch on every device it will train on. Then writes, per configuration,
``<out>/<loss>-<device>.json``: the loss (fn, args, where its code lives, with
digests), the device's availability and the platform. Each train stage depends
on its own file alone, so it re-runs exactly when its loss's code, its device
or the platform changed. Nothing is written unless every check passed.
"""

import argparse
import sys
import time
from pathlib import Path

from lossbench import gpu
from lossbench.config import load_params
from lossbench.errors import UserError, run
from lossbench.io import write_json
from lossbench.losses import resolve
from lossbench.platform import collect
from lossbench.preflight import check, source


class DeviceRequired(UserError):
    exit_code = 3


def key(params_path, params, name):
    return f"{params_path}: losses.{name}" if name in params.losses else f"{params_path}: train.losses: {name!r}"


def main_check(params_path, out):
    t0 = time.perf_counter()
    params = load_params(params_path)
    platform = collect()
    reasons = {d: gpu.reason_for(d, platform) for d in params.train.devices}
    missing = {d: r for d, r in reasons.items() if r is not None}
    if missing and gpu.devices_required():
        d, r = next(iter(missing.items()))
        raise DeviceRequired(f"{params_path}: train.devices: {d!r} cannot run here and "
                             f"{gpu.REQUIRE_DEVICES}=1: {r}")
    records = {}
    for name, j in params.plan().items():
        try:
            spec = resolve(name, j.fn, j.args)
        except UserError as e:
            raise UserError(f"{key(params_path, params, name)} ({j.fn}): {e}") from e
        loss = {"loss": name, "fn": j.fn, "args": j.args, "source": source(j.fn)}
        for device in params.train.devices:
            if device not in missing:
                problem = check(spec, device)
                if problem:
                    raise UserError(f"{key(params_path, params, name)} ({j.fn}) on {device}: {problem}")
            records[f"{name}-{device}"] = {**loss, "config": f"{name}-{device}", "device": device,
                                           "available": device not in missing, "reason": reasons[device],
                                           "platform": platform}
    out = Path(out)
    for config, record in records.items():
        write_json(out / f"{config}.json", record)
    for d, r in missing.items():
        print(f"check: {d} configurations will be reported as not run: {r}", file=sys.stderr)
    print(f"check: {len(params.plan())} losses x {len(params.train.devices)} devices ok "
          f"({time.perf_counter() - t0:.2f} s)", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", required=True, help="folder for the per-configuration check files")
    args = p.parse_args(argv)
    run(lambda: main_check(args.params, args.out), "check")


if __name__ == "__main__":
    main()
