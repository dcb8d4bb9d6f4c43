"""`make compare A=<rev> [B=<rev>]`: what changed between two revisions' reports.

Reads ``reports/metrics.json`` as committed at A and at B (default: the
workspace) and prints one table per configuration: verdicts, max |diff|,
median step time and its B/A ratio, and the platform on each side. Exits 1
when B's report fails at all (the overall ``passed`` flag false: a verdict
that got worse, a configuration new at B that fails), when a configuration's
reference changed, or when a configuration got slower by more than
``compare.cost_factor`` on the same platform. A cost ratio across different
platforms is printed and labelled, never used to fail.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from lossbench.config import load_params
from lossbench.errors import UserError, run

METRICS = "reports/metrics.json"


class CompareError(UserError):
    pass


def read_metrics(rev, repo="."):
    """metrics.json at a git revision, or in the workspace when ``rev`` is None."""
    if rev is None:
        path = Path(repo) / METRICS
        if not path.is_file():
            raise CompareError(f"{path}: not found in the workspace (run `make repro` first)")
        return json.loads(path.read_text())
    out = subprocess.run(["git", "show", f"{rev}:{METRICS}"], cwd=repo, capture_output=True, text=True)
    if out.returncode != 0:
        raise CompareError(f"{METRICS} at revision {rev!r}: {out.stderr.strip()}")
    return json.loads(out.stdout)


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
        device = (ca or cb)["device"]
        pa, pb = platform_label(a, device), platform_label(b, device)
        ta, tb = ca.get("median_step_ms"), cb.get("median_step_ms")
        ratio = tb / ta if ta and tb else None
        same = pa == pb
        note = ""
        if ratio is not None:
            note = "" if same else "platforms differ: not comparable"
            if same and ratio > factor:
                note = f"SLOWER beyond {factor:g}x"
                problems.append(f"{name}: median step {ta:.3f} -> {tb:.3f} ms ({ratio:.2f}x > {factor:g}x)")
            elif same and ratio < 1 / factor:
                note = f"faster beyond {factor:g}x"
        if ca.get("passed") is True and cb.get("passed") is False:
            problems.append(f"{name}: verdict got worse: {ca.get('verdict')} (pass) -> {cb.get('verdict')} (FAIL)")
        if not ca and cb.get("passed") is False:
            problems.append(f"{name}: new at B, and it fails: {cb.get('verdict')}, expected {cb.get('expected')}")
        if "reference" in ca and "reference" in cb and ca["reference"] != cb["reference"]:  # older reports lack it
            problems.append(f"{name}: reference changed: {ca.get('reference')} -> {cb.get('reference')} "
                            "(its verdicts are not comparable)")
        tables[name] = pd.DataFrame(
            {"A": [_verdict(ca), _num(ca.get("max_abs_diff"), ".3g"), _num(ta, ".3f"), pa or "-"],
             "B": [_verdict(cb), _num(cb.get("max_abs_diff"), ".3g"), _num(tb, ".3f"), pb or "-"],
             "B / A": ["", "", _num(ratio, ".2f") + (f" ({note})" if note else ""), "same" if same else "DIFFERENT"]},
            index=["verdict", "max |diff|", "median step (ms)", "platform"])
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("a", help="base revision (commit, tag, branch)")
    p.add_argument("b", nargs="?", help="revision to compare with A (default: the workspace)")
    p.add_argument("--params", default="params.yaml", help="where compare.cost_factor is read")
    p.add_argument("--factor", type=float, help="override compare.cost_factor")
    p.add_argument("--repo", default=".")
    args = p.parse_args(argv)
    run(lambda: compare(args), "compare")


def compare(args):
    factor = args.factor or load_params(Path(args.repo) / args.params).compare.cost_factor
    a, b = read_metrics(args.a, args.repo), read_metrics(args.b, args.repo)
    tables, problems = diff(a, b, factor)
    print(f"A = {args.a}, B = {args.b or 'workspace'}; cost factor {factor:g}")
    for name, table in tables.items():
        print(f"\n{name}\n{table.to_markdown()}")
    if problems:
        sys.exit("\ncompare: B fails the gate:\n  " + "\n  ".join(problems))
    print("\ncompare: nothing got worse, and B passes")


if __name__ == "__main__":
    main()
