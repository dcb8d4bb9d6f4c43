"""Many machines, one overview: clones of one Git origin sharing one local-directory DVC remote.

Machines a and b run the same matrix (cpu, and cuda not run) into results/a/ and
results/b/, each with its own dvc.lock; they push in both orders and every pull
merges without a conflict. c only reads: `make pull`, then the overview. The
machines are one CPU here, told apart as a user tells them apart: LOSSBENCH_MACHINE.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_tree
from tests.test_pipeline import sh

pytestmark = pytest.mark.slow
LOSSES = ["torch_mse", "numpy_mse"]
WORKFLOW = "python -m lossbench.workflow"
MINE = "def my_mse(input, target):\n    return ((input - target) ** 2).mean()\n"


def ran(log):
    """Every stage DVC ran, as DVC names it (results/<machine>/dvc.yaml:<stage>, or a stage of dvc.yaml)."""
    return sorted(set(re.findall(r"Running stage '([^']+)'", log)))


@pytest.fixture(scope="module")
def world(tmp_path_factory, mirror):
    """The Git origin (a bare repository) and the DVC remote (a directory) the machines share."""
    tmp = tmp_path_factory.mktemp("machines")
    seed = tmp / "seed"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    # the project without any machine's results: a new project's first commit
    keep = [f for f in files if (ROOT / f).is_file() and not f.startswith(("results/", "data/"))]
    copy_tree(ROOT, seed, keep + ["data/.gitignore"])
    p = yaml.safe_load((seed / "params.yaml").read_text())
    p["train"].update(losses=LOSSES, epochs=1, repeats=2, warmup_steps=1)
    p["cost"].update(rounds=3, steps=3, warmup_steps=1)
    (seed / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = machine_env(None, mirror)
    sh("git init -q -b main && git add -A && git commit -qm seed", seed, env)
    sh(f"{WORKFLOW} remote {tmp / 'remote'} && git commit -qam 'remote'", seed, env)
    sh(f"git clone -q --bare {seed} {tmp / 'origin.git'}", tmp, env)
    return tmp, mirror


def machine_env(name, mirror, **extra):
    env = {**os.environ, "MNIST_MIRROR": str(mirror), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for var in ("LOSSBENCH_REQUIRE_DEVICES", "LOSSBENCH_DEBUG", "LOSSBENCH_MACHINE"):
        env.pop(var, None)
    return {**env, **({"LOSSBENCH_MACHINE": name} if name else {}), **extra}


def clone(world, name):
    tmp, mirror = world
    sh(f"git clone -q {tmp / 'origin.git'} {tmp / name}", tmp)
    return tmp / name, machine_env(name, mirror)


def pull(root, env):
    """`make pull`, asserting that Git merged without a conflict (it stops with one otherwise)."""
    log = sh(f"{WORKFLOW} pull", root, env)
    assert not (root / ".git" / "rebase-merge").exists() and "CONFLICT" not in log, log
    return log


def overview(root):
    return json.loads((root / "reports" / "overview.json").read_text())


@pytest.fixture(scope="module")
def machines(world):
    """a and b run; a pushes first, b's push is refused, b pulls and pushes; c pulls and reads. Logs by step."""
    logs = {}
    a, env_a = clone(world, "a")
    b, env_b = clone(world, "b")
    logs["a"] = sh(f"{WORKFLOW} repro", a, env_a)
    logs["b"] = sh(f"{WORKFLOW} repro", b, env_b)
    logs["a-push"] = sh(f"{WORKFLOW} push", a, env_a)
    logs["b-push-refused"] = sh(f"{WORKFLOW} push", b, env_b, ok=False)
    logs["b-pull"] = pull(b, env_b)
    logs["b-push"] = sh(f"{WORKFLOW} push", b, env_b)
    c, env_c = clone(world, "c")
    logs["c-pull"] = pull(c, env_c)
    logs["c"] = sh(f"{WORKFLOW} overview", c, env_c)
    return {"a": a, "b": b, "c": c}, logs


def test_each_machine_runs_its_own_pipeline_only(machines):
    roots, logs = machines
    for m in ("a", "b"):
        stages = [s for s in ran(logs[m]) if s != "download"]
        assert stages and all(s.startswith(f"results/{m}/dvc.yaml:") for s in stages), stages
        assert f"results/{m}/dvc.yaml:train@numpy_mse-cpu-fp32-eager" in stages
        assert "Use `dvc push`" not in logs[m]  # `make push` shares results; DVC's own hint is left out
        assert f"lossbench: this machine's report: results/{m}/report/report.md" in logs[m]
    lock = yaml.safe_load((roots["a"] / "results" / "a" / "dvc.lock").read_text())
    assert "train@numpy_mse-cpu-fp32-eager" in lock["stages"] and not (roots["a"] / "results" / "b").exists()


def test_the_second_push_is_refused_in_one_line_and_the_pull_merges_cleanly(machines, world):
    roots, logs = machines
    tmp, _ = world
    out = logs["b-push-refused"]
    assert out.returncode == 2 and out.stderr.strip() == (
        "machines: git push to origin/main was refused (another machine pushed first?): `make pull`, then "
        "`make push` (each machine commits only its own results/<machine>/: the pull merges cleanly)")
    log = subprocess.run(["git", "log", "--format=@%s", "--name-only", "main"], cwd=tmp / "origin.git",
                         capture_output=True, text=True, check=True).stdout
    commits = [c.strip().split("\n") for c in log.split("@")[1:3]]  # the newest two: subject, then files
    assert commits[0][0].startswith("lossbench results of machine b") and commits[1][0].startswith(
        "lossbench results of machine a")
    # each machine's commit holds its own directory and nothing else
    for (subject, *files), m in zip(commits, "ba"):
        assert files and all(f.startswith(f"results/{m}/") for f in files if f), (subject, files)
    assert "results/a/ committed, pushed to origin/main" in logs["a-push"]


def test_a_reader_pulls_every_machine_and_its_overview_compares_them_without_training(machines):
    roots, logs = machines
    c = roots["c"]
    assert ran(logs["c-pull"] + logs["c"]) == []  # nothing trains, nothing is re-checked
    assert "machines: pulled from" in logs["c-pull"] and "missing" not in logs["c-pull"]
    ov = overview(c)
    assert ov["passed"] is True and ov["machines"] == ["a", "b"]
    assert ov["across"]["numpy_mse-cpu-fp32-eager:a-vs-b"]["passed"] is True
    assert ov["across"]["numpy_mse-cpu-fp32-eager:a-vs-b"]["bitwise_equal_steps"] == 235  # one host: the same bits
    md = (c / "reports" / "overview.md").read_text()
    # every machine's cost is there, with its verdict; no blank cell
    row = next(line for line in md.splitlines() if line.startswith("| numpy_mse-cpu-fp32-eager "))
    assert row.count("equal, cost ") == 2, row
    assert "- not run on a, cuda: " in md and "- not run on b, cuda: " in md
    for m in ("a", "b"):  # the raw results came through DVC
        assert (c / "results" / m / "runs" / "numpy_mse-cpu-fp32-eager" / "steps.csv").is_file()


def test_a_plain_dvc_repro_refuses_another_machines_pipeline_in_one_line(machines, world):
    roots, _ = machines
    _, mirror = world
    out = sh("dvc repro -P", roots["c"], machine_env("c", mirror), ok=False)
    assert out.returncode != 0
    assert re.search(r"check: results/(a|b)/ is machine '\1''s pipeline and this machine is 'c' \(LOSSBENCH_MACHINE\): "
                     r"`make repro` runs this machine's pipeline and the overview", out.stderr), out.stderr
    assert subprocess.run(["git", "status", "--porcelain", "--", "results"], cwd=roots["c"], capture_output=True,
                          text=True).stdout == ""  # nothing of a's or b's was rewritten


def test_uncommitted_loss_files_are_named_before_anything_is_pushed(machines, world):
    """A new loss, trained on a: `make push` refuses until its file and params entry are committed; b then trains it."""
    roots, _ = machines
    _, mirror = world
    a, b = roots["a"], roots["b"]
    env_a, env_b = machine_env("a", mirror), machine_env("b", mirror)
    (a / "losses" / "mine.py").write_text(MINE)
    p = yaml.safe_load((a / "params.yaml").read_text())
    p["train"]["losses"].append("mine")
    p["losses"]["mine"] = {"fn": "losses.mine:my_mse"}
    (a / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    log = sh(f"{WORKFLOW} repro", a, env_a)
    assert "results/a/dvc.yaml:train@mine-cpu-fp32-eager" in ran(log)
    out = sh(f"{WORKFLOW} push", a, env_a, ok=False)
    assert out.returncode == 2 and out.stderr.strip() == (
        "machines: commit these first, the results depend on them: losses/mine.py, params.yaml (`git commit -m "
        "'...' -- losses/mine.py params.yaml`, then `make push` again: it commits and pushes results/a/ itself)")
    sh("git add losses/mine.py && git commit -qm 'my loss' -- losses/mine.py params.yaml", a, env_a)  # as it says
    assert subprocess.run(["git", "show", "--name-only", "--format=", "HEAD"], cwd=a, capture_output=True, text=True,
                          check=True).stdout.split() == ["losses/mine.py", "params.yaml"]
    pull(a, env_a)  # b pushed since: a's own uncommitted results/a/ ride through the rebase
    sh(f"{WORKFLOW} push", a, env_a)
    pull(b, env_b)
    log = sh(f"{WORKFLOW} repro", b, env_b)
    assert [s for s in ran(log) if ":train@" in s] == ["results/b/dvc.yaml:train@mine-cpu-fp32-eager",
                                                        "results/b/dvc.yaml:train@mine-cuda-fp32-eager"]
    ov = overview(b)
    assert ov["across"]["mine-cpu-fp32-eager:a-vs-b"]["passed"] is True
    # b has not pushed: its own regenerated results are uncommitted, and a pull still goes through
    pull(b, env_b)
    out = sh(f"{WORKFLOW} push", b, env_b)
    assert "results/b/ committed, pushed to origin/main" in out
    again = sh(f"{WORKFLOW} push", b, env_b)
    assert "results/b/ unchanged since its last commit" in again and "committed," not in again


def test_a_platform_change_retrains_on_its_own_machine_only(machines, world):
    """Another torch thread count is another platform: a re-trains all of its configurations, b nothing."""
    roots, _ = machines
    _, mirror = world
    a = roots["a"]
    pull(a, machine_env("a", mirror))
    log = sh(f"{WORKFLOW} repro", a, machine_env("a", mirror, OMP_NUM_THREADS="1"))
    trained = [s for s in ran(log) if ":train@" in s and s.endswith("-cpu-fp32-eager")]
    assert trained == [f"results/a/dvc.yaml:train@{l}-cpu-fp32-eager" for l in sorted(LOSSES + ["mine"])]
    run = json.loads((a / "results" / "a" / "runs" / "torch_mse-cpu-fp32-eager" / "run.json").read_text())
    assert run["platform"]["torch_threads"] == 1
    assert not any(s.startswith("results/b/") for s in ran(log))


def test_an_unreachable_remote_is_one_line(machines, world):
    tmp, mirror = world
    d, env = clone(world, "d")
    sh(f"dvc remote modify --local shared url {tmp / 'nowhere'}", d, env)
    out = sh(f"{WORKFLOW} pull", d, env, ok=False)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"machines: DVC remote 'shared' is {tmp / 'nowhere'}, which is not a directory "
                                  "here: mount it, or point this clone at it where it is mounted "
                                  "(`dvc remote modify --local shared url /path`)")
    sh("dvc remote remove --local shared && dvc remote remove shared && git commit -qam 'no remote'", d, env)
    sh(f"{WORKFLOW} repro", d, env)
    out = sh(f"{WORKFLOW} push", d, env, ok=False)
    assert out.returncode == 2 and out.stderr.strip().startswith("machines: no default DVC remote: set one with")


def test_a_run_missing_from_the_remote_is_named(machines, world):
    tmp, mirror = world
    e, env = clone(world, "e")
    (tmp / "empty").mkdir()
    sh(f"dvc remote modify --local shared url {tmp / 'empty'}", e, env)
    out = sh(f"{WORKFLOW} pull", e, env)
    assert re.search(r"machines: results/b: \d+ stage\(s\) whose outputs are not in the remote "
                     + re.escape(str(tmp / "empty")) + r" \([^)]*\): machine 'b' must `make push` \(its report/ is "
                     r"in Git and the overview shows it\)", out), out
    assert out.count("machines: results/b:") == 1  # one line a machine, not one a stage
    log = sh(f"{WORKFLOW} overview", e, env)
    assert "overview: PASS (machines: a, b" in log
