"""Judging the runs: every assertion of the report, as data (lossbench.render writes it out).

Per device, each loss against its own reference (every step's loss within the
tolerance, every step-1 gradient within its tolerance, final weights compared
per tensor), or differing where that is expected; weights changed exactly for
the losses that should train; repeats bitwise identical; each loss equal to
itself across devices; and each candidate's cost ratio to its reference.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lossbench import evidence, stats
from lossbench.configuration import Configuration
from lossbench.errors import UserError
from lossbench.files import STEP_COLUMNS, read_json, read_tensors


class ReportError(UserError):
    """A run directory that cannot be read as a finished run."""


@dataclass
class Run:
    config: Configuration
    info: dict
    steps: pd.DataFrame | None = None  # None when the configuration did not run
    grads: dict | None = None  # step-1 gradient per parameter
    weights: dict | None = None  # final weights per parameter
    members: np.ndarray | None = None  # a reference's envelope: each member's losses, (K, steps)
    fp64: np.ndarray | None = None  # a reference's envelope: the same run in float64, (steps,) (a diagnostic)
    member_gradients: dict | None = None  # a reference's envelope: per parameter, its step-1 gradient noise
    cost: dict | None = None  # a candidate's: its step time beside its reference's (stages/train.py cost.json)

    @property
    def name(self):
        return self.config.key

    @property
    def loss(self):
        return self.config.loss

    @property
    def device(self):
        return self.config.device

    def losses(self, repeat=1):
        s = self.steps
        return s.loc[s["repeat"] == repeat, "loss"].to_numpy()


def load_run(run_dir, config):
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():  # a machine that committed its lock but not pushed its outputs
        return Run(config, {"status": "missing", "reason": f"no result: {run_dir}/run.json is not here "
                                  "(`make repro` on its machine; from another machine: `make pull`)"})
    info = read_json(run_dir / "run.json")
    if info.get("status") != "ran":
        return Run(config, info)
    path = run_dir / "steps.csv"
    if not path.is_file():
        raise ReportError(f"{path}: missing, but run.json says the run finished")
    steps = pd.read_csv(path)
    if list(steps.columns) != STEP_COLUMNS:
        raise ReportError(f"{path}: columns {list(steps.columns)}, expected {STEP_COLUMNS}")
    want = info["steps"] * len(info["repeats"])
    if len(steps) != want:
        raise ReportError(f"{path}: {len(steps)} rows, expected {want} "
                          f"({info['steps']} steps x {len(info['repeats'])} repeats): an interrupted run?")
    members = fp64 = member_gradients = None
    if (run_dir / "envelope.csv").is_file():
        table = pd.read_csv(run_dir / "envelope.csv")
        members = table.filter(like="member_").to_numpy().T  # (K, steps)
        fp64 = table["fp64"].to_numpy()  # (steps,)
        member_gradients = read_json(run_dir / "envelope_gradients.json")
    cost = read_json(run_dir / "cost.json") if (run_dir / "cost.json").is_file() else None
    return Run(config, info, steps, read_tensors(run_dir / "grads.npz"), read_tensors(run_dir / "weights.npz"),
               members, fp64, member_gradients, cost)


def load_runs(runs_dir, configurations):
    """Per configuration: its run, read from the configuration's own directory."""
    return {c: load_run(c.run_dir(runs_dir), c) for c in configurations}


def repeat_mismatch(run):
    """None when every repeat's losses and final weights equal repeat 1's bit for bit, else the first difference."""
    digests = [r["weights_end"] for r in run.info["repeats"]]
    for r, d in enumerate(digests[1:], 2):
        if d != digests[0]:
            return f"{run.name}: repeat {r} ends with other weights than repeat 1 ({d[:12]} vs {digests[0][:12]})"
    first = run.losses(1)
    for r in sorted(run.steps["repeat"].unique())[1:]:
        other = run.losses(r)
        diff = np.flatnonzero(first != other)
        if diff.size:
            j = int(diff[0])
            return (f"{run.name}: repeat {r} differs from repeat 1 at global step {j + 1}: "
                    f"{float(other[j])!r} vs {float(first[j])!r}")  # plain numbers, not np.float64(...)
    return None


def describe(v):
    f = v["first_violation"]
    return (f"global step {f['global_step']} (epoch {f['epoch']}, step {f['step']}): "
            f"loss {f['loss']!r} vs reference {f['reference']!r}, "
            f"|diff| {f['abs_diff']:.3g} > tolerance {f['tolerance']:.3g}")


def describe_noise(n, multiplier):
    f = n["first_outside"]
    return (f"global step {f['global_step']}: |diff| {f['abs_diff']:.3g} > {multiplier:g}x its reference's rounding "
            f"noise ({f['bound']:.3g}); {n['steps_outside']} steps outside, at most {n['noise_used']:.3g}x")


def asymmetry(dtypes, ref):
    """One sentence when a candidate's loss saw other dtypes than its reference's did, else None."""
    if not dtypes or not ref:
        return None
    parts = []
    if dtypes["received"] != ref["received"]:
        parts.append(f"your loss received {dtypes['received']}; its reference received {ref['received']}")
    mine, theirs = dtypes.get("computed"), ref.get("computed")
    # a loss that computes outside torch (NumPy) shows no torch op: nothing to compare its computation with
    computed_differ = bool(mine) and bool(theirs) and mine != theirs
    if computed_differ or dtypes.get("returned") != ref.get("returned"):
        parts.append(f"your loss computed in {'/'.join(mine) if mine else 'no torch op'} and returned "
                     f"{dtypes.get('returned')}; its reference computed in {'/'.join(theirs) if theirs else 'no torch op'} "
                     f"and returned {ref.get('returned')}")
    return "; ".join(parts) or None


def step_ms(run):
    meds = [r["step_seconds"]["median"] * 1e3 for r in run.info["repeats"]]
    p90s = [r["step_seconds"]["p90"] * 1e3 for r in run.info["repeats"]]
    totals = [r["total_seconds"] for r in run.info["repeats"]]
    return {"median_step_ms": float(np.median(meds)), "step_ms_min": float(min(meds)),
            "step_ms_max": float(max(meds)), "p90_step_ms": float(np.median(p90s)),
            "total_s": float(np.median(totals))}


@dataclass
class Result:
    configs: dict = field(default_factory=dict)  # name -> metrics row
    cross: dict = field(default_factory=dict)  # loss -> cross-device row
    failures: list = field(default_factory=list)
    platforms: dict = field(default_factory=dict)  # device -> platform summary
    bounds: dict = field(default_factory=dict)  # a reference's configuration key -> its per-step bound (envelope rule)


def platform_summary(p, host=None):
    cuda = p.get("cuda") or {}  # a CPU device's platform leaves the GPU out
    gpus = cuda.get("gpus")
    return {"cpu": p["cpu"], "gpu": ", ".join(gpus) if gpus else None, "torch": p["versions"]["torch"],
            "bf16_native": cuda.get("bf16_native") if gpus else p.get("cpu_bf16_native"),
            "cuda": cuda.get("runtime") if cuda.get("available") else None,
            "python": p["python"], "threads": p["torch_threads"], "host": machine_label(host)}


def machine_label(host):
    """``h100 (node7)``: the machine's name (LOSSBENCH_MACHINE) and the host name that ran it."""
    if not host:
        return None
    return f"{host['machine']} ({host['name']})" if host.get("machine") else host.get("name")


def mixed_platforms(device, ran):
    """A failure when one device's results come from more than one platform, else None."""
    first = ran[0]
    for other in ran[1:]:
        if other.info["platform"] != first.info["platform"]:
            p = first.info["platform"]
            q = other.info["platform"]
            what = ", ".join(sorted(k for k in set(p) | set(q) if p.get(k) != q.get(k)))
            return (f"{device}: platforms differ for one device: {first.name} ran on "
                    f"{machine_label(first.info.get('host'))}, {other.name} on {machine_label(other.info.get('host'))} "
                    f"({what} differ): two hosts share one machine name; give each its own LOSSBENCH_MACHINE, or "
                    f"re-run this device here (`dvc repro -f --glob 'results/<machine>/dvc.yaml:train@*-{device}'`)")
    return None


def cost_rows(params, runs):
    """Per configuration that was timed: its cost ratio to its reference with a 95% interval, and its phases. A
    candidate was timed beside its reference in its own train stage. A reference was timed beside each of its
    candidates: its row pools those timings (rounds of every candidate's stage), so that it does not depend on
    which candidate is read first."""
    plan, rows, beside = params.plan(), {}, {}
    for config, run in runs.items():
        ref = config.of(plan[config.loss].reference or config.loss)
        timed = (run.cost or {}).get("configurations", {})
        if config.key not in timed or ref.key not in timed or ref.key == config.key:  # a reference, or not timed
            continue
        m, r = timed[config.key], timed[ref.key]
        ratio, lo, hi = stats.ratio_ci(m["step_seconds"], r["step_seconds"])
        rows[config.key] = {
            "cost_ratio": ratio, "cost_ratio_low": lo, "cost_ratio_high": hi,
            "cost": stats.label(ratio, lo, hi, params.cost.min_effect, stats.spread(m["step_seconds"], r["step_seconds"])),
            **_step_ms(m["step_seconds"], m["phase_seconds"]),
            # the reference as it ran beside this candidate: the ratio's other half (its own row pools every stage's)
            "ref_step_ms": _ms(r["step_seconds"]),
        }
        beside.setdefault(ref.key, []).append(r)
    for key, timings in beside.items():
        phases = {p: [v for t in timings for v in t["phase_seconds"][p]] for p in timings[0]["phase_seconds"]}
        rows[key] = {"cost_ratio": 1.0, "cost_ratio_low": 1.0, "cost_ratio_high": 1.0, "cost": "reference",
                     "timed_beside": len(timings),
                     **_step_ms([v for t in timings for v in t["step_seconds"]], phases)}
    return rows


def _ms(seconds):
    """Per-round seconds as ms: their mean with its 95% interval."""
    return stats.mean_ci([v * 1e3 for v in seconds])


def _step_ms(step_seconds, phase_seconds):
    """A timed step and its phases, in ms, each a mean with its 95% interval."""
    return {"cost_step_ms": _ms(step_seconds), "phases_ms": {p: _ms(vals) for p, vals in phase_seconds.items()}}


def evaluate(params, runs):
    """Every assertion, as data: metrics rows and a list of failure messages."""
    rp, train = params.report, params.train
    timed = cost_rows(params, runs)
    plan = params.plan()
    res = Result()
    levels = {}  # a reference run's noise level, computed once for its candidates, its own row and the cross pairs

    def level_of(r):
        if r.name not in levels:
            levels[r.name] = evidence.noise(r.members, r.losses(), rp.envelope.floor_ulps)
            res.bounds[r.name] = rp.envelope.multiplier * levels[r.name]  # what the pictures draw
        return levels[r.name]
    for config, run in runs.items():
        loss, device = config.loss, config.device
        judged = plan[loss]
        expected = "reference" if judged.reference is None else judged.expect
        row = {"loss": loss, "device": device, "precision": config.precision, "mode": config.mode,
               "status": run.info["status"], "expected": expected, "reference": judged.reference,
               "dtypes": run.info.get("dtypes")}
        res.configs[run.name] = row
        if run.info["status"] == "unsupported":  # the user asked for this setting, and the answer is no
            row.update(reason=run.info["reason"], passed=False, verdict="unsupported")
            res.failures.append(f"{run.name}: {run.info['reason']}")
            continue
        if run.steps is None:
            row.update(reason=run.info.get("reason"), passed=True, verdict="not run")
            continue
        res.platforms.setdefault(device, platform_summary(run.info["platform"], run.info.get("host")))
        row["numpy_calls"] = run.info.get("numpy_calls")
        if config.mode != "eager":  # what compile did, and the configuration against itself eager
            row["compile"] = run.info.get("compile")
            eager = runs.get(replace(config, mode="eager"))
            if eager is not None and eager.steps is not None:
                e = evidence.trajectory(run.losses(), eager.losses(), 0.0, 0.0, eager.steps)
                row["vs_eager"] = {"max_abs_diff": e["max_abs_diff"], "bitwise_equal_steps": e["bitwise_equal_steps"],
                                   "numpy_calls_eager": eager.info.get("numpy_calls")}
        row["machine"] = machine_label(run.info.get("host"))
        row.update(step_ms(run))
        row.update(timed.get(run.name, {}))
        row["weights_changed"] = run.info["weights_changed"]
        row["steps"] = run.info["steps"]
        checks = []
        ref = runs[config.of(judged.reference)] if judged.reference is not None else None
        if ref is not None and ref.steps is None:  # e.g. pulled from a machine that ran only part of a device
            row.update(verdict="not judged", passed=False)
            res.failures.append(f"{run.name}: its reference {ref.name} has no result to compare with: "
                                f"{ref.info.get('reason')}")
            continue
        if ref is not None and rp.rule == "envelope" and ref.members is None:
            row.update(verdict="not judged", passed=False)
            res.failures.append(f"{run.name}: its reference {ref.name} has no envelope (report.rule is "
                                f"envelope): re-run it (`dvc repro -f -s results/<machine>/dvc.yaml:train@{ref.name}`)")
            continue
        if ref is not None:
            row["dtypes_differ"] = asymmetry(run.info["dtypes"], ref.info["dtypes"])
            c = evidence.trajectory(run.losses(), ref.losses(), rp.same_device.atol, rp.same_device.rtol, ref.steps)
            n = None
            if rp.rule == "envelope":  # the verdict: within the reference's own rounding noise
                e = rp.envelope
                level = level_of(ref)
                n = evidence.within_noise(run.losses(), ref.losses(), level, e.multiplier, ref.steps)
                g = evidence.gradients(run.grads, ref.grads, rp.gradient.rtol, c["first_step_within"],
                                       ref.member_gradients, e.gradient_floor_ulps, e.multiplier)
                row.update(noise_used=n["noise_used"], grad_noise_used=g["noise_used"], growth=n["growth"],
                           steps_outside_noise=n["steps_outside"], noise_max=n["noise_max"],
                           first_outside_noise=(n["first_outside"] or {}).get("global_step"),
                           **evidence.against_fp64(run.losses(), ref.losses(), ref.fp64))
            else:
                g = evidence.gradients(run.grads, ref.grads, rp.gradient.rtol, c["first_step_within"])
            within = n["within"] if n is not None else c["within"]
            w = evidence.weights(run.weights, ref.weights)
            row.update({k: c[k] for k in ("max_abs_diff", "tol_used", "max_at_global_step", "bitwise_equal_steps")})
            row.update(grad_within=g["within"], grad_max_rel_err=g["max_rel_err"],
                       grad_tol_used=g["max_rel_err"] / rp.gradient.rtol if rp.gradient.rtol else None,
                       grad_factor=g["factor"],
                       grad_summary=g["summary"], weights_max_abs_diff=w["max_abs_diff"],
                       weights_worst_tensor=w["worst_tensor"])
            row["verdict"] = "equal" if within and g["within"] else "differs"
            if expected == "equal" and not g["within"]:
                checks.append(f"{run.name}: expected equal to {ref.name}, but {g['summary']}")
            if expected == "equal" and not within:
                why = ""
                if g["within"] and n is None:  # the formula is right: say so, or a correct loss reads as a wrong one
                    why = (f"; its step-1 gradients agree (max rel err {g['max_rel_err']:.2g}), so this is rounding "
                           "drift that training grew, not a wrong formula: compute in torch's order of operations "
                           "(see losses/examples.py), widen report.same_device, or judge by report.rule: envelope")
                where = describe(c) if n is None else describe_noise(n, e.multiplier)
                checks.append(f"{run.name}: expected equal to {ref.name}, first broken at {where}{why}")
            if expected == "differs" and row["verdict"] == "equal":
                bound = (f"{e.multiplier:g}x its reference's rounding noise (used {n['noise_used']:.2g})" if n else
                         f"tolerance (max |diff| {c['max_abs_diff']:.3g})")
                checks.append(f"{run.name}: expected to differ from {ref.name}, but every step is within {bound} "
                              "and so is every step-1 gradient: this check cannot fail")
        else:
            row.update(verdict="reference", max_abs_diff=0.0, tol_used=0.0, bitwise_equal_steps=run.info["steps"])
            if run.members is not None:  # how large its own rounding noise grew, and its float64 run's distance
                row["noise_max"] = float(level_of(run).max())
                row["fp64_max_diff"] = float(np.abs(run.losses() - run.fp64).max())
                row["nudge_visible_from"] = evidence.first_visible(run.members, run.losses())
                if row["nudge_visible_from"] is None:
                    checks.append(f"{run.name}: the one-ulp nudge did not survive {config.precision}: every member "
                                  "equals the reference at every step, so its envelope is the floor alone")
        if run.info["weights_changed"] != run.info["updates_weights"]:
            checks.append(f"{run.name}: weights {'changed' if run.info['weights_changed'] else 'did not change'}"
                          f", expected them {'to change' if run.info['updates_weights'] else 'unchanged'}")
        mismatch = repeat_mismatch(run)
        row["repeats"] = len(run.info["repeats"])
        row["repeats_identical"] = mismatch is None
        if mismatch:
            checks.append(mismatch)
        row["passed"] = not checks
        res.failures += checks
    for device in train.devices:
        ran = [r for c, r in runs.items() if c.device == device and r.steps is not None]
        mixed = mixed_platforms(device, ran) if len(ran) > 1 else None
        if mixed:
            res.failures.append(mixed)
    for config in (c for c in runs if c.device == train.devices[0]):  # the same loss and setting on each device
        ran = [r for d in train.devices if (r := runs[replace(config, device=d)]).steps is not None]
        loss = config.loss
        for other in ran[1:]:
            base = ran[0]
            c = evidence.trajectory(other.losses(), base.losses(), rp.cross_device.atol, rp.cross_device.rtol,
                                    base.steps)
            key = f"{base.name} vs {other.name}"
            row = {"max_abs_diff": c["max_abs_diff"], "tol_used": c["tol_used"],
                   "bitwise_equal_steps": c["bitwise_equal_steps"], "passed": c["within"], "rule": "fixed"}
            # the noise rule where both devices have the noise of the loss's reference, the larger of the two, and
            # the loss follows its reference's trajectory on both (verdict equal): the noise is that trajectory's.
            # A loss that differs trains along another one, which the reference's noise does not describe (on an
            # H100, wrong_backward's CPU vs CUDA drift was 3.1x the reference's): the fixed rule judges it.
            refs = [runs.get(r.config.of(plan[loss].reference or loss)) for r in (base, other)]
            follows = all(res.configs[r.name].get("verdict") in ("reference", "equal") for r in (base, other))
            if rp.rule == "envelope" and not follows:
                row["rule"] = "fixed (differs from its reference)"
            if rp.rule == "envelope" and follows and all(r is not None and r.members is not None for r in refs):
                e = rp.envelope
                level = np.maximum(*(level_of(r) for r in refs))
                n = evidence.within_noise(other.losses(), base.losses(), level, e.multiplier, base.steps)
                row.update(rule="envelope", passed=n["within"], noise_used=n["noise_used"],
                           first_outside_noise=(n["first_outside"] or {}).get("global_step"))
                if not n["within"]:
                    res.failures.append(f"{other.name} vs {base.name}: first broken at "
                                        f"{describe_noise(n, e.multiplier)} (both devices' noise, the larger)")
            elif not c["within"]:
                res.failures.append(f"{other.name} vs {base.name}: first broken at {describe(c)}")
            res.cross[key] = row
    return res


# What `dvc metrics show / diff` and `dvc exp show` print: numbers, flags and one-word verdicts, in units that
# stay readable at DVC's default 5 decimals. Sentences, platforms and reasons live in summary.json and report.md.
METRIC_FIELDS = ("passed", "verdict", "noise_used", "grad_noise_used", "tol_used", "bitwise_equal_steps", "grad_tol_used", "weights_max_abs_diff",
                 "repeats_identical", "median_step_ms", "cost_ratio", "cost_ratio_low", "cost_ratio_high")


def metrics(res):
    """reports/metrics.json: per configuration that ran, the fields above; per loss pair across devices."""
    return {"passed": not res.failures, "failures": len(res.failures),
            "configs": {k: {f: row[f] for f in METRIC_FIELDS if row.get(f) is not None}
                        for k, row in res.configs.items() if row["status"] == "ran"},
            "cross_device": {k: {f: v[f] for f in ("passed", "noise_used", "tol_used", "bitwise_equal_steps") if f in v}
                             for k, v in res.cross.items()}}


def summary(params, res):
    """reports/summary.json: every row in full, the tolerances and the platforms (what `make compare` reads)."""
    return {"passed": not res.failures, "failures": len(res.failures),
            "rule": params.report.rule, "envelope": params.report.envelope.model_dump(),
            "tolerance": {"same_device": params.report.same_device.model_dump(),
                          "cross_device": params.report.cross_device.model_dump(),
                          "gradient": params.report.gradient.model_dump()},
            "platform": res.platforms, "cross_device": res.cross, "configs": res.configs}
