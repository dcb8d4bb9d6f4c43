"""Many machines, one report: three clones, one Git origin and one local-directory DVC remote.

Machine a runs device cpu-a and pushes; machine b pulls, reproduces without
re-training anything a trained (DVC's own output says so), runs cpu-b and pushes;
machine c pulls and its report covers both. The two "devices" are one CPU here,
told apart as a user tells two machines apart: LOSSBENCH_MACHINE, which the
device label names and the platform description records.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_tree
from tests.test_pipeline import ran, sh

pytestmark = pytest.mark.slow
LOSSES = ["torch_mse", "numpy_mse"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, mirror):
    """The Git origin (a bare repository) and the DVC remote (a directory) the machines share."""
    tmp = tmp_path_factory.mktemp("machines")
    seed = tmp / "seed"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    keep = [f for f in files if (ROOT / f).is_file() and not f.startswith("reports/") and f != "dvc.lock"
            and (not f.startswith("data/") or f.endswith(".gitignore"))]
    copy_tree(ROOT, seed, keep)
    p = yaml.safe_load((seed / "params.yaml").read_text())
    p["train"].update(losses=LOSSES, devices=["cpu-a", "cpu-b"], epochs=1, repeats=2, warmup_steps=1)
    p["cost"].update(rounds=3, steps=3, warmup_steps=1)
    (seed / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = machine_env(None, mirror)
    sh("git init -q -b main && git add -A && git commit -qm seed", seed, env)
    sh(f"python -m lossbench.machines remote {tmp / 'remote'} && git commit -qam 'remote'", seed, env)
    sh(f"git clone -q --bare {seed} {tmp / 'origin.git'}", tmp, env)
    return tmp, mirror


def machine_env(name, mirror):
    env = {**os.environ, "MNIST_MIRROR": str(mirror), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for var in ("LOSSBENCH_REQUIRE_DEVICES", "LOSSBENCH_DEBUG", "LOSSBENCH_MACHINE"):
        env.pop(var, None)
    return {**env, "LOSSBENCH_MACHINE": name} if name else env


def clone(world, name):
    tmp, mirror = world
    sh(f"git clone -q {tmp / 'origin.git'} {tmp / name}", tmp)
    return tmp / name, machine_env(name, mirror)


def summary(root):
    return json.loads((root / "reports" / "summary.json").read_text())


@pytest.fixture(scope="module")
def machines(world):
    """a runs and pushes; b pulls, runs and pushes; c pulls and reports. Their DVC logs, by machine."""
    logs = {}
    a, env = clone(world, "a")
    logs["a"] = sh("dvc repro", a, env)
    logs["a-push"] = sh("python -m lossbench.machines push", a, env)
    b, env = clone(world, "b")
    logs["b-pull"] = sh("python -m lossbench.machines pull", b, env)
    logs["b"] = sh("dvc repro", b, env)
    logs["b-push"] = sh("python -m lossbench.machines push", b, env)
    c, env = clone(world, "c")
    logs["c-pull"] = sh("python -m lossbench.machines pull", c, env)
    logs["c"] = sh("dvc repro", c, env)
    return {"a": a, "b": b, "c": c}, logs


def test_a_trains_its_device_and_records_the_other_as_not_run(machines):
    roots, logs = machines
    assert ran(logs["a"]) == ["check@cpu-a", "check@cpu-b", "cost@cpu-a", "cost@cpu-b", "download", "report",
                              "train@numpy_mse-cpu-a", "train@numpy_mse-cpu-b", "train@torch_mse-cpu-a",
                              "train@torch_mse-cpu-b"]
    run = json.loads((roots["a"] / "data" / "runs" / "numpy_mse-cpu-b" / "run.json").read_text())
    assert run["status"] == "unavailable"
    assert run["reason"].startswith("cpu-b runs on machine 'b' (LOSSBENCH_MACHINE=b there); this machine is 'a'; "
                                    "no result of it is here: `make push` on that machine, then `make pull` here")


def test_b_reproduces_without_retraining_what_a_trained(machines):
    roots, logs = machines
    trained = [s for s in ran(logs["b"]) if s.startswith(("train@", "cost@"))]
    assert trained == ["cost@cpu-b", "train@numpy_mse-cpu-b", "train@torch_mse-cpu-b"]
    for stage in ("train@torch_mse-cpu-a", "train@numpy_mse-cpu-a", "cost@cpu-a"):
        assert f"Stage '{stage}' didn't change, skipping" in logs["b"]
    assert "check: cpu-a: not run here; the results its machine pushed are kept" in logs["b"]


def test_the_report_in_a_third_clone_covers_both_machines_and_retrains_nothing(machines):
    roots, logs = machines
    assert ran(logs["c"]) == ["check@cpu-a", "check@cpu-b"]  # b's report is already the report of everything
    s = summary(roots["c"])
    assert s["passed"] is True
    assert {n: c["status"] for n, c in s["configs"].items()} == {
        f"{l}-{d}": "ran" for l in LOSSES for d in ("cpu-a", "cpu-b")}
    assert {n: c["machine"].split(" ")[0] for n, c in s["configs"].items()} == {
        f"{l}-{d}": d[-1] for l in LOSSES for d in ("cpu-a", "cpu-b")}
    md = (roots["c"] / "reports" / "report.md").read_text()
    assert "- `cpu-a`: " in md and "; ran on a (" in md and "; ran on b (" in md
    # the same loss on two machines is compared like any two devices
    assert s["cross_device"]["numpy_mse:cpu-a-vs-cpu-b"]["passed"] is True


def test_pushes_commit_the_lock_and_the_report(machines, world):
    roots, logs = machines
    tmp, _ = world
    log = subprocess.run(["git", "log", "--format=%s", "main"], cwd=tmp / "origin.git", capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert log[:2] == ["lossbench results from b", "lossbench results from a"]
    assert "pushed outputs and run-cache to" in logs["a-push"] and "dvc.lock and reports to origin/main" in logs["a-push"]


def test_a_params_change_reruns_each_devices_stages_on_its_own_machine(machines, world):
    """a changes the cost params: a re-times cpu-a, says cpu-b is not timed here, and leaves b's entry for b."""
    roots, _ = machines
    tmp, mirror = world
    a, b = roots["a"], roots["b"]
    env_a, env_b = machine_env("a", mirror), machine_env("b", mirror)
    sh("python -m lossbench.machines pull", a, env_a)
    text = (a / "params.yaml").read_text()
    (a / "params.yaml").write_text(text.replace("rounds: 3", "rounds: 4"))
    sh("git commit -qam 'cost.rounds: 4'", a, env_a)
    log = sh("dvc repro", a, env_a)
    assert [s for s in ran(log) if s.startswith("cost@")] == ["cost@cpu-a", "cost@cpu-b"]
    assert "cost: cpu-b: not timed: cpu-b runs on machine 'b'" in log
    b_entry = yaml.safe_load((b / "dvc.lock").read_text())["stages"]["cost@cpu-b"]
    sh("python -m lossbench.machines push", a, env_a)
    assert yaml.safe_load((a / "dvc.lock").read_text())["stages"]["cost@cpu-b"] == b_entry  # b's to re-run
    sh("python -m lossbench.machines pull", b, env_b)
    log = sh("dvc repro", b, env_b)
    assert [s for s in ran(log) if s.startswith(("cost@", "train@"))] == ["cost@cpu-b"]
    cost = json.loads((b / "data" / "cost" / "cpu-b.json").read_text())
    assert cost["status"] == "ran" and cost["params"]["rounds"] == 4


def test_an_unreachable_remote_is_one_line(machines, world):
    roots, _ = machines
    tmp, mirror = world
    d, env = clone(world, "d")
    sh(f"dvc remote modify --local shared url {tmp / 'nowhere'}", d, env)
    out = sh("python -m lossbench.machines pull", d, env, ok=False)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"machines: DVC remote 'shared' is {tmp / 'nowhere'}, which is not a directory "
                                  "here: mount it, or point this clone at it where it is mounted "
                                  "(`dvc remote modify --local shared url /path`)")
    sh("dvc remote remove --local shared && dvc remote remove shared && git commit -qam 'no remote'", d, env)
    out = sh("python -m lossbench.machines push", d, env, ok=False)
    assert out.returncode == 2 and out.stderr.strip().startswith("machines: no default DVC remote: set one with")


def test_a_run_missing_from_the_remote_is_named_and_reported_not_run(machines, world):
    tmp, mirror = world
    e, env = clone(world, "e")
    (tmp / "empty").mkdir()
    sh(f"dvc remote modify --local shared url {tmp / 'empty'}", e, env)
    out = sh("python -m lossbench.machines pull", e, env)
    assert ("machines: train@numpy_mse-cpu-b: dvc.lock names results the remote " + str(tmp / "empty")
            + " does not have: the machine that ran it must `make push`") in out
    log = sh("dvc repro", e, env)  # machine e runs neither device, and nothing of them came: both not run
    run = json.loads((e / "data" / "runs" / "numpy_mse-cpu-b" / "run.json").read_text())
    assert run["status"] == "unavailable" and "no result of it is here" in run["reason"], log
