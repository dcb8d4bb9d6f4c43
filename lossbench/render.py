"""The report people read: report.md, metrics.json, per-step plot data, PNGs."""

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lossbench.configuration import of_row  # noqa: E402
from lossbench.files import PHASES, atomic_path  # noqa: E402


def plot_tables(runs, plan):
    """Per setting (device, precision, mode): (a configuration of it, losses, |loss - its reference|), each
    a wide table indexed by global_step, one column per loss.

    A reference's own column in the second table is 0: it is compared with nothing.
    """
    out = {}
    for setting in dict.fromkeys(c.setting for c, r in runs.items() if r.steps is not None):
        ran = {c: r for c, r in runs.items() if c.setting == setting and r.steps is not None}
        first = next(iter(ran))
        steps = ran[first].steps
        idx = pd.Index(steps.loc[steps["repeat"] == 1, "global_step"], name="global_step")
        loss = pd.DataFrame({c.loss: r.losses() for c, r in ran.items()}, index=idx)
        diff = pd.DataFrame({l: (loss[l] - loss[plan[l].reference or l]).abs() for l in loss
                             if (plan[l].reference or l) in loss}, index=idx)
        out[setting] = (first, loss, diff)
    return out


# a loss's look: colour and line style both differ, so curves stay apart in grey print too; black is the tolerance's
COLOURS = plt.get_cmap("tab10").colors
STYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))
TOLERANCE = {"color": "black", "ls": ":", "lw": 1.5}


def _style(i):
    return {"color": COLOURS[i % len(COLOURS)], "ls": STYLES[i % len(STYLES)], "lw": 1.2}


def draw(tables, res, params, out):
    """The report's pictures: loss curves, |diff| on a log scale, timed step with its interval."""
    paths = []
    tol = params.report.same_device
    plan = params.plan()
    order = list(plan)  # one order everywhere: train.losses, as the tables
    for setting, (config, loss, diff) in tables.items():
        # what a user looks for: the training curve once (the references), then each candidate against its own
        # reference as a ratio, where "equal" is a flat line at 1 and a wrong loss leaves it (every curve drawn
        # on one loss axis lay under the last one: they agree to 1e-6)
        refs = [n for n in loss.columns if plan[n].reference is None]
        cands = [n for n in loss.columns if plan[n].reference is not None and plan[n].reference in loss]
        fig, (top, low) = plt.subplots(2, 1, figsize=(9.5, 5.6), dpi=80, sharex=True,
                                       gridspec_kw={"height_ratios": [1, 1.4]})
        for i, name in enumerate(refs):
            top.plot(loss.index, loss[name], label=f"{name} (reference)", **_style(i))
        top.set(title=f"Loss per step ({setting})", ylabel="loss")
        top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        for i, name in enumerate(cands):
            rel = loss[name] / loss[plan[name].reference] - 1  # (steps,): 0 where bitwise equal
            low.plot(loss.index, rel, label=f"{name} vs {plan[name].reference}", **_style(i + len(refs)))
        low.axhline(0.0, **{**TOLERANCE, "lw": 0.8})
        low.set(xlabel="global step", ylabel="loss / its reference's - 1")
        low.set_yscale("symlog", linthresh=1e-7)  # rounding (1e-6 and less) near 0; a wrong loss far off it
        if cands:
            low.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        paths.append(_save(fig, out / f"loss-{setting}.png"))
        fig, ax = plt.subplots(figsize=(9.5, 3.8), dpi=80)
        for i, name in enumerate(diff.columns):
            if plan[name].reference is None:
                continue
            # bitwise-equal steps (diff 0) cannot sit on a log axis: left out
            label = f"{name} vs {plan[name].reference}" + (" (bitwise equal: no line)" if (diff[name] == 0).all() else "")
            ax.plot(diff.index, diff[name].where(diff[name] > 0), label=label, **_style(i))
        for j, ref in enumerate(sorted({plan[n].reference for n in diff.columns if plan[n].reference is not None})):
            key = config.of(ref).key
            if key in res.bounds:  # the envelope rule: the bound moves with the reference's own noise
                bound = pd.Series(res.bounds[key], index=loss.index)
                label = f"{params.report.envelope.multiplier:g}x {ref}'s rounding noise (the bound)"
            else:
                bound = tol.atol + tol.rtol * loss[ref].abs()
                label = f"tolerance ({tol.atol:g} + {tol.rtol:g} * |{ref}|)"
            ax.plot(bound.index, bound, label=label, **{**TOLERANCE, "ls": STYLES[j % len(STYLES)]})
        ax.set_yscale("log")
        ax.set(title=f"|loss - its reference| per step ({setting})", xlabel="global step",
               ylabel="|diff| (zeros not drawn)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        paths.append(_save(fig, out / f"absdiff-{setting}.png"))
    timed = pd.DataFrame([{"loss": r["loss"], "setting": of_row(r).setting,
                           "ms": r["cost_step_ms"][0],
                           "lo": r["cost_step_ms"][0] - r["cost_step_ms"][1],
                           "hi": r["cost_step_ms"][2] - r["cost_step_ms"][0]}
                          for r in res.configs.values() if r.get("cost_step_ms")])
    if not timed.empty:
        rows = [n for n in order if n in set(timed["loss"])]
        ms, lo, hi = (timed.pivot(index="loss", columns="setting", values=v).reindex(rows) for v in ("ms", "lo", "hi"))
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=80)
        ms.plot.barh(ax=ax, xerr=np.stack([lo.to_numpy().T, hi.to_numpy().T], axis=1), capsize=2)
        ax.invert_yaxis()  # first row on top, as in the tables
        ax.legend(title="setting", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.set(title="Timed step, each beside its reference (bars: 95% interval)", xlabel="ms per step", ylabel="")
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
    if r["cost"] == "reference":  # its timed step pools its timings beside each candidate
        n = r.get("timed_beside")
        return "1 (reference)" if not n or n != n else f"1 (reference, timed beside {int(n)} candidate{'' if n == 1 else 's'})"
    lo, hi = r["cost_ratio_low"], r["cost_ratio_high"]
    digits = 2 if not (round(lo, 2) == 1 or round(hi, 2) == 1) else 3  # an interval that excludes 1 never prints 1.00
    return f"{r['cost_ratio']:.{digits}f}x [{lo:.{digits}f}, {hi:.{digits}f}]: {r['cost']}"


def _noise(r):
    """``0.19x`` (trajectory; step-1 gradients after the slash), the reference's own noise for a reference."""
    if r.get("verdict") == "reference":
        if pd.isna(r.get("noise_max")):
            return "-"
        seen = r.get("nudge_visible_from")
        return f"noise max {r['noise_max']:.2g}" + (f" (members apart from step {int(seen)})" if pd.notna(seen) else
                                                    " (**the nudge did not survive**)")
    if r.get("noise_used") is None or pd.isna(r.get("noise_used")):
        return ""
    out = f"{r['noise_used']:.2g}x / {r['grad_noise_used']:.2g}x"
    first = r.get("first_outside_noise")
    return out + (f" (first out: step {int(first)})" if first is not None and pd.notna(first) else "")


def _fp64(r):
    """The float64 diagnostic: a candidate's distance from its reference's float64 run, as a share of the
    reference's own; for a reference, its own distance."""
    if r.get("verdict") == "reference":
        return f"own {r['fp64_max_diff']:.2g}" if pd.notna(r.get("fp64_max_diff")) else "-"
    ratio = r.get("fp64_ratio")
    return "" if ratio is None or pd.isna(ratio) else f"{ratio:.2g}x the reference's"


def numpy_traced(r):
    """True when a loss's NumPy ran eager and not compiled: compile traced it, and its verdict is not the NumPy's."""
    eager = r.get("vs_eager")  # a table's record: NaN where a row has none
    return r.get("numpy_calls") == 0 and isinstance(eager, dict) and bool(eager.get("numpy_calls_eager"))


def _verdict(r):
    return r["verdict"] + ("; but its NumPy did not run (Details: Compiled)" if numpy_traced(r) else "")


def _compiled(r):
    c = r["compile"]
    reasons = "; ".join(f"{k} (x{v})" for k, v in c["reasons"].items())
    out = (f"{c['graph_breaks']} graph break(s)" + (f" ({reasons})" if reasons else "")
           + f", {c['graphs']} graph(s), {c['recompilations']} recompilation(s)"
           + (f", compile {c['seconds']:.1f} s" if c.get("seconds") is not None else ""))
    calls, eager = r.get("numpy_calls"), (r.get("vs_eager") or {})
    if numpy_traced(r):
        out += (f"; its NumPy did not run: compile traced it into torch ops (eager makes {eager['numpy_calls_eager']} "
                "NumPy calls a step, compiled 0): the loss judged here is not the NumPy code")
    elif calls:
        out += f"; NumPy ran ({calls} calls a step)"
    if eager:
        out += (f"; against itself eager: max |diff| {eager['max_abs_diff']:.3g}, bitwise-equal steps "
                f"{eager['bitwise_equal_steps']} / {r['steps']}")
    return out


def fmt(x, spec):
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def markdown(params, res, images):
    rp = params.report
    rows = pd.DataFrame(list(res.configs.values()), index=list(res.configs))  # indexed by configuration key
    lines = ["# lossbench report", ""]
    lines.append("**Result: " + ("PASS" if not res.failures else f"FAIL ({len(res.failures)})") + "**")
    lines.append("")
    t = params.train
    lines.append(f"Seed {t.seed}, {t.epochs} epochs, batch {t.batch_size}, Adam lr {t.lr:g}, loader `{t.loader}`, "
                 f"{t.repeats} repeats per configuration.")
    lines.append("")
    for device, p in res.platforms.items():
        lines.append(f"- `{device}`: {p['gpu'] or p['cpu']}; torch {p['torch']}"
                     + (f", CUDA {p['cuda']}" if p["cuda"] else f", {p['threads']} threads")
                     + f", Python {p['python']}" + (f"; ran on {p['host']}" if p.get("host") else "")
                     + ("; bf16 is emulated here (no bf16 instructions): a bf16 cost measures the emulation"
                        if p.get("bf16_native") is False and "bf16" in t.precisions else ""))
    lines.append("")
    unsupported = rows[rows["status"] == "unsupported"]
    if not unsupported.empty:  # a finding: the loss runs in fp32 and not under this setting
        lines += ["## Unsupported", ""] + [f"- **{k}**: {r['reason']}" for k, r in unsupported.iterrows()] + [""]
    notrun = rows[~rows["status"].isin(["ran", "unsupported"])]
    if not notrun.empty:
        lines += ["## Not run", ""]
        for (device, reason), group in notrun.groupby(["device", "reason"], sort=False):
            lines.append(f"- **{device}** ({', '.join(group['loss'])}): {reason}")
        lines.append("")
    ran = rows[rows["status"] == "ran"].copy()
    if not ran.empty:
        if rp.rule == "envelope":
            e = rp.envelope
            rule = ("Each loss against its own reference on the same device: `equal` when, at every step, |loss - ref| "
                    f"is within {e.multiplier:g}x the reference's own rounding noise (its run repeated {e.members} "
                    "times with every initial weight nudged by one ulp: the largest |member - ref| so far, at least "
                    f"{e.floor_ulps:g} ulps of the loss), and so is every parameter's step-1 gradient. *Noise used*: "
                    "the largest share of that bound any step used (< 1 passes); *growth*: the slope of log |diff| "
                    "against log noise (docs/envelope.md). *vs float64*: max |loss - the reference's float64 run| as "
                    "a share of the reference's own (torch._dynamo's check passes fp32 below 2x): one sample of a "
                    "chaotic run, shown, not judged. The fixed rule's figures (`tol_used`, atol "
                    f"{rp.same_device.atol:g}) stay in summary.json.")
        else:
            rule = ("Each loss against its own reference on the same device: `equal` when every step passes "
                    f"|loss - ref| <= {rp.same_device.atol:g} + {rp.same_device.rtol:g} * |ref| and every "
                    f"parameter's step-1 gradient passes max |g - g_ref| <= {rp.gradient.rtol:g} * max |g_ref|.")
        lines += ["## Verdicts", "", rule, ""]
        v = pd.DataFrame({
            "config": ran.index, "reference": ran["reference"].fillna("-"),
            "expected": ran["expected"], "verdict": [_verdict(r) for r in ran.to_dict("records")],
            "ok": ran["passed"].map({True: "yes", False: "**NO**"}),
            **({"noise used": [_noise(r) for r in ran.to_dict("records")],
                "growth": ran.get("growth", pd.Series(index=ran.index, dtype=float)).map(lambda x: fmt(x, ".2f")),
                "vs float64 (diagnostic)": [_fp64(r) for r in ran.to_dict("records")]}
               if rp.rule == "envelope" else {}),
            "max abs diff": ran["max_abs_diff"].map(lambda x: fmt(x, ".3g")),
            "step-1 grad rel err": [_grad(r) for r in ran.itertuples()],
            "final weights max abs diff": ran.get("weights_max_abs_diff", pd.Series(dtype=float)).map(
                lambda x: fmt(x, ".3g")),
            "bitwise-equal steps": [f"{int(e)} / {int(n)}" for e, n in zip(ran["bitwise_equal_steps"], ran["steps"])],
            "weights changed": ran["weights_changed"], "repeats identical": ran["repeats_identical"],
        })
        cp = params.cost
        lines += [v.to_markdown(index=False), "", "## Cost", "",
                  f"Cost vs reference: each candidate timed in its own train stage beside its reference, taking turns "
                  f"a step at a time, {cp.rounds} rounds of {cp.steps} steps each after {cp.warmup_steps} untimed ones; "
                  f"the ratio of per-round median steps, with its 95% interval. A difference is named only where the interval excludes 1 and the "
                  f"ratio is beyond {cp.min_effect:g}x. *Its reference beside it*: the reference's timed step in that "
                  "candidate's stage, the ratio's other half; a reference's own *timed step* pools every candidate's "
                  "stage, so a ratio is read against its row, not against the reference's. "
                  f"Training step: the median over the training repeats "
                  "(separate processes, minutes apart: drift between them does not cancel)."
                  + "".join(f" On `{d}` bf16 is emulated (no bf16 instructions): a bf16 cost here measures the emulation."
                            for d, p in res.platforms.items() if p.get("bf16_native") is False and "bf16" in t.precisions),
                  ""]
        c = pd.DataFrame({
            "config": ran.index,
            "cost vs reference": [_cost(r) for r in ran.to_dict("records")],
            "timed step (ms)": [_ci(r.get("cost_step_ms"), ".3f") for r in ran.to_dict("records")],
            "its reference beside it (ms)": [_ci(r.get("ref_step_ms"), ".3f") for r in ran.to_dict("records")],
            "training step (ms)": ran["median_step_ms"].map(lambda x: fmt(x, ".3f")),
            "spread over repeats (ms)": [f"{a:.3f}-{b:.3f}" for a, b in zip(ran["step_ms_min"], ran["step_ms_max"])],
            "total (s)": ran["total_s"].map(lambda x: fmt(x, ".2f")),
        })
        lines += [c.to_markdown(index=False), ""]
    if res.failures:
        lines += ["## Failures", ""] + [f"- {f}" for f in res.failures] + [""]
    lines += ["## Details", ""]
    differ = {key: r["dtypes_differ"] for key, r in res.configs.items() if r.get("dtypes_differ")}
    if differ:
        lines += ["### Dtypes", "", "What each loss received, computed in and returned at its first step, observed "
                  "in the run, where it differs from its reference's (autocast upcasts some torch losses to float32 "
                  "and not a custom one):", ""] + [f"- **{k}**: {v}" for k, v in differ.items()] + [""]
    compiled = {key: r for key, r in res.configs.items() if r.get("compile")}
    if compiled:
        lines += ["### Compiled", "", "Per compiled configuration: what torch.compile did (the first step compiles: its "
                  "time beyond a step's is the compile time, kept out of the step cost), whether the loss's NumPy "
                  "really ran (its calls counted in a step, as it ran), and the run against itself eager.", ""]
        lines += [f"- **{k}**: {_compiled(r)}" for k, r in compiled.items()] + [""]
    judged = {key: r for key, r in res.configs.items() if r.get("grad_summary")}
    if judged:
        lines += ["### Gradients and weights", "",
                  "Step 1, from the same initial weights and first batch as the reference; final weights "
                  "after the last step, largest |diff| over every tensor.", ""]
        lines += [f"- **{key}** vs {r['reference']}: {r['grad_summary']}; final weights "
                  f"max |diff| {r['weights_max_abs_diff']:.3g} (in {r['weights_worst_tensor']})" for key, r in judged.items()]
        lines.append("")
    if res.cross:
        lines += ["### Across devices", "",
                  ("Rule `envelope`: within " f"{rp.envelope.multiplier:g}x the larger of the two devices' rounding "
                   "noise of the loss's reference, for a loss equal to its reference on both devices; rule `fixed` "
                   "(a loss that differs from its reference, whose trajectory that noise does not describe, or where a "
                   "device has no ensemble): "
                   f"{rp.cross_device.atol:g} + {rp.cross_device.rtol:g} * |ref|."), "",
                  pd.DataFrame([{"loss pair": k, **v} for k, v in res.cross.items()]).to_markdown(index=False), ""]
    timed = {key: r for key, r in res.configs.items() if "phases_ms" in r}
    if timed:
        ph = pd.DataFrame([{"config": key, **{f"{k} (ms)": _ci(r["phases_ms"][k], ".3f") for k in PHASES}}
                           for key, r in timed.items()])
        lines += ["### Where the time goes", "",
                  "Per phase, from the same interleaved measurement: the geometric mean over rounds of each round's median, "
                  "with its 95% interval (CUDA events on CUDA, so a device-to-host copy shows in `loss`).", "",
                  ph.to_markdown(index=False), ""]
    if images:
        lines += ["### Pictures", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    return "\n".join(lines)


def write_plot_data(tables, out):
    for setting, (_, loss, diff) in tables.items():
        for kind, df in (("loss", loss), ("absdiff", diff)):
            with atomic_path(out / "plots" / kind / f"{setting}.csv") as tmp:
                df.to_csv(tmp)
