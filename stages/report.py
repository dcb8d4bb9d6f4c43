"""Stage `report`: pandas over every run; asserts, then writes what people read.

Asserts, per device, that each loss matches its own reference (every step's
loss within the tolerance and every step-1 gradient within its tolerance), or
differs where that is expected; that the weights changed exactly for the losses
that should train, that repeats are bitwise identical, and that each loss
agrees with itself across devices. The final weights are compared per tensor. Writes
reports/report.md, reports/metrics.json, per-step plot data and PNGs; the
files are written even when an assertion fails, then the stage exits 1.
"""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lossbench import evidence, timing  # noqa: E402
from lossbench.config import load_params  # noqa: E402
from lossbench.errors import UserError, run as run_main  # noqa: E402
from lossbench.io import atomic_path, read_json, write_json, write_text  # noqa: E402
from lossbench.training import PHASES, STEP_COLUMNS, read_tensors  # noqa: E402


class ReportError(UserError):
    """A run directory that cannot be read as a finished run."""


@dataclass
class Run:
    loss: str
    device: str
    info: dict
    steps: pd.DataFrame | None = None  # None when the configuration did not run
    grads: dict | None = None  # step-1 gradient per parameter
    weights: dict | None = None  # final weights per parameter

    @property
    def name(self):
        return f"{self.loss}-{self.device}"

    def losses(self, repeat=1):
        s = self.steps
        return s.loc[s["repeat"] == repeat, "loss"].to_numpy()


def load_run(run_dir, loss, device):
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json")
    if info.get("status") != "ran":
        return Run(loss, device, info)
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
    return Run(loss, device, info, steps, read_tensors(run_dir / "grads.npz"), read_tensors(run_dir / "weights.npz"))


def load_runs(runs_dir, losses, devices):
    return {(l, d): load_run(Path(runs_dir) / f"{l}-{d}", l, d) for d in devices for l in losses}


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
                    f"{other[j]!r} vs {first[j]!r}")
    return None


def describe(v):
    f = v["first_violation"]
    return (f"global step {f['global_step']} (epoch {f['epoch']}, step {f['step']}): "
            f"loss {f['loss']!r} vs reference {f['reference']!r}, "
            f"|diff| {f['abs_diff']:.3g} > tolerance {f['tolerance']:.3g}")


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


def platform_summary(p):
    gpus = p["cuda"]["gpus"]
    return {"cpu": p["cpu"], "gpu": ", ".join(gpus) if gpus else None, "torch": p["versions"]["torch"],
            "cuda": p["cuda"]["runtime"] if p["cuda"]["available"] else None,
            "python": p["python"], "threads": p["torch_threads"]}


def cost_rows(params, costs):
    """Per configuration that was timed: its cost ratio to its reference with a 95% interval, and its phases."""
    plan, rows = params.plan(), {}
    for device, c in costs.items():
        if c["status"] != "ran":
            continue
        for loss, m in c["losses"].items():
            ref = plan[loss].reference or loss
            ratio, lo, hi = timing.ratio_ci(m["step_seconds"], c["losses"][ref]["step_seconds"])
            phases = {p: [v * 1e3 for v in vals] for p, vals in m["phase_seconds"].items()}
            rows[f"{loss}-{device}"] = {
                "cost_ratio": ratio, "cost_ratio_low": lo, "cost_ratio_high": hi,
                "cost": "reference" if ref == loss else timing.label(ratio, lo, hi, params.cost.min_effect),
                "cost_step_ms": timing.mean_ci([v * 1e3 for v in m["step_seconds"]]),
                "phases_ms": {p: timing.mean_ci(v) for p, v in phases.items()},
            }
    return rows


def evaluate(params, runs, costs=None):
    """Every assertion, as data: metrics rows and a list of failure messages."""
    rp, train = params.report, params.train
    timed = cost_rows(params, costs or {})
    plan = params.plan()
    res = Result()
    for (loss, device), run in runs.items():
        judged = plan[loss]
        expected = "reference" if judged.reference is None else judged.expect
        row = {"loss": loss, "device": device, "status": run.info["status"], "expected": expected,
               "reference": judged.reference}
        res.configs[run.name] = row
        if run.steps is None:
            row.update(reason=run.info.get("reason"), passed=True, verdict="not run")
            continue
        res.platforms.setdefault(device, platform_summary(run.info["platform"]))
        row.update(step_ms(run))
        row.update(timed.get(run.name, {}))
        row["weights_changed"] = run.info["weights_changed"]
        row["steps"] = run.info["steps"]
        checks = []
        if judged.reference is not None:
            ref = runs[(judged.reference, device)]
            c = evidence.trajectory(run.losses(), ref.losses(), rp.same_device.atol, rp.same_device.rtol, ref.steps)
            g = evidence.gradients(run.grads, ref.grads, rp.gradient.rtol, c["first_step_within"])
            w = evidence.weights(run.weights, ref.weights)
            row.update({k: c[k] for k in ("max_abs_diff", "max_at_global_step", "bitwise_equal_steps")})
            row.update(grad_within=g["within"], grad_max_rel_err=g["max_rel_err"], grad_factor=g["factor"],
                       grad_summary=g["summary"], weights_max_abs_diff=w["max_abs_diff"],
                       weights_worst_tensor=w["worst_tensor"])
            row["verdict"] = "equal" if c["within"] and g["within"] else "differs"
            if expected == "equal" and not g["within"]:
                checks.append(f"{run.name}: expected equal to {ref.name}, but {g['summary']}")
            if expected == "equal" and not c["within"]:
                why = ""
                if g["within"]:  # the formula is right: say so, or a correct loss reads as a wrong one
                    why = (f"; its step-1 gradients agree (max rel err {g['max_rel_err']:.2g}), so this is rounding "
                           "drift that training grew, not a wrong formula: compute in torch's order of operations "
                           "(see losses/examples.py) or widen report.same_device")
                checks.append(f"{run.name}: expected equal to {ref.name}, first broken at {describe(c)}{why}")
            if expected == "differs" and row["verdict"] == "equal":
                checks.append(f"{run.name}: expected to differ from {ref.name}, but every step is within "
                              f"tolerance (max |diff| {c['max_abs_diff']:.3g}) and so is every step-1 gradient: "
                              "this check cannot fail")
        else:
            row.update(verdict="reference", max_abs_diff=0.0, bitwise_equal_steps=run.info["steps"])
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
    for loss in train.losses:
        ran = [runs[(loss, d)] for d in train.devices if runs[(loss, d)].steps is not None]
        for other in ran[1:]:
            base = ran[0]
            c = evidence.trajectory(other.losses(), base.losses(), rp.cross_device.atol, rp.cross_device.rtol,
                                    base.steps)
            key = f"{loss}:{base.device}-vs-{other.device}"
            res.cross[key] = {"max_abs_diff": c["max_abs_diff"], "bitwise_equal_steps": c["bitwise_equal_steps"],
                              "passed": c["within"]}
            if not c["within"]:
                res.failures.append(f"{other.name} vs {base.name}: first broken at {describe(c)}")
    return res


def metrics(params, res):
    return {"passed": not res.failures, "failures": len(res.failures),
            "tolerance": {"same_device": params.report.same_device.model_dump(),
                          "cross_device": params.report.cross_device.model_dump(),
                          "gradient": params.report.gradient.model_dump()},
            "platform": res.platforms, "cross_device": res.cross,
            # sentences stay in report.md: metrics are for `dvc metrics show` / `diff`
            "configs": {k: {f: v for f, v in row.items() if f != "grad_summary"} for k, row in res.configs.items()}}


def plot_tables(runs, plan):
    """Per device: (losses, |loss - its reference|), each a wide table indexed by global_step.

    A reference's own column in the second table is 0: it is compared with nothing.
    """
    out = {}
    for device in sorted({d for (_, d), r in runs.items() if r.steps is not None}):
        ran = {l: r for (l, d), r in runs.items() if d == device and r.steps is not None}
        steps = next(iter(ran.values())).steps
        idx = pd.Index(steps.loc[steps["repeat"] == 1, "global_step"], name="global_step")
        loss = pd.DataFrame({l: r.losses() for l, r in ran.items()}, index=idx)
        diff = pd.DataFrame({l: (loss[l] - loss[plan[l].reference or l]).abs() for l in loss}, index=idx)
        out[device] = (loss, diff)
    return out


def draw(tables, res, params, out):
    """The report's pictures: loss curves, |diff| on a log scale, step time."""
    paths = []
    tol = params.report.same_device
    plan = params.plan()
    for device, (loss, diff) in tables.items():
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=80)
        loss.plot(ax=ax, lw=1)
        ax.set(title=f"Loss per step ({device})", xlabel="global step", ylabel="loss")
        paths.append(_save(fig, out / f"loss-{device}.png"))
        fig, ax = plt.subplots(figsize=(9.5, 3.8), dpi=80)
        candidates = [n for n in diff.columns if plan[n].reference is not None]
        for name in candidates:
            # bitwise-equal steps (diff 0) cannot sit on a log axis: left out
            label = f"{name} vs {plan[name].reference}" + (" (bitwise equal: no line)" if (diff[name] == 0).all() else "")
            ax.plot(diff.index, diff[name].where(diff[name] > 0), lw=1, label=label)
        for ref in sorted({plan[n].reference for n in candidates}):
            bound = tol.atol + tol.rtol * loss[ref].abs()
            ax.plot(bound.index, bound, color="black", ls="--", lw=1,
                    label=f"tolerance ({tol.atol:g} + {tol.rtol:g} * |{ref}|)")
        ax.set_yscale("log")
        ax.set(title=f"|loss - its reference| per step ({device})", xlabel="global step",
               ylabel="|diff| (zeros not drawn)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: never over data
        paths.append(_save(fig, out / f"absdiff-{device}.png"))
    ran = pd.DataFrame([r for r in res.configs.values() if "median_step_ms" in r])
    if not ran.empty:
        med = ran.pivot(index="loss", columns="device", values="median_step_ms")
        lo = med - ran.pivot(index="loss", columns="device", values="step_ms_min")
        hi = ran.pivot(index="loss", columns="device", values="step_ms_max") - med
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=80)
        med.plot.barh(ax=ax, xerr=np.stack([lo.to_numpy().T, hi.to_numpy().T], axis=1))
        ax.set(title="Median step time (bars: min-max over repeats)", xlabel="ms per step", ylabel="")
        paths.append(_save(fig, out / "step-time.png"))
    return paths


def _save(fig, path):
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def _grad(r):
    """The step-1 gradient column: the relative error, or the factor when it is one."""
    if not isinstance(getattr(r, "grad_summary", None), str):
        return ""
    factor = r.grad_factor
    if not r.grad_within and isinstance(factor, float) and not np.isnan(factor):
        return "**no gradient**" if factor == 0 else f"**{factor:.3f}x**"
    return fmt(r.grad_max_rel_err, ".3g") if r.grad_within else f"**{r.grad_max_rel_err:.3g}**"


def _ci(m, spec):
    """``mean [low, high]`` from (mean, low, high)."""
    return "" if not isinstance(m, (list, tuple)) else f"{m[0]:{spec}} [{m[1]:{spec}}, {m[2]:{spec}}]"


def _cost(r):
    if "cost_ratio" not in r or (isinstance(r["cost_ratio"], float) and np.isnan(r["cost_ratio"])):
        return ""
    if r["cost"] == "reference":
        return "1 (reference)"
    return f"{r['cost_ratio']:.2f}x [{r['cost_ratio_low']:.2f}, {r['cost_ratio_high']:.2f}]: {r['cost']}"


def fmt(x, spec):
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def markdown(params, res, images):
    rp = params.report
    rows = pd.DataFrame(res.configs.values())
    lines = ["# lossbench report", ""]
    lines.append("**Result: " + ("PASS" if not res.failures else f"FAIL ({len(res.failures)})") + "**")
    lines.append("")
    t = params.train
    lines.append(f"Seed {t.seed}, {t.epochs} epochs, batch {t.batch_size}, Adam lr {t.lr:g}, loader `{t.loader}`, "
                 f"{t.repeats} repeats per configuration.")
    lines.append("")
    for device, p in res.platforms.items():
        lines.append(f"- `{device}`: {p['gpu'] or p['cpu']}; torch {p['torch']}"
                     + (f", CUDA {p['cuda']}" if device == "cuda" else f", {p['threads']} threads")
                     + f", Python {p['python']}")
    lines.append("")
    notrun = rows[rows["status"] != "ran"]
    if not notrun.empty:
        lines += ["## Not run", ""]
        for (device, reason), group in notrun.groupby(["device", "reason"], sort=False):
            lines.append(f"- **{device}** ({', '.join(group['loss'])}): {reason}")
        lines.append("")
    ran = rows[rows["status"] == "ran"].copy()
    if not ran.empty:
        lines += ["## Verdicts", "",
                  "Each loss against its own reference on the same device: `equal` when every step passes "
                  f"|loss - ref| <= {rp.same_device.atol:g} + {rp.same_device.rtol:g} * |ref| and every "
                  f"parameter's step-1 gradient passes max |g - g_ref| <= {rp.gradient.rtol:g} * max |g_ref|.", ""]
        v = pd.DataFrame({
            "config": ran["loss"] + "-" + ran["device"], "reference": ran["reference"].fillna("-"),
            "expected": ran["expected"], "verdict": ran["verdict"],
            "ok": ran["passed"].map({True: "yes", False: "**NO**"}),
            "max abs diff": ran["max_abs_diff"].map(lambda x: fmt(x, ".3g")),
            "step-1 grad rel err": [_grad(r) for r in ran.itertuples()],
            "final weights max abs diff": ran.get("weights_max_abs_diff", pd.Series(dtype=float)).map(
                lambda x: fmt(x, ".3g")),
            "bitwise-equal steps": [f"{int(e)} / {int(n)}" for e, n in zip(ran["bitwise_equal_steps"], ran["steps"])],
            "weights changed": ran["weights_changed"], "repeats identical": ran["repeats_identical"],
        })
        cp = params.cost
        lines += [v.to_markdown(index=False), "", "## Cost", "",
                  f"Cost vs reference: every loss of a device timed in turn in one process, {cp.rounds} rounds of "
                  f"{cp.steps} steps each after {cp.warmup_steps} untimed ones; the ratio of per-round median steps, "
                  f"with its 95% interval. A difference is named only where the interval excludes 1 and the "
                  f"ratio is beyond {cp.min_effect:g}x. Training step: the median over the training repeats "
                  "(separate processes, minutes apart: drift between them does not cancel).", ""]
        c = pd.DataFrame({
            "config": ran["loss"] + "-" + ran["device"],
            "cost vs reference": [_cost(r) for r in ran.to_dict("records")],
            "timed step (ms)": [_ci(r.get("cost_step_ms"), ".3f") for r in ran.to_dict("records")],
            "training step (ms)": ran["median_step_ms"].map(lambda x: fmt(x, ".3f")),
            "spread over repeats (ms)": [f"{a:.3f}-{b:.3f}" for a, b in zip(ran["step_ms_min"], ran["step_ms_max"])],
            "total (s)": ran["total_s"].map(lambda x: fmt(x, ".2f")),
        })
        lines += [c.to_markdown(index=False), ""]
    if res.failures:
        lines += ["## Failures", ""] + [f"- {f}" for f in res.failures] + [""]
    lines += ["## Details", ""]
    judged = [r for r in res.configs.values() if r.get("grad_summary")]
    if judged:
        lines += ["### Gradients and weights", "",
                  "Step 1, from the same initial weights and first batch as the reference; final weights "
                  "after the last step, largest |diff| over every tensor.", ""]
        lines += [f"- **{r['loss']}-{r['device']}** vs {r['reference']}: {r['grad_summary']}; final weights "
                  f"max |diff| {r['weights_max_abs_diff']:.3g} (in {r['weights_worst_tensor']})" for r in judged]
        lines.append("")
    if res.cross:
        lines += ["### Across devices", "",
                  f"Tolerance: {rp.cross_device.atol:g} + {rp.cross_device.rtol:g} * |ref|.", "",
                  pd.DataFrame([{"loss pair": k, **v} for k, v in res.cross.items()]).to_markdown(index=False), ""]
    timed = [r for r in res.configs.values() if "phases_ms" in r]
    if timed:
        ph = pd.DataFrame([{"config": f"{r['loss']}-{r['device']}",
                            **{f"{k} (ms)": _ci(r["phases_ms"][k], ".3f") for k in PHASES}} for r in timed])
        lines += ["### Where the time goes", "",
                  "Per phase, from the same interleaved measurement: the mean over rounds of each round's median, "
                  "with its 95% interval (CUDA events on CUDA, so a device-to-host copy shows in `loss`).", "",
                  ph.to_markdown(index=False), ""]
    if images:
        lines += ["### Pictures", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    return "\n".join(lines)


def write_plot_data(tables, out):
    for device, (loss, diff) in tables.items():
        for kind, df in (("loss", loss), ("absdiff", diff)):
            with atomic_path(out / "plots" / kind / f"{device}.csv") as tmp:
                df.to_csv(tmp)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--runs", required=True)
    p.add_argument("--cost", required=True, help="the cost stage's folder: <device>.json")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    run_main(lambda: report(args.params, args.runs, args.cost, args.out), "report")


def report(params_path, runs_dir, cost_dir, out):
    params = load_params(params_path)
    try:
        runs = load_runs(runs_dir, params.train.losses, params.train.devices)
        costs = {d: read_json(Path(cost_dir) / f"{d}.json") for d in params.train.devices}
    except (FileNotFoundError, ValueError) as e:
        raise ReportError(str(e)) from e
    res = evaluate(params, runs, costs)
    out = Path(out)
    tables = plot_tables(runs, params.plan())
    write_plot_data(tables, out)
    images = draw(tables, res, params, out)
    write_json(out / "metrics.json", metrics(params, res))
    write_text(out / "report.md", markdown(params, res, images))
    if res.failures:
        sys.exit("report: FAIL\n  " + "\n  ".join(res.failures))
    print(f"report: PASS ({out / 'report.md'})", file=sys.stderr)


if __name__ == "__main__":
    main()
