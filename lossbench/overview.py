"""Every machine's report side by side, and each configuration compared across machines.

Reads only what each machine commits to Git, ``results/<machine>/report/``: its
summary.json (verdicts, costs, platforms) and the per-step losses of its plot
data. Torch-free: it runs in a second on any clone, trained or not.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lossbench.configuration import of_row, rekeyed

LOSS_PLOT = "plots/loss/{setting}.csv"


@dataclass
class Machine:
    name: str
    summary: dict
    losses: dict  # setting (device-precision-mode) -> DataFrame indexed by global_step, one column per loss


@dataclass
class Overview:
    machines: list = field(default_factory=list)
    across: dict = field(default_factory=dict)  # "<key>:<a>-vs-<b>" -> comparison
    failures: list = field(default_factory=list)


def load(results):
    """Each machine with a report under ``results`` (results/<machine>/report/summary.json), by name."""
    machines = []
    for path in sorted(Path(results).glob("*/report/summary.json")):
        report = path.parent
        summary = json.loads(path.read_text())
        summary["configs"] = rekeyed(summary["configs"])
        settings = {of_row(row).setting for row in summary["configs"].values()}
        losses = {s: pd.read_csv(report / LOSS_PLOT.format(setting=s), index_col="global_step")
                  for s in sorted(settings) if (report / LOSS_PLOT.format(setting=s)).is_file()}
        machines.append(Machine(report.parent.name, summary, losses))
    return machines


def compare(values, ref, atol, rtol):
    diff = np.abs(values - ref)
    bound = atol + rtol * np.abs(ref)
    bad = np.flatnonzero(diff > bound)
    return {"max_abs_diff": float(diff.max()), "tol_used": float(np.max(diff / bound)),
            "bitwise_equal_steps": int(np.sum(values == ref)), "steps": int(values.size),
            "first_outside_step": int(ref.index[bad[0]]) if bad.size else None, "passed": bad.size == 0}


def build(machines, tolerance):
    """The overview as data: failures are each machine's failed report and each pair outside ``tolerance``."""
    out = Overview(machines=machines)
    for m in machines:
        if not m.summary["passed"]:
            out.failures.append(f"machine {m.name}: its report fails ({m.summary['failures']} failure(s)): "
                                f"results/{m.name}/report/report.md")
    for i, a in enumerate(machines):
        for b in machines[i + 1:]:
            for key, row in a.summary["configs"].items():
                other = b.summary["configs"].get(key)
                if row["status"] != "ran" or other is None or other["status"] != "ran":
                    continue
                setting, loss = of_row(row).setting, row["loss"]
                if setting not in a.losses or setting not in b.losses or loss not in a.losses[setting]:
                    continue
                ref, values = a.losses[setting][loss], b.losses[setting][loss]
                if len(ref) != len(values):  # different params: not the same experiment
                    continue
                c = compare(values.to_numpy(), ref, tolerance.atol, tolerance.rtol)
                out.across[f"{key}:{a.name}-vs-{b.name}"] = c
                if not c["passed"]:
                    out.failures.append(f"{key}: machine {b.name} vs {a.name}: outside {tolerance.atol:g} "
                                        f"from step {c['first_outside_step']} (max |diff| {c['max_abs_diff']:.3g})")
    return out


def _cell(row):
    if row is None:
        return "not in its matrix"  # that machine's params did not name it when it last ran
    if row["status"] != "ran":
        return "not run"  # why: once per machine and device, below the table
    cell = row.get("verdict", "")
    if row.get("cost_ratio") is not None and row.get("verdict") != "reference":
        cell += f", cost {row['cost_ratio']:.2f}x"
    return cell


def markdown(ov, tolerance):
    if not ov.machines:
        return "# lossbench overview\n\nNo machine has a report in results/ yet: `make repro`.\n"
    lines = ["# lossbench overview", "",
             "Each machine's results are in `results/<machine>/` (its report: `results/<machine>/report/report.md`).",
             "", "## Machines", ""]
    rows = []
    for m in ov.machines:
        for device, p in m.summary["platform"].items():
            rows.append({"machine": m.name, "device": device, "host": p.get("host"), "cpu": p["cpu"],
                         "gpu": p.get("gpu") or "", "torch": p["torch"],
                         "report": "PASS" if m.summary["passed"] else "FAIL"})
    lines += [pd.DataFrame(rows).to_markdown(index=False) if rows else "(no configuration ran)", "",
              "## Verdicts", ""]
    keys = list(dict.fromkeys(k for m in ov.machines for k in m.summary["configs"]))
    table = pd.DataFrame([{"configuration": k, **{m.name: _cell(m.summary["configs"].get(k)) for m in ov.machines}}
                          for k in keys])
    lines += [table.to_markdown(index=False), ""]
    reasons = {(m.name, row["device"]): row.get("reason") or row["status"] for m in ov.machines
               for row in m.summary["configs"].values() if row["status"] != "ran"}
    lines += [f"- not run on {machine}, {device}: {why}" for (machine, device), why in reasons.items()]
    lines += [""] if reasons else []
    if ov.across:
        lines += ["## Across machines", "", f"The same configuration on two machines; tolerance "
                  f"{tolerance.atol:g} + {tolerance.rtol:g} * |ref| (report.cross_device).", "",
                  pd.DataFrame([{"pair": k, **{f: v[f] for f in ("max_abs_diff", "bitwise_equal_steps", "steps",
                                                                  "passed")}}
                                for k, v in ov.across.items()]).to_markdown(index=False), ""]
    lines += ["## Result", "", "PASS" if not ov.failures else "FAIL", ""] + [f"- {f}" for f in ov.failures]
    return "\n".join(lines) + "\n"


def as_json(ov):
    return {"passed": not ov.failures, "failures": ov.failures, "machines": [m.name for m in ov.machines],
            "across": ov.across}
