"""torch.compile: the custom-op NumPy loss, and compiled configurations through the real pipeline.

Slow tier: inductor builds C++ for every graph, tens of seconds each on two cores.
"""

import json

import pytest
import torch

from lossbench.engine import Trainer
from lossbench.losses import NumpyMSE
from losses.numpy_op import numpy_mse
from tests.conftest import edit_params, reduced_project, repro, stages_ran

pytestmark = pytest.mark.slow


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 784, generator=g, dtype=dtype, requires_grad=True), torch.rand(8, 784, generator=g, dtype=dtype)


def test_the_custom_op_passes_opcheck_and_gradcheck():
    x, t = inputs()
    torch.library.opcheck(numpy_mse, (x, t))
    x64, t64 = inputs(torch.float64)
    assert torch.autograd.gradcheck(numpy_mse, (x64, t64))


def test_the_custom_op_is_bitwise_the_tutorials_numpy_loss_eager_and_compiled():
    """Its loss is NumPy's, eager and compiled; its gradient is the tutorial's formula."""
    results = []
    for fn in (NumpyMSE.apply, numpy_mse, torch.compile(numpy_mse)):
        x, t = inputs()
        loss = fn(x, t)
        loss.backward()
        results.append((loss.detach(), x.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_compiled_the_tutorials_loss_runs_no_numpy_and_the_custom_op_does():
    """Counted as they ran, on the step after the one that compiles."""
    x = torch.rand(16, 784, generator=torch.Generator().manual_seed(1))
    calls = {}
    for name, make in (("function", lambda: NumpyMSE.apply), ("op", lambda: numpy_mse)):
        for mode in ("eager", "compiled"):
            trainer = Trainer(make, "cpu", 1e-3, 0, mode=mode)
            trainer.step(x, "step 1")
            trainer.step(x, "step 2")
            calls[(name, mode)] = trainer.numpy_calls
    assert calls[("function", "eager")] > 0 and calls[("function", "compiled")] == 0
    assert calls[("op", "eager")] > 0 and calls[("op", "compiled")] == calls[("op", "eager")]


def test_compiled_configurations_through_dvc_repro(tmp_path, mirror):
    """Adding compiled trains only its configurations, judged against the reference compiled and shown against
    themselves eager; the traced NumPy loss is named; the pre-flight's compile is cached for the next check."""
    losses = ["torch_mse", "numpy_mse", "numpy_mse_op"]
    root, env = reduced_project(tmp_path / "project", mirror, losses=losses)
    edit_params(root / "params.yaml", lambda p: p["report"]["envelope"].update(members=2))
    first = repro(root, env)
    assert first.returncode == 0, first.stdout + first.stderr

    edit_params(root / "params.yaml", lambda p: p["train"].update(modes=["eager", "compiled"]))
    out = repro(root, env)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert stages_ran(log) == ["check", "report"] + [f"train@{l}-cpu-fp32-compiled" for l in sorted(losses)]
    c = json.loads((root / "results" / "local" / "report" / "summary.json").read_text())["configs"]
    traced, op = c["numpy_mse-cpu-fp32-compiled"], c["numpy_mse_op-cpu-fp32-compiled"]
    assert traced["numpy_calls"] == 0 and c["numpy_mse-cpu-fp32-eager"]["numpy_calls"] > 0
    assert op["numpy_calls"] > 0 and op["compile"]["graph_breaks"] == 0
    assert traced["compile"]["graph_breaks"] == 0  # traced, not broken: only counting calls tells
    for row in (traced, op):
        assert row["reference"] == "torch_mse" and row["verdict"] == "equal", row
        assert row["vs_eager"]["bitwise_equal_steps"] <= row["steps"] and row["compile"]["seconds"] > 0
    md = (root / "results" / "local" / "report" / "report.md").read_text()
    assert "numpy_mse-cpu-fp32-compiled**: 0 graph break(s)" in md and "its NumPy did not run" in md

    cache = root / "results" / "local" / ".check-cache" / "preflight"
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(before) == len(losses)  # one compiled pre-flight per loss
    with open(root / "params.yaml", "a") as f:
        f.write("# a comment: the check runs in full again, its compiled pre-flights come from their cache\n")
    again = repro(root, env)
    assert again.returncode == 0 and stages_ran(again.stdout + again.stderr) == ["check"]
    assert "nothing changed since the last check" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before  # reused, not compiled again
