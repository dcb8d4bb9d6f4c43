"""The check stage: every bad input is one line naming file, key and value, before anything is written."""

import json
import subprocess
import sys

import pytest
import torch

from lossbench.config import ParamsError
from stages import check
from tests.conftest import ROOT, small_params

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: the no-GPU path is not testable")


def run_check(tmp_path, capsys, **train):
    params = small_params(tmp_path / "params.yaml", **train)
    out = tmp_path / "check"
    with pytest.raises(SystemExit) as e:
        check.main(["--params", str(params), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert not out.exists()  # nothing written
    return e.value.code, err[0]


def test_writes_one_file_per_configuration_with_loss_source_and_platform(tmp_path, monkeypatch):
    monkeypatch.delenv("LOSSBENCH_REQUIRE_DEVICES", raising=False)
    params = small_params(tmp_path / "params.yaml", losses=["torch_l1", "numpy_l1"], devices=["cpu", "cuda"])
    check.main(["--params", str(params), "--out", str(tmp_path / "check")])
    files = sorted(str(p.relative_to(tmp_path / "check")) for p in (tmp_path / "check").rglob("*.json"))
    assert files == ["cpu/numpy_l1-cpu-fp32-eager.json", "cpu/torch_l1-cpu-fp32-eager.json",
                     "cuda/numpy_l1-cuda-fp32-eager.json", "cuda/torch_l1-cuda-fp32-eager.json"]
    rec = json.loads((tmp_path / "check" / "cpu" / "numpy_l1-cpu-fp32-eager.json").read_text())
    assert rec["fn"] == "losses.examples:NumpyL1" and rec["args"] == {} and rec["available"] is True
    assert list(rec["source"]["files"]) == ["losses/examples.py"]
    assert rec["platform"]["versions"]["torch"] == torch.__version__
    assert "cuda" not in rec["platform"] and rec["platform"]["device"] == "cpu"  # a GPU driver update: no re-train
    cuda = json.loads((tmp_path / "check" / "cuda" / "numpy_l1-cuda-fp32-eager.json").read_text())
    assert cuda["available"] is torch.cuda.is_available() and (cuda["reason"] is None) is cuda["available"]


@pytest.mark.parametrize("train, code, line", [
    ({"losses": ["torch_mse", "nosuch.module:f"]}, 2,
     "check: {p}: train.losses: 'nosuch.module:f': cannot import module 'nosuch.module' "
     "(No module named 'nosuch')"),
    ({"losses": ["torch_mse", "lossbench.losses:nope"]}, 2,
     "check: {p}: train.losses: 'lossbench.losses:nope': module 'lossbench.losses' "
     "has no attribute 'nope'"),
    ({"devices": ["cpu", "tpu"]}, 2, "check: {p}: train.devices.1: expected 'cpu' or 'cuda' (got 'tpu')"),
    ({"lr": "fast"}, 2, "check: {p}: train.lr: expected a valid number (got 'fast')"),
    ({"losses": ["torch_mse", "numpy_l1"]}, 2,
     "check: {p}: train.losses: 'numpy_l1' is compared with 'torch_l1' (losses.numpy_l1.reference), which is not "
     "in train.losses ['torch_mse', 'numpy_l1']: add it"),
])
def test_bad_input_is_one_line(tmp_path, capsys, train, code, line):
    got_code, err = run_check(tmp_path, capsys, **train)
    assert (got_code, err) == (code, line.format(p=tmp_path / "params.yaml"))


def test_a_loss_that_returns_a_vector_is_stopped_with_its_key(tmp_path, capsys, monkeypatch):
    (tmp_path / "bad_losses.py").write_text("def per_pixel(a, b):\n    return (a - b) ** 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = run_check(tmp_path, capsys, losses=["torch_mse", "bad_losses:per_pixel"])
    assert code == 2 and err.endswith("train.losses: 'bad_losses:per_pixel' on cpu: the loss "
                                      "returned shape (4, 784), expected a scalar (shape ()): reduce it, e.g. .mean()")


@NO_GPU
def test_require_devices_stops_with_exit_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOSSBENCH_REQUIRE_DEVICES", "1")
    code, err = run_check(tmp_path, capsys, devices=["cpu", "cuda"])
    assert code == 3 and err.startswith(f"check: {tmp_path / 'params.yaml'}: train.devices: 'cuda' cannot run here "
                                        "and LOSSBENCH_REQUIRE_DEVICES=1: ")


def test_debug_keeps_the_traceback_and_the_exit_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOSSBENCH_DEBUG", "1")
    params = small_params(tmp_path / "params.yaml", epochs=0)
    with pytest.raises(SystemExit) as e:
        check.main(["--params", str(params), "--out", str(tmp_path / "check")])
    err = capsys.readouterr().err
    assert e.value.code == ParamsError.exit_code == 2  # as without it (it was 1: an uncaught exception's)
    assert "Traceback (most recent call last)" in err and "train.epochs: expected greater than 0" in err


def test_runs_as_a_module(tmp_path):
    """As DVC runs it: a fresh process."""
    params = small_params(tmp_path / "params.yaml")
    out = subprocess.run([sys.executable, "-m", "stages.check", "--params", str(params), "--out", str(tmp_path / "c")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "check: 6 losses imported, pre-flighted on cpu (" in out.stderr


def test_another_machines_directory_is_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOSSBENCH_MACHINE", "laptop")
    params = small_params(tmp_path / "params.yaml", losses=["torch_mse"], devices=["cpu"])
    theirs = tmp_path / "results" / "h100"
    theirs.mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        check.main(["--params", str(params), "--machine-dir", str(theirs), "--out", str(theirs / "check")])
    assert e.value.code == 2 and not (theirs / "check").exists()
    assert capsys.readouterr().err == (
        "check: results/h100/ is machine 'h100''s pipeline and this machine is 'laptop' (LOSSBENCH_MACHINE): "
        "`make repro` runs this machine's pipeline and the overview; a plain `dvc repro` runs every machine's\n")
    mine = tmp_path / "results" / "laptop"
    check.main(["--params", str(params), "--machine-dir", str(mine), "--out", str(mine / "check")])
    assert (mine / "check" / "cpu" / "torch_mse-cpu-fp32-eager.json").is_file()


def test_the_check_file_holds_this_hosts_platform_so_a_new_platform_retrains(tmp_path, monkeypatch):
    from lossbench import host

    monkeypatch.delenv("LOSSBENCH_MACHINE", raising=False)

    params = small_params(tmp_path / "params.yaml", losses=["torch_mse"], devices=["cpu", "cuda"])
    check.main(["--params", str(params), "--out", str(tmp_path / "check")])
    here = host.collect()
    for device in ("cpu", "cuda"):
        record = json.loads((tmp_path / "check" / device / f"torch_mse-{device}-fp32-eager.json").read_text())
        assert record["platform"] == host.for_device(here, device) and record["machine"] == "local"
    # a CPU device's file leaves the GPU part out: a driver update does not re-train CPU configurations
    assert "cuda" not in json.loads((tmp_path / "check" / "cpu" / "torch_mse-cpu-fp32-eager.json").read_text())["platform"]

DYNAMO_PAGE = """RuntimeError when making fake tensor call
  Explanation: Dynamo failed to run FX node with fake tensors: call_function <Wrapped operator <original wrapped_sub>>(*(FakeTensor(..., size=(4, 784), dtype=torch.bfloat16), FakeTensor(..., size=(4, 784))), **{}): got KeyError(torch.bfloat16)
  Hint: Your code may result in an error when running in eager.

 For more details about this graph break, please visit: https://meta-pytorch.github.io/compile-graph-break-site/gb/gb4315.html

from user code:
   File "/somewhere/else/losses/helper.py", line 7, in forward
    return helper(a, b)
   File "%s", line 41, in forward
    loss = np.mean((a - b) ** 2)

Set TORCHDYNAMO_VERBOSE=1 for the internal stack trace"""


def test_a_torch_compile_error_is_one_line_at_the_losss_own_line():
    """torch.compile's errors are pages: the message keeps its explanation and the innermost line of user code."""
    from lossbench.errors import ROOT as project, raised

    class TorchRuntimeError(RuntimeError):
        pass

    line = raised(TorchRuntimeError(DYNAMO_PAGE % (project / "losses" / "mine.py")))
    assert line == "TorchRuntimeError: Dynamo failed to run FX node with fake tensors: got KeyError(torch.bfloat16) " \
                   "(at losses/mine.py:41)"
    assert raised(ValueError("first line\nsecond line")) == "ValueError: first line"
