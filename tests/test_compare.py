"""`make compare` on real commits in a temporary clone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lossbench import compare
from tests.conftest import ROOT

BASE = {
    "passed": True,
    "failures": 0,
    "platform": {"cpu": {"cpu": "CPU X", "gpu": None, "torch": "2.14.1", "cuda": None, "python": "3.11", "threads": 2}},
    "configs": {
        "torch_mse-cpu-fp32-eager": {"loss": "torch_mse", "device": "cpu", "verdict": "reference", "passed": True,
                          "max_abs_diff": 0.0, "median_step_ms": 5.0, "cost_step_ms": [5.0, 4.8, 5.2],
                          "reference": None},
        "numpy_mse-cpu-fp32-eager": {"loss": "numpy_mse", "device": "cpu", "verdict": "equal", "passed": True,
                          "max_abs_diff": 3e-6, "median_step_ms": 5.2, "cost_step_ms": [5.2, 5.0, 5.4],
                          "reference": "torch_mse"},
        "numpy_mse-cuda-fp32-eager": {"loss": "numpy_mse", "device": "cuda", "verdict": "not run", "passed": True,
                           "reason": "no GPU here"},
    },
}


def git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A clone of this repository with its reports committed by each test."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the code under test is the working tree's, committed or not
    names = ["Makefile", "params.yaml"] + [str(p.relative_to(ROOT)) for p in (ROOT / "lossbench").glob("*.py")]
    for name in names:
        (clone / name).parent.mkdir(exist_ok=True)
        (clone / name).write_text((ROOT / name).read_text())
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "working tree", "--allow-empty")
    return clone


LOSSES = "global_step,torch_mse,numpy_mse\n1,0.25,0.25\n2,0.2,0.2\n3,0.15,0.15\n4,0.1,0.1\n"


REPORT = Path("results", "local", "report")  # the report of the machine that has no name


def commit_metrics(repo, summary, msg, losses=LOSSES, folder=REPORT, plot="cpu-fp32-eager.csv"):
    """Commit a report's summary.json and its per-step loss data on the CPU; returns the commit."""
    for name, text in (("summary.json", json.dumps(summary)), (f"plots/loss/{plot}", losses)):
        path = repo / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-f", str(folder))  # reports/ (where older revisions kept it) is ignored now
    git(repo, "commit", "-qm", msg)
    return git(repo, "rev-parse", "HEAD")


def changed(**updates):
    m = json.loads(json.dumps(BASE))
    for name, fields in updates.items():
        m["configs"][name].update(fields)
    return m


def run_make(repo, a, b=None):
    cmd = ["make", "-s", "compare", f"A={a}"] + ([f"B={b}"] if b else [])
    # the clone has no .venv of its own: use the one running these tests, as installed
    cmd += [f"BIN={Path(sys.executable).parent}", "STAMP="]
    env = {k: v for k, v in os.environ.items() if k != "LOSSBENCH_MACHINE"}
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)


def test_identical_commits_exit_zero(repo):
    a = commit_metrics(repo, BASE, "a")
    out = run_make(repo, a, a)
    assert out.returncode == 0, out.stderr
    assert "compare: nothing got worse" in out.stdout
    assert "\nnumpy_mse-cpu-fp32-eager\n|" in out.stdout  # a table for what ran
    # what ran at neither side: one line per device with its reason, no table
    assert "\nnumpy_mse-cuda-fp32-eager\n" not in out.stdout
    assert "\ncuda: not run at A nor at B (1: numpy_mse-cuda-fp32-eager): no GPU here\n" in out.stdout


def test_a_configuration_that_stopped_running_keeps_its_table():
    gone = changed(**{"numpy_mse-cpu-fp32-eager": {"verdict": "not run", "passed": True, "reason": "no GPU here"}})
    tables, _ = compare.diff(BASE, gone, 2.0)
    assert tables["numpy_mse-cpu-fp32-eager"].loc["verdict", "B"] == "not run (pass)"
    assert compare.not_run_lines(BASE, gone) == ["cuda: not run at A nor at B (1: numpy_mse-cuda-fp32-eager): no GPU here"]


def test_slower_step_is_reported_and_fails(repo):
    a = commit_metrics(repo, BASE, "a")
    b = commit_metrics(repo, changed(**{"numpy_mse-cpu-fp32-eager": {"cost_step_ms": [15.6, 15.0, 16.2]}}), "b")
    out = run_make(repo, a, b)
    assert out.returncode != 0
    assert "3.00 (SLOWER beyond 2x)" in out.stdout
    assert ("numpy_mse-cpu-fp32-eager: timed step 5.200 [5.000, 5.400] -> 15.600 [15.000, 16.200] ms (3.00x > 2x, "
            "intervals disjoint)") in out.stderr


def test_a_slowdown_the_intervals_do_not_show_does_not_fail():
    noisy = changed(**{"numpy_mse-cpu-fp32-eager": {"cost_step_ms": [15.6, 4.0, 30.0]}})
    tables, problems = compare.diff(BASE, noisy, 2.0)
    assert problems == [] and tables["numpy_mse-cpu-fp32-eager"].loc["timed step (ms)", "B / A"] == "3.00 (within noise)"


def test_trajectories_bitwise_equal_or_where_they_first_differ(repo):
    a = commit_metrics(repo, BASE, "a")
    b = commit_metrics(repo, BASE, "b", LOSSES.replace("3,0.15,0.15", "3,0.15,0.1500001").replace(
        "4,0.1,0.1", "4,0.1,0.1002"))
    out = run_make(repo, a, b)
    assert out.returncode == 0, out.stderr
    assert "torch_mse-cpu-fp32-eager: trajectory bitwise equal (4 steps)" in out.stdout
    assert ("numpy_mse-cpu-fp32-eager: trajectory CHANGED: max |diff| 0.0002 at global step 4, first different at global "
            "step 3 (2 of 4 steps differ)") in out.stdout


def test_worse_verdict_fails(repo):
    a = commit_metrics(repo, BASE, "a")
    b = commit_metrics(repo, changed(**{"numpy_mse-cpu-fp32-eager": {"verdict": "differs", "passed": False,
                                                           "max_abs_diff": 0.01}}), "b")
    out = run_make(repo, a, b)
    assert out.returncode != 0
    assert "numpy_mse-cpu-fp32-eager: verdict got worse: equal (pass) -> differs (FAIL)" in out.stderr
    assert "| max |diff|" in out.stdout.replace("max \\|diff\\|", "max |diff|")


def test_a_failing_configuration_new_at_b_fails(repo):
    a = commit_metrics(repo, BASE, "a")
    m = json.loads(json.dumps(BASE))
    m["configs"]["mine-cpu-fp32-eager"] = {"loss": "mine", "device": "cpu", "verdict": "differs", "expected": "equal",
                                "passed": False, "reference": "torch_mse"}
    m.update(passed=False, failures=1)
    b = commit_metrics(repo, m, "b")
    out = run_make(repo, a, b)
    assert out.returncode != 0
    assert "mine-cpu-fp32-eager: new at B, and it fails: differs, expected equal" in out.stderr
    assert "B's report fails (passed: false, 1 failure(s); passed at A)" in out.stderr


def test_overall_flag_turning_false_fails_even_when_every_row_passes(repo):
    a = commit_metrics(repo, BASE, "a")
    m = json.loads(json.dumps(BASE))
    m.update(passed=False, failures=1)  # e.g. a cross-device failure, which no configuration row carries
    b = commit_metrics(repo, m, "b")
    out = run_make(repo, a, b)
    assert out.returncode != 0 and "B's report fails (passed: false, 1 failure(s); passed at A)" in out.stderr


def test_changed_reference_fails_and_says_so(repo):
    a = commit_metrics(repo, BASE, "a")
    b = commit_metrics(repo, changed(**{"numpy_mse-cpu-fp32-eager": {"reference": "module_mse"}}), "b")
    out = run_make(repo, a, b)
    assert out.returncode != 0
    assert "numpy_mse-cpu-fp32-eager: reference changed: torch_mse -> module_mse (its verdicts are not comparable)" in out.stderr
    assert "CHANGED" in out.stdout


def test_workspace_is_the_default_b(repo):
    a = commit_metrics(repo, BASE, "a")
    (repo / REPORT / "summary.json").write_text(
        json.dumps(changed(**{"torch_mse-cpu-fp32-eager": {"cost_step_ms": [2.0, 1.9, 2.1]}})))
    out = run_make(repo, a)
    assert out.returncode == 0 and "B = workspace" in out.stdout and "0.40 (faster beyond 2x)" in out.stdout


def test_cost_across_platforms_is_labelled_not_failed():
    other = changed(**{"numpy_mse-cpu-fp32-eager": {"cost_step_ms": [52.0, 51.0, 53.0]}})
    other["platform"]["cpu"]["cpu"] = "CPU Y"
    tables, problems = compare.diff(BASE, other, 1.5)
    assert problems == []
    t = tables["numpy_mse-cpu-fp32-eager"]
    assert t.loc["timed step (ms)", "B / A"] == "10.00 (platforms differ: not comparable)"
    assert t.loc["platform", "B / A"] == "DIFFERENT"


def test_unknown_revision_is_a_clear_error(repo):
    with pytest.raises(compare.CompareError,
                       match=r"results/local/report/summary.json: not found at revision 'no-such-rev'"):
        compare.read_summary("no-such-rev", "local", repo)


def test_a_report_from_before_machine_folders_compares_with_one_after(repo):
    """reports/ then, keys <loss>-<device> and plots per device (before the precision axis): fp32, eager now."""
    git(repo, "rm", "-rq", str(REPORT))  # a revision from before machine folders: only reports/
    old = {**BASE, "configs": {k.removesuffix("-fp32-eager"): v for k, v in BASE["configs"].items()}}
    a = commit_metrics(repo, old, "one report, reports/", folder=Path("reports"), plot="cpu.csv")
    git(repo, "rm", "-rq", "reports")
    b = commit_metrics(repo, BASE, "the machine's report, results/local/report/")
    out = run_make(repo, a, b)
    assert out.returncode == 0, out.stderr
    assert f"A = {a} (reports), B = {b} (results/local/report)" in out.stdout
    assert "numpy_mse-cpu-fp32-eager: trajectory bitwise equal (4 steps)" in out.stdout
    other = subprocess.run(
        [sys.executable, "-m", "lossbench.compare", a, b, "--machine", "h100"], cwd=repo, capture_output=True, text=True)
    assert other.returncode == 2 and "results/h100/report/summary.json: not found at revision" in other.stderr


def test_committed_report_compares_with_itself():
    """The repository's own committed report is readable by compare."""
    _, m = compare.read_summary("HEAD", "local", ROOT)
    tables, problems = compare.diff(m, m, 1.5)
    assert problems == [] and "torch_mse-cpu-fp32-eager" in tables
