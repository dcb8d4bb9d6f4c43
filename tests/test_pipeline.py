"""End to end: `make repro`'s command in a fresh copy of the repository, on real MNIST.

The tests share one repository, trained once with the default params and committed. Some read its
results; the others change it (a user's loss added, broken, fixed; bad params; the example losses), say
what DVC re-ran, and are given it back as it was (``restored``): the tests hold in any order.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from lossbench.config import load_params
from lossbench.configuration import matrix
from tests.conftest import ROOT, copy_tree, reduced_project, repro, stages_ran

pytestmark = pytest.mark.slow
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: the no-GPU path is not testable")


CHECKS = ["check"]  # one check stage for every device, run every time
REPRO = "python -m lossbench.workflow repro"  # what `make repro` runs after validating params.yaml
MACHINE = Path("results", "local")  # this machine's results: LOSSBENCH_MACHINE is unset here
RUNS, REPORT = MACHINE / "runs", MACHINE / "report"


def sh(cmd, cwd, env=None, ok=True):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=True)
    if ok:
        assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr if ok else out


def ran(log):
    """The stages of this machine's pipeline DVC ran (not skipped, not restored from its run-cache)."""
    return sorted({s.removeprefix(f"{MACHINE}/dvc.yaml:") for s in re.findall(r"Running stage '([^']+)'", log)})


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mirror):
    """A git repo holding exactly the project's files, after one real `dvc repro`."""
    dst = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    # what a clone has: sources, never outputs (data/ keeps only its .gitignore files)
    keep = [f for f in files if ((ROOT / f).is_file() or (ROOT / f).is_symlink()) and "/report/" not in f
            and (not f.startswith("data/") or f.endswith(".gitignore"))]
    copy_tree(ROOT, dst, keep)
    env = {**os.environ, "MNIST_MIRROR": str(mirror), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for var in ("LOSSBENCH_REQUIRE_DEVICES", "LOSSBENCH_DEBUG", "LOSSBENCH_MACHINE"):
        env.pop(var, None)
    sh("git init -q && git config user.name t && git config user.email t@t && git add -A && git commit -qm init",
       dst)
    log = sh(REPRO, dst, env)
    sh("git add -A && git commit -qm 'the default pipeline, trained' && git tag trained", dst)
    return dst, env, log


@pytest.fixture
def restored(repo):
    """The shared repository, given back after the test as the default pipeline left it: Git's files reset to that
    commit (params.yaml, the lock, the report, a loss file), new files removed, DVC's outputs checked out."""
    root, env, _ = repo
    yield repo
    sh("git reset -q --hard trained && git clean -fdq && dvc checkout -q", root, env)


def metrics(root):
    """Every row in full (summary.json); metrics.json holds DVC's short subset."""
    return json.loads((root / REPORT / "summary.json").read_text())


def edit_params(root, fn):
    p = yaml.safe_load((root / "params.yaml").read_text())
    fn(p)
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_repro_trains_every_configuration(repo):
    root, _, log = repo
    params = load_params(root / "params.yaml")
    assert ran(log)[:1] == CHECKS and log.index(f"Running stage '{MACHINE}/dvc.yaml:check'") < \
        log.index(f"Running stage '{MACHINE}/dvc.yaml:train@")
    for loss in params.train.losses:
        run = json.loads((root / RUNS / f"{loss}-cpu-fp32-eager" / "run.json").read_text())
        steps = pd.read_csv(root / RUNS / f"{loss}-cpu-fp32-eager" / "steps.csv")
        assert run["status"] == "ran" and len(steps) == 470 * params.train.repeats
        assert steps.groupby("repeat").size().tolist() == [470] * params.train.repeats
        assert (steps.loc[steps["repeat"] == 1, "epoch"].value_counts().sort_index().tolist() == [235, 235])
        cuda = json.loads((root / RUNS / f"{loss}-cuda-fp32-eager" / "run.json").read_text())
        assert cuda["status"] == ("ran" if torch.cuda.is_available() else "unavailable")


# ---- An independent golden: the tutorial's own loop, written here from the tutorial, no lossbench import ----

def tutorial_losses(data_root, loss_name):
    """The tutorial, as a user would type it: seeds, model, DataLoader + ToTensor, Adam, 2 epochs."""
    import random

    import torchvision
    from torch import nn

    class NumpyMSE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, t):
            ctx.save_for_backward(x, t)
            xn, tn = x.detach().cpu().numpy(), t.detach().cpu().numpy()
            return torch.tensor(np.mean((xn - tn) ** 2), dtype=x.dtype, device=x.device)

        @staticmethod
        def backward(ctx, grad):
            x, t = ctx.saved_tensors
            return grad * 2 * (x - t) / x.numel(), None

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    model = nn.Sequential(  # 784-128-64-12-3-12-64-128-784, built right after seeding
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3),
        nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 784),
        nn.Sigmoid())
    dataset = torchvision.datasets.MNIST(data_root, train=True, download=False,
                                         transform=torchvision.transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=False)
    criterion = nn.MSELoss() if loss_name == "torch_mse" else NumpyMSE.apply
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = []
    for _ in range(2):
        for images, _labels in loader:
            x = images.view(images.size(0), -1)  # (B, 784), input and target
            loss = criterion(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())  # the loss before this step's update
    return out


@pytest.mark.parametrize("loss", ["torch_mse", "numpy_mse"])
def test_pipeline_equals_the_tutorial_written_independently(repo, loss):
    """Not lossbench against itself: the default pipeline's steps.csv against the tutorial's loop, bit for bit."""
    root, _, _ = repo
    steps = pd.read_csv(root / RUNS / f"{loss}-cpu-fp32-eager" / "steps.csv")
    ours = steps.loc[steps["repeat"] == 1, "loss"].map(float.hex).tolist()
    theirs = [float.hex(v) for v in tutorial_losses(root / "data", loss)]
    assert len(theirs) == 470 and len(ours) == 470
    equal = sum(a == b for a, b in zip(ours, theirs))
    assert equal == 470, f"{loss}: {equal} of 470 steps bitwise equal to the tutorial's loop"


def test_dvc_names_each_train_stage_and_run_directory_by_the_configurations_key(repo):
    """The key is derived in one place (Configuration); dvc.yaml's matrix template must give the same names."""
    root, env, _ = repo
    listed = sh(f"dvc stage list --name-only {MACHINE}/dvc.yaml", root, env).split()
    stages = {s.removeprefix(f"{MACHINE}/dvc.yaml:") for s in listed if ":train@" in s}
    configs = matrix(load_params(root / "params.yaml").train)
    assert stages == {c.stage for c in configs}
    assert {p.name for p in (root / RUNS).iterdir() if p.is_dir()} == {c.run_dir(root / RUNS).name for c in configs}


def test_a_configuration_in_the_pipeline_equals_its_solo_run(repo, tmp_path):
    # one configuration's own process, nothing else in it: the pipeline's outputs must be the same bits
    root, env, _ = repo
    solo = tmp_path / "solo"
    sh(f"python -m stages.train --check {MACHINE}/check/cpu/numpy_mse-cpu-fp32-eager.json --params params.yaml --data data "
       f"--out {solo}", root, env)
    run = root / RUNS / "numpy_mse-cpu-fp32-eager"
    a, b = (pd.read_csv(d / "steps.csv") for d in (run, solo))
    assert a["loss"].map(float.hex).tolist() == b["loss"].map(float.hex).tolist()
    for name in ("grads.npz", "weights.npz"):
        with np.load(run / name) as x, np.load(solo / name) as y:
            assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
    ja, jb = (json.loads((d / "run.json").read_text()) for d in (run, solo))
    assert [r["weights_end"] for r in ja["repeats"]] == [r["weights_end"] for r in jb["repeats"]]


def test_report_verdicts_on_real_mnist(repo):
    root, _, _ = repo
    m = metrics(root)
    c = m["configs"]
    assert m["passed"] is True
    assert {l: c[f"{l}-cpu-fp32-eager"]["verdict"] for l in
            ("functional_mse", "module_mse", "numpy_mse", "numpy_detached", "wrong_backward")} == {
        "functional_mse": "equal", "module_mse": "equal", "numpy_mse": "equal", "numpy_detached": "differs",
        "wrong_backward": "differs"}
    assert c["numpy_mse-cpu-fp32-eager"]["max_abs_diff"] <= m["tolerance"]["same_device"]["atol"]
    assert c["numpy_mse-cpu-fp32-eager"]["grad_within"] is True
    assert c["numpy_detached-cpu-fp32-eager"]["weights_changed"] is False and c["numpy_detached-cpu-fp32-eager"]["grad_factor"] == 0
    # the gradient check names the culprit at step 1, where the trajectory alone says nothing yet
    assert c["wrong_backward-cpu-fp32-eager"]["grad_factor"] == pytest.approx(2.0, abs=1e-3)
    assert ("wrong_backward-cpu-fp32-eager** vs torch_mse: step 1: every gradient is 2.000x the reference's"
            in (root / REPORT / "report.md").read_text())
    if not torch.cuda.is_available():
        assert c["numpy_mse-cuda-fp32-eager"]["verdict"] == "not run"
        assert "## Not run" in (root / REPORT / "report.md").read_text()
    for png in ("loss-cpu-fp32-eager.png", "absdiff-cpu-fp32-eager.png", "step-time.png"):
        with Image.open(root / REPORT / png) as img:
            img.verify()


def test_metrics_and_plots_are_visible_to_dvc(repo):
    root, env, _ = repo
    shown = json.loads(sh("dvc metrics show --json", root, env))
    assert shown[""]["data"][f"{REPORT}/metrics.json"]["data"]["passed"] is True
    # at DVC's default precision a 3e-6 drift still shows: as the share of its tolerance used
    header, values = [re.split(r"\s{2,}", line.strip()) for line in sh("dvc metrics show", root, env).splitlines()[:2]]
    shown = float(values[header.index("configs.numpy_mse-cpu-fp32-eager.tol_used")])
    used = metrics(root)["configs"]["numpy_mse-cpu-fp32-eager"]["tol_used"]
    assert 0 < used < 1 and shown == round(used, 5) > 0
    plots = json.loads(sh("dvc plots show --json", root, env))
    assert f"{REPORT}/plots/loss/cpu-fp32-eager.csv" in plots["data"] and f"{REPORT}/plots/absdiff/cpu-fp32-eager.csv" in plots["data"]


def test_second_repro_retrains_nothing(repo):
    root, env, _ = repo
    assert ran(sh(REPRO, root, env)) == CHECKS  # re-checked every time; nothing else re-runs


def test_lr_written_1e_3_is_the_same_float_to_dvc_and_to_us(repo):
    root, env, _ = repo
    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(text.replace("lr: 1.0e-3", "lr: 1e-3"))
    try:
        assert ran(sh(REPRO, root, env)) == CHECKS  # accepted, and nothing retrains
    finally:
        (root / "params.yaml").write_text(text)


@NO_GPU
def test_require_devices_stops_a_cached_workspace(repo):
    root, env, _ = repo
    out = sh(REPRO, root, {**env, "LOSSBENCH_REQUIRE_DEVICES": "1"}, ok=False)
    assert out.returncode != 0 and set(ran(out.stdout + out.stderr)) <= set(CHECKS)
    assert "check: params.yaml: train.devices: 'cuda' cannot run here and LOSSBENCH_REQUIRE_DEVICES=1" in out.stderr


@pytest.mark.parametrize("edit, line", [
    (lambda p: p["train"]["losses"].append("nosuch.module:f"),
     "check: params.yaml: train.losses: 'nosuch.module:f': cannot import module 'nosuch.module'"),
    (lambda p: p["train"]["devices"].append("tpu"),
     "check: params.yaml: train.devices.2: expected 'cpu' or 'cuda'"),
    (lambda p: p["train"].update(epochs=0), "check: params.yaml: train.epochs: expected greater than 0"),
])
def test_bad_input_stops_in_seconds_before_any_output_is_deleted(repo, edit, line):
    root, env, _ = repo
    text = (root / "params.yaml").read_text()
    before = (root / RUNS / "numpy_mse-cpu-fp32-eager" / "steps.csv").read_bytes()
    edit_params(root, edit)
    try:
        t0 = time.perf_counter()
        out = sh(REPRO, root, env, ok=False)
        seconds = time.perf_counter() - t0
    finally:
        (root / "params.yaml").write_text(text)
    assert out.returncode != 0 and set(ran(out.stdout + out.stderr)) <= set(CHECKS), out.stdout
    assert line in out.stderr and "Traceback" not in out.stderr
    assert (root / RUNS / "numpy_mse-cpu-fp32-eager" / "steps.csv").read_bytes() == before
    print(f"stopped after {seconds:.1f} s")


MINE = "def my_mse(input, target):\n    return ((input - target) ** 2).mean(){bug}\n"


def test_a_users_loss_is_a_dependency(restored):
    """Add a loss: only its configurations train. Break it: only they re-run, and the verdict follows. Fix it."""
    root, env, _ = restored
    (root / "losses" / "mine.py").write_text(MINE.format(bug=""))

    def add(p):
        p["train"]["losses"].append("mine")
        p["losses"]["mine"] = {"fn": "losses.mine:my_mse"}

    edit_params(root, add)
    log = sh(REPRO, root, env)
    # only the new loss trains: its reference's stage, where the reference's noise ensemble is computed, does not
    assert ran(log) == CHECKS + ["report", "train@mine-cpu-fp32-eager", "train@mine-cuda-fp32-eager"]
    mine = metrics(root)["configs"]["mine-cpu-fp32-eager"]
    assert mine["verdict"] == "equal" and mine["cost_ratio_low"] <= mine["cost_ratio"] <= mine["cost_ratio_high"]
    src = json.loads((root / RUNS / "mine-cpu-fp32-eager" / "run.json").read_text())["loss_source"]
    assert list(src["files"]) == ["losses/mine.py"]

    (root / "losses" / "mine.py").write_text(MINE.format(bug=" * 2"))  # a bug: the loss (and gradient) doubled
    out = sh(REPRO, root, env, ok=False)
    assert out.returncode != 0 and ran(out.stdout + out.stderr) == CHECKS + ["report",
                                                                    "train@mine-cpu-fp32-eager", "train@mine-cuda-fp32-eager"]
    assert "mine-cpu-fp32-eager: expected equal to torch_mse-cpu-fp32-eager, but step 1: every gradient is 2.000x" in out.stderr
    assert metrics(root)["configs"]["mine-cpu-fp32-eager"]["passed"] is False

    (root / "losses" / "mine.py").write_text(MINE.format(bug=""))  # fixed: back to a PASS, nothing else trains
    log = sh(REPRO, root, env)
    assert [s for s in ran(log) if s.startswith("train@") and not s.startswith("train@mine")] == []
    assert metrics(root)["passed"] is True and metrics(root)["configs"]["mine-cpu-fp32-eager"]["verdict"] == "equal"


def test_example_losses_equal_their_references_through_dvc_exp_run(restored):
    root, env, _ = restored
    losses = "[torch_l1,numpy_l1,huber_ref,numpy_huber,torch_bce,numpy_bce]"
    log = sh(f"dvc exp run {MACHINE}/dvc.yaml -S 'train.losses={losses}' -S 'train.devices=[cpu]' "
             "-S train.repeats=1", root, env)
    assert f"Running stage '{MACHINE}/dvc.yaml:train@numpy_huber-cpu-fp32-eager'" in log
    c = metrics(root)["configs"]
    for cand, ref in (("numpy_l1", "torch_l1"), ("numpy_huber", "huber_ref"), ("numpy_bce", "torch_bce")):
        row = c[f"{cand}-cpu-fp32-eager"]
        assert (row["reference"], row["verdict"], row["passed"]) == (ref, "equal", True), row
        assert row["grad_max_rel_err"] == 0.0  # each backward follows torch's formula: bitwise equal gradients
        print(f"{cand}: max |diff| {row['max_abs_diff']:.3g}, bitwise-equal steps {row['bitwise_equal_steps']}")
    assert metrics(root)["passed"] is True


def test_the_readmes_restore_line_returns_to_the_runs_before_an_experiment(tmp_path, mirror):
    """A new user's case: the committed lock is another run's (its outputs are in no cache here), `make repro`
    trained this machine's own, then `dvc exp run` rewrote params.yaml and the lock. The README's line
    (`git checkout HEAD -- params.yaml && make repro`) returns params.yaml to the commit and the report to the
    runs made before the experiment, from DVC's cache: nothing trains again, nothing is lost. (`dvc checkout` of
    the committed lock failed here: 'Checkout failed ... Is your cache up to date?', and removed the runs.)"""
    root, env = reduced_project(tmp_path / "project", mirror, losses=["torch_mse", "numpy_mse"])
    summary = root / MACHINE / "report" / "summary.json"
    assert repro(root, env).returncode == 0
    sh("git add -A && git -c user.name=t -c user.email=t@t commit -qm 'another run, committed'", root)
    # this machine's own run: new timings, a lock unlike the committed one, whose outputs leave the cache
    assert "Running stage" in sh(f"dvc repro -f {MACHINE}/dvc.yaml && dvc gc -w -f", root, env)
    before = json.loads(summary.read_text())["configs"]
    sh(f"dvc exp run {MACHINE}/dvc.yaml -S 'train.losses=[torch_mse,wrong_backward]'", root, env)
    assert sh("git status --porcelain params.yaml", root)  # the experiment rewrote params.yaml

    sh("git checkout HEAD -- params.yaml", root)
    log = repro(root, env)
    assert log.returncode == 0, log.stdout + log.stderr
    assert stages_ran(log.stdout) == ["check", "report"]  # the runs came back from DVC's cache
    assert sh("git status --porcelain params.yaml", root) == ""
    after = json.loads(summary.read_text())["configs"]
    assert set(after) == set(before) == {"torch_mse-cpu-fp32-eager", "numpy_mse-cpu-fp32-eager"}
    for key in after:
        for field in ("verdict", "max_abs_diff", "cost_ratio", "median_step_ms"):
            assert after[key][field] == before[key][field], (key, field)


def test_an_experiment_and_the_restore_line_leave_no_run_untracked(tmp_path, mirror):
    """A new user's case: a loss of theirs committed, `make repro`, a `dvc exp run`, the README's restore line, then
    what the runs rewrote discarded (`git checkout -- .`). The runs are DVC's outputs (in its cache, their hashes in
    the lock), never Git's: none may show as untracked, whatever Git puts back. (DVC listed each run it made in
    results/<machine>/runs/.gitignore: a list that an experiment or a checkout put back without the user's runs.)"""
    root, env = reduced_project(tmp_path / "project", mirror, losses=["torch_mse", "row_mse"])
    ignores = subprocess.run(["git", "ls-files", "--", f"{MACHINE}/*.gitignore"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    for f in ignores:  # what a clone holds of this machine's results: its ignore lists (results/ was not copied)
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text((ROOT / f).read_text())
    sh("git add -A && git -c user.name=t -c user.email=t@t commit -qm 'my loss'", root)
    assert repro(root, env).returncode == 0
    sh(f"dvc exp run {MACHINE}/dvc.yaml -S 'train.precisions=[fp32,bf16]' -S 'train.losses=[torch_mse,wrong_backward]'",
       root, env)
    sh("git checkout HEAD -- params.yaml", root)
    assert repro(root, env).returncode == 0
    sh("git checkout -- .", root)  # and what the runs rewrote, discarded: the report, the lock, any ignore list
    status = sh(f"git status --porcelain --untracked-files=all -- {MACHINE}/runs", root).splitlines()
    assert [line for line in status if line.startswith("??")] == [], status
    assert (root / MACHINE / "runs" / "row_mse-cpu-fp32-eager" / "steps.csv").is_file()


# The noise envelope's separation, through the real pipeline (docs/envelope.md): the calibration losses, then the
# held-out ones written after the rule was chosen. Each gets the verdict it should; the fixed 1e-5 gets one wrong.
SEPARATION = {  # loss: (reference, verdict)
    "numpy_mse": ("torch_mse", "equal"), "wrong_backward": ("torch_mse", "differs"),
    "numpy_detached": ("torch_mse", "differs"), "huber_other_order": ("huber_ref", "equal"),
    "huber_no_half": ("huber_ref", "differs"), "float64_mse": ("torch_mse", "equal"),
    "row_mse": ("torch_mse", "equal"), "smoothed_mse": ("torch_mse", "differs"),
    "biased_grad_mse": ("torch_mse", "differs"), "huber_wide_delta": ("huber_ref", "differs"),
}


def test_the_noise_envelope_separates_rounding_from_wrong_losses(restored):
    root, env, _ = restored
    losses = ",".join(["torch_mse", "huber_ref", *SEPARATION])
    log = sh(f"dvc exp run {MACHINE}/dvc.yaml -S 'train.losses=[{losses}]' -S 'train.devices=[cpu]' "
             "-S train.repeats=1", root, env)
    assert f"Running stage '{MACHINE}/dvc.yaml:train@huber_other_order-cpu-fp32-eager'" in log
    s = metrics(root)
    assert s["passed"] is True, s["failures"]
    c = s["configs"]
    for loss, (ref, verdict) in SEPARATION.items():
        row = c[f"{loss}-cpu-fp32-eager"]
        assert (row["reference"], row["verdict"]) == (ref, verdict), row
        print(f"{loss}: noise used {row['noise_used']:.3g} (gradients {row['grad_noise_used']:.3g}), "
              f"fixed-rule tol_used {row['tol_used']:.3g}, growth {row['growth']}")
    equal = [c[f"{l}-cpu-fp32-eager"] for l, (_, v) in SEPARATION.items() if v == "equal"]
    assert max(r["noise_used"] for r in equal) < 0.5  # a margin of 2x at least, on the side of the right ones
    # a right loss the fixed tolerance calls wrong: the other-order Huber drifts past 1e-5 with bitwise-right maths
    assert c["huber_other_order-cpu-fp32-eager"]["tol_used"] > 1 and c["huber_other_order-cpu-fp32-eager"]["noise_used"] < 1
