"""`make compare A=<rev> [B=<rev>]`: what changed between two revisions' reports.

Reads one machine's report (``results/<machine>/report/``: summary.json and the
per-step plot data; ``reports/`` at revisions from before machines had folders) as
committed at A and at B (default: the workspace). Prints, per configuration, one line on its
trajectory (bitwise equal at A and B, or the max |diff| and the first step that
differs), then a table: verdicts, max |diff|, timed step with its interval and
its B/A ratio, and the platform on each side. Exits 1 when B's report fails at
all (the overall ``passed`` flag false: a verdict that got worse, a
configuration new at B that fails), when a configuration's reference changed,
or when a configuration got slower on the same platform by more than
``compare.cost_factor`` with disjoint intervals. A cost ratio across different
platforms is printed and labelled, never used to fail.
"""

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lossbench.config import load_params
from lossbench.configuration import of_row, rekeyed
from lossbench.errors import UserError, run
from lossbench import machines

REPORT = "results/{machine}/report"
LEGACY = "reports"  # where revisions before results/<machine>/ kept the one report
SUMMARY = "summary.json"
METRICS = "metrics.json"  # what revisions before summary.json hold
LOSS_PLOT = "plots/loss/{setting}.csv"  # before the precision axis: plots/loss/{device}.csv (fp32, eager)


class CompareError(UserError):
    pass


def read_file(rev, name, repo="."):
    """A file's text at a git revision, or in the workspace when ``rev`` is None; None when absent."""
    if rev is None:
        path = Path(repo) / name
        return path.read_text() if path.is_file() else None
    out = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=repo, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def read_summary(rev, machine, repo="."):
    """A revision's report of ``machine``: (its folder, every row: summary.json, or metrics.json where older)."""
    for folder in (REPORT.format(machine=machine), LEGACY):
        for name in (SUMMARY, METRICS):
            text = read_file(rev, f"{folder}/{name}", repo)
            if text is not None:
                report = json.loads(text)
                return folder, {**report, "configs": rekeyed(report.get("configs", {}))}
    where = "in the workspace (run `make repro` first)" if rev is None else f"at revision {rev!r}"
    raise CompareError(f"{REPORT.format(machine=machine)}/{SUMMARY}: not found {where}")


def read_losses(rev, folder, config, repo="."):
    """Every loss's per-step loss in ``config``'s setting (the report's plot data), or None."""
    for setting in (config.setting, config.device):  # the second: a report from before the precision axis
        text = read_file(rev, f"{folder}/{LOSS_PLOT.format(setting=setting)}", repo)
        if text is not None:
            if setting == config.device and (config.precision, config.mode) != ("fp32", "eager"):
                return None
            return pd.read_csv(io.StringIO(text), index_col="global_step")
    return None


def trajectory_line(name, a, b):
    """One line: did this configuration's per-step loss change between A and B?"""
    if a is None or b is None:
        return f"{name}: trajectory {'new at B' if a is None else 'absent at B'}"
    if len(a) != len(b):
        return f"{name}: trajectory has {len(a)} steps at A, {len(b)} at B: not comparable"
    d = (b - a).abs().to_numpy()
    changed = np.flatnonzero(a.to_numpy() != b.to_numpy())
    if not changed.size:
        return f"{name}: trajectory bitwise equal ({len(a)} steps)"
    return (f"{name}: trajectory CHANGED: max |diff| {d.max():.3g} at global step {a.index[int(d.argmax())]}, "
            f"first different at global step {a.index[int(changed[0])]} ({changed.size} of {len(a)} steps differ)")


def trajectories(a, b, rev_a, rev_b, folders, repo="."):
    lines = []
    settings = {of_row(c).setting: of_row(c) for c in [*a["configs"].values(), *b["configs"].values()]}
    for setting in sorted(settings):
        config = settings[setting]
        ta, tb = read_losses(rev_a, folders[0], config, repo), read_losses(rev_b, folders[1], config, repo)
        for loss in sorted(set(ta.columns if ta is not None else []) | set(tb.columns if tb is not None else [])):
            col = {k: t[loss] if t is not None and loss in t else None for k, t in (("a", ta), ("b", tb))}
            lines.append(trajectory_line(config.of(loss).key, col["a"], col["b"]))
    return lines


def not_run_lines(a, b):
    """One line per device: the configurations that ran neither at A nor at B, and why (B's reason)."""
    by_device = {}
    for name, cb in sorted(b["configs"].items()):
        if cb.get("verdict") == "not run" and a["configs"].get(name, {}).get("verdict") == "not run":
            by_device.setdefault(cb["device"], ([], cb.get("reason")))[0].append(name)
    return [f"{device}: not run at A nor at B ({len(names)}: {', '.join(names)})" + (f": {reason}" if reason else "")
            for device, (names, reason) in by_device.items()]


def platform_label(metrics, device):
    p = metrics.get("platform", {}).get(device)
    if p is None:
        return None
    return f"{p['gpu'] or p['cpu']} / torch {p['torch']}" + (f" / CUDA {p['cuda']}" if p.get("cuda") else "")


def diff(a, b, factor):
    """Per configuration: the rows of its table and the problems found."""
    tables, problems = {}, []
    for name in sorted(set(a["configs"]) | set(b["configs"])):
        ca, cb = a["configs"].get(name, {}), b["configs"].get(name, {})
        if ca.get("verdict") == cb.get("verdict") == "not run":  # nothing to compare: listed in one line
            continue
        device = (ca or cb)["device"]
        pa, pb = platform_label(a, device), platform_label(b, device)
        # the cost stage's timed step, [mean, low, high] ms; older reports have only the training median
        ia, ib = ca.get("cost_step_ms"), cb.get("cost_step_ms")
        ta, tb = (ia[0], ib[0]) if ia and ib else (ca.get("median_step_ms"), cb.get("median_step_ms"))
        ratio = tb / ta if ta and tb else None
        same = pa == pb and pa is not None  # neither ran: no platform to compare
        note = ""
        if ratio is not None:
            note = "" if same else "platforms differ: not comparable"
            apart = ia and ib and (ib[1] > ia[2] or ib[2] < ia[1])  # the intervals say it moved
            if same and ratio > factor and apart:
                note = f"SLOWER beyond {factor:g}x"
                problems.append(f"{name}: timed step {_ms(ia, ta)} -> {_ms(ib, tb)} ms ({ratio:.2f}x > {factor:g}x, "
                                "intervals disjoint)")
            elif same and ratio < 1 / factor and apart:
                note = f"faster beyond {factor:g}x"
            elif same and not apart:
                note = "within noise" if ia and ib else "no interval: not judged"
        if ca.get("passed") is True and cb.get("passed") is False:
            problems.append(f"{name}: verdict got worse: {ca.get('verdict')} (pass) -> {cb.get('verdict')} (FAIL)")
        if not ca and cb.get("passed") is False:
            problems.append(f"{name}: new at B, and it fails: {cb.get('verdict')}, expected {cb.get('expected')}")
        if "reference" in ca and "reference" in cb and ca["reference"] != cb["reference"]:  # older reports lack it
            problems.append(f"{name}: reference changed: {ca.get('reference')} -> {cb.get('reference')} "
                            "(its verdicts are not comparable)")
        tables[name] = pd.DataFrame(
            {"A": [_verdict(ca), _num(ca.get("max_abs_diff"), ".3g"), _ms(ia, ta), pa or "-"],
             "B": [_verdict(cb), _num(cb.get("max_abs_diff"), ".3g"), _ms(ib, tb), pb or "-"],
             "B / A": ["", "", _num(ratio, ".2f") + (f" ({note})" if note else ""), "same" if same else "-" if pa is None and pb is None else "DIFFERENT"]},
            index=["verdict", "max |diff|", "timed step (ms)", "platform"])
        tables[name].loc["reference"] = [ca.get("reference") or "-", cb.get("reference") or "-",
                                         "new at B" if not ca else "absent at B" if not cb else
                                         "same" if ca.get("reference") == cb.get("reference") else "CHANGED"]
    if b.get("passed") is False:
        was = "passed at A" if a.get("passed") else "failed at A too"
        problems.append(f"B's report fails (passed: false, {b.get('failures')} failure(s); {was})")
    return tables, problems


def _verdict(c):
    if not c:
        return "absent"
    return f"{c['verdict']} ({'pass' if c['passed'] else 'FAIL'})"


def _num(x, spec):
    return "-" if x is None else format(x, spec)


def _ms(interval, value):
    """``mean [low, high]`` when there is an interval, else the value alone."""
    return f"{interval[0]:.3f} [{interval[1]:.3f}, {interval[2]:.3f}]" if interval else _num(value, ".3f")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("a", help="base revision (commit, tag, branch)")
    p.add_argument("b", nargs="?", help="revision to compare with A (default: the workspace)")
    p.add_argument("--params", default="params.yaml", help="where compare.cost_factor is read")
    p.add_argument("--factor", type=float, help="override compare.cost_factor")
    p.add_argument("--machine", help="whose report (default: this machine, LOSSBENCH_MACHINE or local)")
    p.add_argument("--repo", default=".")
    args = p.parse_args(argv)
    run(lambda: compare(args), "compare")


def compare(args):
    factor = args.factor or load_params(Path(args.repo) / args.params).compare.cost_factor
    machine = args.machine or machines.name()
    (fa, a), (fb, b) = read_summary(args.a, machine, args.repo), read_summary(args.b, machine, args.repo)
    tables, problems = diff(a, b, factor)
    print(f"A = {args.a} ({fa}), B = {args.b or 'workspace'} ({fb}); cost factor {factor:g}")
    print("\nDid the trajectories change?")
    print("\n".join(trajectories(a, b, args.a, args.b, (fa, fb), args.repo)))
    for name, table in tables.items():
        print(f"\n{name}\n{table.to_markdown()}")
    for line in not_run_lines(a, b):
        print(f"\n{line}")
    if problems:
        sys.exit("\ncompare: B fails the gate:\n  " + "\n  ".join(problems))
    print("\ncompare: nothing got worse, and B passes")


if __name__ == "__main__":
    main()
