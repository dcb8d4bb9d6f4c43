"""bf16 autocast through the real pipeline, on a reduced params set (real MNIST from the mirror).

Slow tier: this machine kind's CPUs have no bf16 instructions, so a bf16 step costs several fp32 ones.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import edit_params, project_copy

pytestmark = pytest.mark.slow

REDUCED = {"losses": ["torch_mse", "numpy_mse", "numpy_mse_float32", "wrong_backward"], "devices": ["cpu"],
           "epochs": 1, "batch_size": 1024, "repeats": 1, "warmup_steps": 1}
REPRO = [sys.executable, "-m", "lossbench.workflow", "repro"]


def ran(log):
    return sorted(set(re.findall(r"Running stage '[^']*:([^']+)'", log)))


def test_adding_bf16_trains_only_its_configurations_and_an_unsupported_loss_fails_the_report(tmp_path, mirror):
    root = project_copy(tmp_path / "project")

    def reduce(p):
        p["train"].update(REDUCED)
        p["cost"].update(rounds=3, steps=2, warmup_steps=1)
    edit_params(root / "params.yaml", reduce)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOSSBENCH_")}, "MNIST_MIRROR": str(mirror),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    first = subprocess.run(REPRO, cwd=root, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr

    edit_params(root / "params.yaml", lambda p: p["train"].update(precisions=["fp32", "bf16"]))
    out = subprocess.run(REPRO, cwd=root, env=env, capture_output=True, text=True)
    log = out.stdout + out.stderr
    # only the new configurations train; the fp32 ones are DVC's cache
    assert ran(log) == ["check@cpu", "report"] + [f"train@{l}-cpu-bf16-eager" for l in sorted(REDUCED["losses"])]
    # the user asked for numpy_mse under bf16, and the answer is no: a finding that fails the report, in one line
    assert out.returncode != 0
    assert re.search(r"\n  numpy_mse-cpu-bf16-eager: unsupported under bf16: the loss raised TypeError: Got unsupported "
                     r"ScalarType BFloat16; the fix: call \.float\(\) on its inputs first", log), log
    summary = json.loads((root / "results" / "local" / "report" / "summary.json").read_text())
    c = summary["configs"]
    assert c["numpy_mse-cpu-bf16-eager"]["verdict"] == "unsupported"
    assert c["numpy_mse-cpu-bf16-eager"]["dtypes"] == {"received": "bfloat16", "target": "float32"}
    # the fix and the control under bf16: the fix equal to its reference, the control caught
    assert c["numpy_mse_float32-cpu-bf16-eager"]["verdict"] == "equal", c["numpy_mse_float32-cpu-bf16-eager"]
    assert c["wrong_backward-cpu-bf16-eager"]["verdict"] == "differs"
    ref = c["torch_mse-cpu-bf16-eager"]
    assert ref["dtypes"] == {"received": "bfloat16", "target": "float32", "computed": ["float32"], "returned": "float32"}
    assert ref["nudge_visible_from"] == 1  # the one-ulp nudge of the fp32 weights survives the bf16 casts at once
    assert c["numpy_mse-cpu-fp32-eager"]["verdict"] == "equal"  # fp32 untouched
    md = (root / "results" / "local" / "report" / "report.md").read_text()
    from lossbench.platform import cpu_bf16_native
    assert "## Unsupported" in md and ("bf16 is emulated here" in md) is (cpu_bf16_native() is False)

    # the README's bf16 line names the losses that run under bf16: it is green
    edit_params(root / "params.yaml", lambda p: p["train"].update(losses=["torch_mse", "numpy_mse_float32",
                                                                           "wrong_backward"]))
    green = subprocess.run(REPRO, cwd=root, env=env, capture_output=True, text=True)
    assert green.returncode == 0, green.stdout + green.stderr
    assert [s for s in ran(green.stdout + green.stderr) if s.startswith("train@")] == []
