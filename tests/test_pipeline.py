"""End to end: `dvc repro` in a fresh copy of the repository, on real MNIST."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from lossbench.config import load_params
from tests.conftest import ROOT, copy_tree

pytestmark = pytest.mark.slow


def sh(cmd, cwd, env=None):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=True)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mirror):
    """A git repo holding exactly the project's files, after one real `dvc repro`."""
    dst = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    # what a clone has: sources, never outputs (data/ keeps only its .gitignore files)
    keep = [f for f in files if (ROOT / f).is_file() and not f.startswith("reports/")
            and (not f.startswith("data/") or f.endswith(".gitignore"))]
    copy_tree(ROOT, dst, keep)
    env = {**os.environ, "MNIST_MIRROR": str(mirror), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("LOSSBENCH_REQUIRE_DEVICES", None)
    sh("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm init", dst)
    log = sh("dvc repro", dst, env)
    return dst, env, log


def test_repro_trains_every_configuration(repo):
    root, _, _ = repo
    params = load_params(root / "params.yaml")
    for loss in params.train.losses:
        run = json.loads((root / "data" / "runs" / f"{loss}-cpu" / "run.json").read_text())
        steps = pd.read_csv(root / "data" / "runs" / f"{loss}-cpu" / "steps.csv")
        assert run["status"] == "ran" and len(steps) == 470 * params.train.repeats
        assert steps.groupby("repeat").size().tolist() == [470] * params.train.repeats
        assert (steps.loc[steps["repeat"] == 1, "epoch"].value_counts().sort_index().tolist() == [235, 235])
        cuda = json.loads((root / "data" / "runs" / f"{loss}-cuda" / "run.json").read_text())
        assert cuda["status"] == ("ran" if torch.cuda.is_available() else "unavailable")


def test_report_verdicts_on_real_mnist(repo):
    root, _, _ = repo
    m = json.loads((root / "reports" / "metrics.json").read_text())
    c = m["configs"]
    assert m["passed"] is True
    assert {l: c[f"{l}-cpu"]["verdict"] for l in ("functional_mse", "module_mse", "numpy_mse", "numpy_detached")} == {
        "functional_mse": "equal", "module_mse": "equal", "numpy_mse": "equal", "numpy_detached": "differs"}
    assert c["numpy_mse-cpu"]["max_abs_diff"] <= m["tolerance"]["same_device"]["atol"]
    assert c["numpy_detached-cpu"]["weights_changed"] is False
    if not torch.cuda.is_available():
        assert c["numpy_mse-cuda"]["verdict"] == "not run"
        assert "## Not run" in (root / "reports" / "report.md").read_text()
    for png in ("loss-cpu.png", "absdiff-cpu.png", "step-time.png"):
        with Image.open(root / "reports" / png) as img:
            img.verify()


def test_metrics_and_plots_are_visible_to_dvc(repo):
    root, env, _ = repo
    shown = json.loads(sh("dvc metrics show --json", root, env))
    assert shown[""]["data"]["reports/metrics.json"]["data"]["passed"] is True
    plots = json.loads(sh("dvc plots show --json", root, env))
    assert "reports/plots/loss/cpu.csv" in plots["data"] and "reports/plots/absdiff/cpu.csv" in plots["data"]


def test_second_repro_retrains_nothing(repo):
    root, env, _ = repo
    log = sh("dvc repro", root, env)
    assert "Running stage 'platform'" in log  # always re-checked...
    assert "Running stage 'train@" not in log and "Running stage 'report'" not in log  # ...nothing else re-runs


def test_repro_regenerates_a_deleted_picture(repo):
    root, env, _ = repo
    (root / "reports" / "step-time.png").unlink()
    log = sh("dvc repro", root, env)
    assert "Running stage 'report'" in log and "Running stage 'train@" not in log
    with Image.open(root / "reports" / "step-time.png") as img:
        img.verify()
