"""The fast tier's end to end: `make repro`'s command on a reduced params set, real MNIST from the mirror.

The full pipeline (every default loss, 470 steps, 3 repeats) is the slow tier's (tests/test_pipeline.py).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import edit_params, project_copy

REDUCED = {"losses": ["torch_mse", "numpy_mse", "wrong_backward"], "devices": ["cpu"], "epochs": 1,
           "batch_size": 1024, "repeats": 1, "warmup_steps": 1}


def test_make_repro_on_a_reduced_params_set_judges_and_then_reruns_only_the_checks(tmp_path, mirror):
    root = project_copy(tmp_path / "project")

    def reduce(p):
        p["train"].update(REDUCED)
        p["cost"].update(rounds=3, steps=2, warmup_steps=1)
    edit_params(root / "params.yaml", reduce)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOSSBENCH_")}, "MNIST_MIRROR": str(mirror),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "lossbench.workflow", "repro"]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((root / "results" / "local" / "report" / "summary.json").read_text())
    c = summary["configs"]
    assert summary["passed"] is True and summary["rule"] == "envelope"
    assert (c["numpy_mse-cpu-fp32-eager"]["verdict"], c["wrong_backward-cpu-fp32-eager"]["verdict"]) == ("equal", "differs")
    assert c["numpy_mse-cpu-fp32-eager"]["steps"] == 59 and c["numpy_mse-cpu-fp32-eager"]["noise_used"] < 1
    assert json.loads((root / "reports" / "overview.json").read_text())["machines"] == ["local"]
    again = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert again.returncode == 0
    assert sorted(set(re.findall(r"Running stage '[^']*:([^']+)'", again.stdout))) == ["check@cpu"]
