"""`make bench`: what the pipeline costs beside the work it does. Three measurements, one run.

1. Data paths: the tutorial's DataLoader loop vs the preloaded default, alternated
   in one process (they share the machine's state), with the spread over rounds,
   and whether their losses are bitwise identical (they must be: exit 1 otherwise).
   The preloaded runs' time is broken down: loading, model set-up, the steps' own
   work (steps x median step), the first steps' excess, the spread of the rest,
   and the loop outside the steps; its ratio to the steps' own work is the goal.
2. Cost: every loss of ``train.losses`` timed in turn (the measurement each candidate's train stage makes
   beside its reference, here all in one), each candidate's ratio to its reference with its 95% interval.
3. Repro overhead (``--repro``): a cold ``dvc repro -f`` in a copy of this
   working tree, its wall time against the training and timing loops it runs.
4. The inner loop (``--inner``, and ``--before REV`` for the same on another commit, side by side): in a copy,
   a ``make repro`` with nothing changed (does it import torch?), then editing one loss, timed in turn with
   the tutorial's own script (its two unchecked runs, ``lossbench.tutorial``): the edit's ratio to it.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lossbench import determinism, machines, stats, task, training, warm
from lossbench.config import load_params
from lossbench.losses import resolve
from lossbench.timing import interleaved


def time_loader(loader, spec, root, device, p):
    """One seeded training run; its losses and where its wall time went. ``graphed``: preloaded, the model's
    forward and backward as CUDA graphs (lossbench.engine.GraphedForward)."""
    graphed = loader == "graphed"
    t0 = time.perf_counter()
    batches, _ = task.batches("preloaded" if graphed else loader, root, device, p.batch_size)
    t1 = time.perf_counter()
    steps, info = training.run_once(spec.make, batches, device, p.epochs, p.lr, p.seed, loader, graphed=graphed)
    t2 = time.perf_counter()
    s = steps["seconds"].to_numpy()
    med = float(np.median(s[p.warmup_steps:]))
    first = s[: p.warmup_steps]
    parts = {
        "load data": t1 - t0,
        "seed, model, optimizer, digests": (t2 - t1) - info["total_seconds"],
        "steps' own work (n x median)": len(s) * med,
        f"first {len(first)} steps' excess": float(first.sum() - len(first) * med),
        "spread of the other steps": float(s[len(first):].sum() - (len(s) - len(first)) * med),
        "loop outside the steps": info["total_seconds"] - float(s.sum()),
    }
    return t2 - t0, parts, steps["loss"].to_numpy()


def data_paths(params, root, device, loss, rounds):
    """Each path's wall times over ``rounds``, the preloaded runs' breakdowns, and per path other than the tutorial's
    whether its losses are bitwise the tutorial's. On CUDA a third path, ``graphed``, is measured beside them: not
    yet what the pipeline runs (it has not run on a GPU); one that fails there is named, with its error."""
    spec = resolve(loss, loss, {})
    times, parts, losses = {"dataloader": [], "preloaded": []}, [], {}
    if device == "cuda":
        times["graphed"] = []
    for r in range(rounds):
        for loader in list(times):
            try:
                seconds, p, losses[loader] = time_loader(loader, spec, root, device, params)
            except RuntimeError as e:  # CUDA's graph capture (graphed only): the measurement is lost, not the bench
                if loader != "graphed":
                    raise
                print(f"bench: graphed: failed: {e}".splitlines()[0], file=sys.stderr)
                del times[loader]
                continue
            times[loader].append(seconds)
            if loader == "preloaded":
                parts.append(p)
            print(f"bench: round {r + 1}: {loader:10s} {seconds:7.2f} s", file=sys.stderr)
    identical = {k: np.array_equal(losses["dataloader"], losses[k]) for k in times if k != "dataloader"}
    return times, parts, identical


def print_data_paths(times, parts, identical, loss, device, params):
    dl, pre = np.asarray(times["dataloader"]), np.asarray(times["preloaded"])
    ratios = dl / pre  # round by round: the two ran side by side
    print(f"## Data paths: {loss} on {device}, {params.epochs} epochs, batch {params.batch_size}, "
          f"{len(pre)} round(s) alternated")
    print(f"  dataloader (tutorial loop): {np.median(dl):7.2f} s  [{dl.min():.2f}, {dl.max():.2f}]")
    print(f"  preloaded (default):        {np.median(pre):7.2f} s  [{pre.min():.2f}, {pre.max():.2f}]")
    print(f"  speed-up: {np.median(ratios):.2f}x [{ratios.min():.2f}, {ratios.max():.2f}] (median [min, max] "
          f"over rounds); losses bitwise identical: {identical['preloaded']}")
    if "graphed" in times:  # measured beside them, CUDA only
        g = np.asarray(times["graphed"])
        r = dl / g
        print(f"  graphed (preloaded, the model's forward and backward as CUDA graphs): {np.median(g):.2f} s "
              f"[{g.min():.2f}, {g.max():.2f}]; speed-up {np.median(r):.2f}x [{r.min():.2f}, {r.max():.2f}]; "
              f"losses bitwise identical: {identical['graphed']}")
    print("## Where the preloaded run's time goes (mean over rounds)")
    mean = {name: float(np.mean([p[name] for p in parts])) for name in parts[0]}
    own = mean["steps' own work (n x median)"]
    for name, v in mean.items():
        print(f"  {name:34s} {v:7.3f} s  {100 * v / own:6.1f}% of the steps' own work")
    within = [sum(p.values()) / p["steps' own work (n x median)"] for p in parts]
    print(f"  total / steps' own work: {sum(mean.values()) / own:.3f}x [{min(within):.3f}, {max(within):.3f}] "
          "(mean [min, max] over rounds; goal <= 1.1x)")


def cost_table(params, root, device):
    """The cost stage's measurement, printed as the report's table."""
    t, c = params.train, params.cost
    plan = params.plan()
    specs = {name: resolve(name, j.fn, j.args) for name, j in plan.items()}
    batches, _ = task.batches(t.loader, root, device, t.batch_size)
    t0 = time.perf_counter()
    m = interleaved(specs, batches, device, "fp32", "eager", t.lr, t.seed, c.rounds, c.steps, c.warmup_steps)
    wall = time.perf_counter() - t0
    print(f"## Cost on {device}: {c.rounds} rounds x {c.steps} steps per loss, taking turns a step at a time "
          f"({wall:.1f} s)")
    print(f"  {'loss':18s} {'reference':12s} {'ratio [95% interval]':24s} {'half-width':>10s}  label")
    for name, j in plan.items():
        step = stats.mean_ci([v * 1e3 for v in m[name]["step_seconds"]])
        if j.reference is None:
            print(f"  {name:18s} {'-':12s} {'1 (reference)':24s} {'':>10s}  {step[0]:.3f} ms a step")
            continue
        r, lo, hi = stats.ratio_ci(m[name]["step_seconds"], m[j.reference]["step_seconds"])
        label = stats.label(r, lo, hi, c.min_effect)
        print(f"  {name:18s} {j.reference:12s} {f'{r:.3f}x [{lo:.3f}, {hi:.3f}]':24s} "
              f"{100 * (hi - lo) / 2 / r:9.1f}%  {label}")


def torch_import_seconds(rounds=3):
    """What one process pays for torch and torch._dynamo (Adam's step imports it), measured apart: the median
    wall of a Python that imports both, less that of one that imports nothing."""
    def wall(code):
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))
    return wall("import torch, torch._dynamo") - wall("pass")


def repro_overhead(python_bin):
    """A cold `dvc repro -f` of this machine's pipeline in a copy of this working tree: wall time against its loops,
    and where the rest goes."""
    with tempfile.TemporaryDirectory(prefix="lossbench-bench-") as tmp:
        _copy_tree(".", tmp)
        env = {**os.environ, "PATH": f"{python_bin}{os.pathsep}{os.environ['PATH']}"}
        here = machines.directory(tmp)
        warm.stop()  # cold: no warm process either (the check starts one, lossbench.warm)
        wall, log = _timed([sys.executable, "-m", "lossbench.workflow", "repro", "-f"], tmp,
                           {**env, "PYTHONPROFILEIMPORTTIME": "1"})
        runs = [json.loads(p.read_text()) for p in sorted((here / "runs").glob("*/run.json"))]
        costs = [json.loads(p.read_text()) for p in sorted((here / "runs").glob("*/cost.json"))]
    names = _stages(log)
    stages = len(names)
    train, noise, timing = _loops(runs, costs)
    ensembles = [run["envelope"] for run in runs if run["status"] == "ran" and run.get("envelope")]
    ran = sum(run["status"] == "ran" for run in runs)
    importing = sum(name.strip() == "torch" for _, name in _imports(log))  # processes that imported it themselves
    one = torch_import_seconds()
    imports = importing * one
    print(f"## Cold `dvc repro -f` ({len(runs)} configurations, {ran} run here; {stages} stages)")
    print(f"  wall {wall:.1f} s; training loops {train:.1f} s + timing loops {timing:.1f} s = {train + timing:.1f} s")
    print(f"  of the training loops, the references' envelopes: {noise:.1f} s ({len(ensembles)} references x "
          f"({ensembles[0]['members'] if ensembles else 0} members + 1 float64 run))")
    print(f"  wall / loops: {wall / (train + timing):.2f}x (goal <= 1.5x)")
    print("  where the rest goes:")
    print(f"    torch + torch._dynamo imports: {importing} of the stages' processes imported them (the others ran in the "
          f"warm process, lossbench.warm, which imported them once, beside the check) x {one:.2f} s (measured apart) "
          f"= {imports:.1f} s  ({100 * imports / wall:.0f}% of the wall)")
    rest = wall - train - timing - imports
    print(f"    the rest: {rest:.1f} s ({100 * rest / wall:.0f}%): DVC (its start, hashing, the lock rewritten after "
          f"each of {stages} stages), the not-run stages' processes, the pre-flights, the report, the overview")
    print(f"  without a torch import per process, wall / loops would be {(wall - imports) / (train + timing):.2f}x")


EDITED = "losses/bench_edit.py"  # the loss the inner loop edits: a user's MSE in torch ops
TUTORIAL = str(Path(__file__).with_name("tutorial.py"))  # this tree's, whichever tree is measured


def _copy_tree(src, dst):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=src, check=True, capture_output=True,
                           text=True).stdout.split()
    for f in files:
        if (Path(src) / f).is_file() or (Path(src) / f).is_symlink():
            (Path(dst) / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(src) / f, Path(dst) / f, follow_symlinks=False)
    subprocess.run("git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm tree", shell=True,
                   cwd=dst, check=True, capture_output=True)


def _timed(cmd, cwd, env):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed in {cwd}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return time.perf_counter() - t0, out.stdout + out.stderr


def inner_loop(tree, python_bin, rounds):
    """In a copy of ``tree`` (the default losses and a user's loss, cpu): a cold repro; one with nothing changed;
    then, ``rounds`` times, the user's loss edited and re-judged, in turn with the tutorial's script."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="lossbench-inner-") as tmp:
        _copy_tree(tree, tmp)
        (Path(tmp) / EDITED).write_text("def mse(input, target):\n    return ((input - target) ** 2).mean()\n")
        params = yaml.safe_load((Path(tmp) / "params.yaml").read_text())
        params["train"]["devices"] = ["cpu"]
        params["train"]["losses"].append("bench_edit")
        params["losses"]["bench_edit"] = {"fn": "losses.bench_edit:mse"}
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "PATH": f"{python_bin}{os.pathsep}{os.environ['PATH']}"}
        repro = [sys.executable, "-m", "lossbench.workflow", "repro"]
        warm.stop()  # cold: no warm process either; the edits find the one this run starts (lossbench.warm)
        cold, _ = _timed(repro, tmp, env)
        nothing, log = _timed(repro, tmp, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
        torch_imported = any(name.strip() == "torch" for _, name in _imports(log))
        edits, tutorial = [], []
        for r in range(rounds):  # in turn, so that the machine's drift falls on both
            with open(Path(tmp) / EDITED, "a") as f:
                f.write(f"# edit {r + 1}\n")  # a new digest: its configuration re-trains, re-timed, re-judged
            seconds, log = _timed(repro, tmp, env)
            edits.append(seconds)
            stages = _stages(log)
            tutorial.append(_timed([sys.executable, TUTORIAL, "--data", "data"], tmp, env)[0])
        # one more edit, untimed against the tutorial, with every process's imports profiled: where its time goes
        with open(Path(tmp) / EDITED, "a") as f:
            f.write("# edit, profiled\n")
        start = time.time()
        wall, log = _timed(repro, tmp, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
        parts = _where(Path(tmp), start, log, wall)
    return {"cold": cold, "nothing": nothing, "torch_imported": torch_imported, "edits": edits,
            "tutorial": tutorial, "stages": stages, "parts": parts}


def _stages(log):
    """The stages a `dvc repro` log ran (not skipped, not restored from the run-cache), without their dvc.yaml."""
    return sorted(set(re.findall(r"Running stage '[^']*:([^']+)'", log)))


def _loops(runs, costs):
    """(training loops, of which the references' envelopes, timing loops), in seconds: what the run.json and
    cost JSON files that a repro wrote recorded."""
    ran = [run for run in runs if run.get("status") == "ran"]
    noise = sum(run["envelope"]["seconds"] + run["envelope"]["fp64_seconds"] for run in ran if run.get("envelope"))
    train = sum(r["total_seconds"] for run in ran for r in run["repeats"]) + noise
    return train, noise, sum(c.get("loop_seconds", 0) for c in costs)


def _imports(log):
    """(cumulative us, name) of every import -X importtime listed ("import time: self | cumulative | name", the
    name indented by its depth: " torch" is a top-level import)."""
    rows = [line.split("|")[1:] for line in log.splitlines() if line.startswith("import time:")]
    return [(int(cum), name.rstrip()) for cum, name in rows if cum.strip().isdigit()]


def _where(tree, since, log, wall):
    """Where an edit's wall time went: the loops its runs recorded (training; timing, whichever file held it
    in that tree), the torch imports (-X importtime's top-level torch and torch._dynamo, every process), the
    rest (DVC: its lock rewrite after each stage; the check's pre-flights; the report; Python start-ups)."""
    fresh = [p for p in tree.glob("results/*/**/*.json") if p.stat().st_mtime >= since]
    train, _, timing = _loops([json.loads(p.read_text()) for p in fresh if p.name == "run.json"],
                              [json.loads(p.read_text()) for p in fresh if p.name == "cost.json" or p.parent.name == "cost"])
    imports = _imports(log)
    # torch is listed once a process, at whatever depth its first import was; torch._dynamo on its own only
    # where Adam's first step imported it, at the top (deeper, it is inside torch's figure already)
    torch_s = sum(cum for cum, name in imports if name.strip() == "torch" or name == " torch._dynamo") / 1e6
    processes = sum(name.strip() == "torch" for _, name in imports)
    return {"wall": wall, "training loops": train, "timing loops": timing,
            f"torch imports ({processes} processes)": torch_s,
            "the rest (DVC's lock rewrites, the check's pre-flights, report, start-ups)": wall - train - timing - torch_s,
            "stages": _stages(log)}


def print_inner(label, m):
    ratios = np.asarray(m["edits"]) / np.asarray(m["tutorial"])
    print(f"## The inner loop: {label}")
    print(f"  cold make repro (default losses + one of the user's, cpu): {m['cold']:.1f} s")
    print(f"  make repro with nothing changed: {m['nothing']:.1f} s; imports torch: {m['torch_imported']} "
          "(goal: no)")
    print(f"  edit one loss -> its new verdict and cost: {np.median(m['edits']):.1f} s [{min(m['edits']):.1f}, "
          f"{max(m['edits']):.1f}]; stages it ran: {', '.join(m['stages'])}")
    print(f"  the tutorial's own script, its two unchecked runs: {np.median(m['tutorial']):.1f} s "
          f"[{min(m['tutorial']):.1f}, {max(m['tutorial']):.1f}]")
    print(f"  edit / tutorial: {np.median(ratios):.2f}x [{ratios.min():.2f}, {ratios.max():.2f}] (median [min, max] "
          "over rounds, each edit timed beside a tutorial run; goal <= 1.2x)")
    parts = dict(m["parts"])
    wall, stages = parts.pop("wall"), parts.pop("stages")
    print(f"  where an edit's time goes (one more edit, its imports profiled: {wall:.1f} s; {len(stages)} stages):")
    for name, v in parts.items():
        print(f"    {name:72s} {v:6.1f} s  {100 * v / wall:5.1f}%")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--loss", default="torch_mse", help="the loss the data paths train")
    p.add_argument("--rounds", type=int, default=3, help="data-path rounds, each loader once a round")
    p.add_argument("--repro", action="store_true", help="also time a cold `dvc repro -f` in a copy (minutes)")
    p.add_argument("--inner", action="store_true", help="also time the inner loop in a copy (minutes)")
    p.add_argument("--before", help="a commit: its inner loop too, beside this tree's (a worktree, removed after)")
    p.add_argument("--inner-rounds", type=int, default=3)
    args = p.parse_args(argv)
    determinism.set_determinism()
    params = load_params(args.params)
    times, parts, identical = data_paths(params.train, args.data, args.device, args.loss, args.rounds)
    print_data_paths(times, parts, identical, args.loss, args.device, params.train)
    cost_table(params, args.data, args.device)
    if args.repro:
        repro_overhead(str(Path(sys.executable).parent))
    if args.inner or args.before:
        trees = {"this tree": "."}
        with tempfile.TemporaryDirectory(prefix="lossbench-before-") as before:
            if args.before:
                subprocess.run(["git", "worktree", "add", "-q", "--detach", before, args.before], check=True)
                trees = {f"before ({args.before})": before, **trees}
            try:
                found = {k: inner_loop(t, str(Path(sys.executable).parent), args.inner_rounds) for k, t in trees.items()}
            finally:
                if args.before:
                    subprocess.run(["git", "worktree", "remove", "--force", before], check=False)
        for k, m in found.items():
            print_inner(k, m)
    if not identical["preloaded"]:
        sys.exit("bench: the two data paths gave different losses")


if __name__ == "__main__":
    main()
