"""bf16 autocast through the real pipeline, on a reduced params set (real MNIST from the mirror).

Slow tier: this machine kind's CPUs have no bf16 instructions, so a bf16 step costs several fp32 ones.
"""

import json
import re

import pytest

from tests.conftest import edit_params, reduced_project, repro, stages_ran

pytestmark = pytest.mark.slow

LOSSES = ["torch_mse", "numpy_mse", "numpy_mse_float32", "wrong_backward"]


def test_adding_bf16_trains_only_its_configurations_and_an_unsupported_loss_fails_the_report(tmp_path, mirror):
    root, env = reduced_project(tmp_path / "project", mirror, losses=LOSSES)
    first = repro(root, env)
    assert first.returncode == 0, first.stdout + first.stderr

    edit_params(root / "params.yaml", lambda p: p["train"].update(precisions=["fp32", "bf16"]))
    out = repro(root, env)
    log = out.stdout + out.stderr
    # only the new configurations train; the fp32 ones are DVC's cache
    assert stages_ran(log) == ["check", "report"] + [f"train@{l}-cpu-bf16-eager" for l in sorted(LOSSES)]
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
    from lossbench.host import cpu_bf16_native
    assert "## Unsupported" in md and ("bf16 is emulated here" in md) is (cpu_bf16_native() is False)

    # the README's bf16 line names the losses that run under bf16: it is green
    edit_params(root / "params.yaml", lambda p: p["train"].update(losses=["torch_mse", "numpy_mse_float32",
                                                                           "wrong_backward"]))
    green = repro(root, env)
    assert green.returncode == 0, green.stdout + green.stderr
    assert [s for s in stages_ran(green.stdout + green.stderr) if s.startswith("train@")] == []
