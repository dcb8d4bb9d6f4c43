"""The fast tier's end to end: `make repro`'s command on a reduced params set, real MNIST from the mirror.

The full pipeline (every default loss, 470 steps, 3 repeats) is the slow tier's (tests/test_pipeline.py).
"""

import json

from tests.conftest import reduced_project, repro, stages_ran

LOSSES = ["torch_mse", "numpy_mse", "wrong_backward"]


def test_make_repro_on_a_reduced_params_set_judges_and_then_reruns_only_the_checks(tmp_path, mirror):
    root, env = reduced_project(tmp_path / "project", mirror, losses=LOSSES)
    out = repro(root, env)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((root / "results" / "local" / "report" / "summary.json").read_text())
    c = summary["configs"]
    assert summary["passed"] is True and summary["rule"] == "envelope"
    assert (c["numpy_mse-cpu-fp32-eager"]["verdict"], c["wrong_backward-cpu-fp32-eager"]["verdict"]) == ("equal", "differs")
    assert c["numpy_mse-cpu-fp32-eager"]["steps"] == 59 and c["numpy_mse-cpu-fp32-eager"]["noise_used"] < 1
    assert json.loads((root / "reports" / "overview.json").read_text())["machines"] == ["local"]
    again = repro(root, env)
    assert again.returncode == 0 and stages_ran(again.stdout) == ["check@cpu"]
