"""Stage `check`: runs first, every time, in seconds; stops the pipeline on bad input.

Validates params.yaml (YAML 1.2, as DVC reads it), imports every loss and
reference, applies LOSSBENCH_REQUIRE_DEVICES, and runs each loss once on a small
batch on the device, in fp32 and then through the model under each requested precision. Then writes, per
configuration, ``<out>/<device>/<key>.json``: the
loss (fn, args, where its code lives, with digests), its setting, the dtypes its loss received, computed in
and returned there (or why it is unsupported there), the device's availability,
the machine's name and the device's platform (lossbench.host.for_device). Each train stage
depends on its own file alone, so it re-runs exactly when its loss's code, its
device or that device's platform changed (a new torch, another CPU). Nothing is written unless every check
passed. In a machine's directory (``--machine-dir``) it first refuses to run for
another machine than this one.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from lossbench import fingerprint, machines, problems
from lossbench.config import load_params
from lossbench.configuration import Configuration
from lossbench.errors import ROOT, UserError, run, shown
from lossbench.files import read_json, write_json


class DeviceRequired(UserError):
    exit_code = 3


def key(params_path, params, name, fn):
    """Where a loss is named in params, and its fn unless the name is the fn itself (package.module:attr)."""
    where = f"{shown(params_path)}: losses.{name}" if name in params.losses else \
        f"{shown(params_path)}: train.losses: {name!r}"
    return where if fn == name else f"{where} ({fn})"


def envelope(params, judged):
    """A reference's envelope, under the envelope rule: what its train stage adds (None for a candidate, so
    that the envelope's settings never re-train one)."""
    rp = params.report
    return {"members": rp.envelope.members} if judged.reference is None and rp.rule == "envelope" else None


def setting_check(spec, record, cache, check):
    """The pre-flight under the record's precision and mode; a compiled one is cached in ``cache`` by the loss's
    code digests and the setting, so that the check DVC runs every time compiles once per change, not each time."""
    if record["mode"] == "eager":  # cheap: no cache
        return check(spec, record["device"], record["precision"])
    what = {k: record[k] for k in ("fn", "args", "source", "device", "precision", "mode", "platform")}
    path = Path(cache) / f"{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]}.json"
    if path.is_file():
        found = read_json(path)
        return (problems.Problem(**found["problem"]) if found["problem"] else None), found["dtypes"]
    problem, dtypes = check(spec, record["device"], record["precision"], record["mode"])
    write_json(path, {"setting": what, "problem": problem.as_dict() if problem else None, "dtypes": dtypes})
    return problem, dtypes


def main_check(params_path, devices, out):
    t0 = time.perf_counter()
    params = load_params(params_path)
    devices = devices or params.train.devices
    unknown = sorted(set(devices) - set(params.train.devices))
    if unknown:
        raise UserError(f"{shown(params_path)}: train.devices: {unknown[0]!r} (--device) is not in {params.train.devices}")
    machine = machines.name()
    # beside the check's output, which DVC clears before each run: the last check, and compiled pre-flights
    cache = Path(out).parent / ".check-cache"
    last_path = cache / f"{'+'.join(devices)}.json"
    last = read_json(last_path) if last_path.is_file() else None
    now = fingerprint.of(params_path, devices, machine, ROOT, last["fingerprint"]["outside"] if last else ())
    if last is not None and last["fingerprint"] == now:  # nothing it depends on changed: its files hold
        for name, record in last["files"].items():
            write_json(Path(out) / name, record)
        for line in last["lines"]:
            print(line, file=sys.stderr)
        print(f"check: nothing changed since the last check: its {len(last['files'])} files reused, torch not "
              f"imported ({time.perf_counter() - t0:.2f} s)", file=sys.stderr)
        return
    records, lines, here = checked(params_path, params, devices, machine, cache / "preflight")
    files = {}
    for config, record in records.items():
        write_json(config.check_file(out), record)
        files[str(config.check_file(out).relative_to(out))] = record
    outside = sorted({r["source"]["file"] for r in records.values() if r["source"].get("file")})
    write_json(last_path, {"fingerprint": {**now, "outside": fingerprint.of_files(outside)}, "files": files,
                           "lines": lines})
    n, bad = len(params.plan()), sum(r["unsupported"] is not None for r in records.values())
    print(f"check: {n} loss{'' if n == 1 else 'es'} imported"
          + (f", pre-flighted on {', '.join(here)}" if here else " (none of them runs here)")
          + (f"; {bad} configuration{'' if bad == 1 else 's'} cannot run under {'its' if bad == 1 else 'their'} "
             "setting (above): the report will fail" if bad else "")
          + f" ({time.perf_counter() - t0:.2f} s)", file=sys.stderr)


def checked(params_path, params, devices, machine, preflight_cache):
    """({Configuration: check record}, the lines it printed, the devices that run here): every loss imported,
    pre-flighted on each device that can run here, under each setting."""
    # torch (~3 s to import) only here, when something the check depends on changed; the train stages after it
    # will want it too: a warm process for them (lossbench.warm), importing it meanwhile
    from lossbench import warm

    warm.start()
    from lossbench import gpu, host
    from lossbench.losses import resolve
    from lossbench.preflight import check, source

    lines = []

    def say(line):
        lines.append(line)
        print(line, file=sys.stderr)

    this_host = host.collect()
    reasons = {d: gpu.reason_for(d, this_host) for d in devices}
    required = [d for d in devices if reasons[d] is not None]
    if required and gpu.devices_required():
        raise DeviceRequired(f"{shown(params_path)}: train.devices: {required[0]!r} cannot run here and "
                             f"{gpu.REQUIRE_DEVICES}=1: {reasons[required[0]]}")
    records = {}
    plan = params.plan()
    for name, j in plan.items():
        try:
            spec = resolve(name, j.fn, j.args)
        except UserError as e:
            raise UserError(f"{key(params_path, params, name, j.fn)}: {e}") from e
        loss = {"loss": name, "fn": j.fn, "args": j.args, "source": source(j.fn)}
        for device in devices:
            # the machine's name too: DVC's run-cache is keyed by a stage's deps, and two machines of one
            # platform would otherwise take each other's runs (and timings) as their own
            common = {**loss, "device": device, "machine": machine, "available": reasons[device] is None,
                      "reason": reasons[device], "platform": host.for_device(this_host, device),
                      "envelope": envelope(params, j)}
            fp32 = None
            if reasons[device] is None:  # in fp32 always: a loss that fails there is broken, not unsupported
                problem, fp32 = check(spec, device)
                if problem:
                    raise UserError(f"{key(params_path, params, name, j.fn)} on {device}: {problem.message}")
            for precision in params.train.precisions:
                for mode in params.train.modes:
                    config = Configuration(name, device, precision, mode)
                    record = {**common, "config": config.key, "precision": precision, "mode": mode,
                              "dtypes": None, "unsupported": None}
                    why = host.compile_reason(device) if mode == "compiled" and reasons[device] is None else None
                    if why:  # not run here, with the reason: never a crash
                        record.update(available=False, reason=why)
                    elif (precision, mode) == ("fp32", "eager"):  # the pre-flight above was this one
                        record["dtypes"] = fp32
                    elif reasons[device] is None:  # through the model under the setting: a failure shows now
                        problem, record["dtypes"] = setting_check(spec, record, preflight_cache, check)
                        if problem:
                            record["unsupported"] = problems.unsupported(precision, mode, device, problem).as_dict()
                            say(f"check: {config.key}: {record['unsupported']['message']}")
                    records[config] = record
    for config, record in records.items():  # a candidate's record holds its reference's: timed beside it
        ref = plan[config.loss].reference
        record["reference"] = None if ref is None else {
            k: records[config.of(ref)][k] for k in ("loss", "config", "fn", "args", "source", "unsupported")}
    for device in (d for d in devices if reasons[d] is not None):
        say(f"check: {device}: its configurations will be reported as not run: {reasons[device]}")
    return records, lines, [d for d in devices if reasons[d] is None]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--device", action="append", help="a device of train.devices (repeatable; default: all)")
    p.add_argument("--machine-dir", help="results/<machine>/ this runs in: refuse unless it is this machine's")
    p.add_argument("--out", required=True, help="folder for <device>/<configuration key>.json")
    args = p.parse_args(argv)

    def stage():
        if args.machine_dir is not None:
            machines.refuse_foreign(args.machine_dir)
        main_check(args.params, args.device, args.out)

    run(stage, "check")


if __name__ == "__main__":
    main()
