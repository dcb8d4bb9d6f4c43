import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from lossbench import data, task, training
from lossbench.config import load_params
from lossbench.files import read_tensors, write_steps
from lossbench.losses import resolve
from lossbench.registry import REGISTRY, Registered
from lossbench.model import AutoEncoder
from tests.conftest import ROOT, check_files, small_params, train_config


def run_main(tmp_path, synthetic, loss="numpy_mse", device="cpu", out="run", **train_params):
    """The check stage, then one train stage, as DVC runs them; returns the run directory."""
    params = small_params(tmp_path / f"{out}.yaml", losses=["torch_mse", loss], **train_params)
    checks = check_files(params, tmp_path / f"{out}-check")
    return train_config(params, synthetic, checks, tmp_path / out, loss, device)


def test_outputs_of_a_run(tmp_path, synthetic):
    out = run_main(tmp_path, synthetic)
    steps = pd.read_csv(out / "steps.csv")
    assert list(steps.columns) == ["repeat", "epoch", "step", "global_step", "loss", "seconds"]
    assert len(steps) == 2 * 2 * 8  # repeats x epochs x (512 / 64) steps
    one = steps[steps["repeat"] == 1]
    assert one["epoch"].tolist() == [1] * 8 + [2] * 8
    assert one["step"].tolist() == list(range(1, 9)) * 2
    assert one["global_step"].tolist() == list(range(1, 17))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "ran" and run["config"] == "numpy_mse-cpu-fp32-eager" and run["steps"] == 16
    assert run["weights_changed"] and run["weights_start"] != run["weights_end"]
    assert run["params"]["batch_size"] == 64 and run["platform"]["versions"]["torch"] == torch.__version__
    assert run["fn"] == "numpy_mse" and run["loss_source"] == {"registered": "lossbench/losses.py"}
    grads, weights = read_tensors(out / "grads.npz"), read_tensors(out / "weights.npz")
    assert list(grads) == list(weights) == [k for k, _ in AutoEncoder().named_parameters()]
    assert all(np.abs(g).max() > 0 for g in grads.values())
    assert run["determinism"]["use_deterministic_algorithms"] is True
    assert run["determinism"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert len(run["repeats"]) == 2 and run["warmup_steps_excluded"] == 1
    for r in run["repeats"]:
        assert 0 < r["step_seconds"]["median"] <= r["step_seconds"]["p90"] < r["total_seconds"]


def test_loss_round_trips_float32_exactly(synthetic):
    params = load_params("params.yaml").train.model_copy(update={"epochs": 1, "batch_size": 64})
    batches, _ = task.batches("preloaded", synthetic, "cpu", 64)
    losses = []
    original = resolve("torch_mse", "torch_mse", {}).make

    def recording():
        fn = original()
        return lambda a, b: losses.append(fn(a, b)) or losses[-1]

    steps, _ = training.run_once(recording, batches, "cpu", params.epochs, params.lr, params.seed)
    path = synthetic / "steps.csv"
    write_steps(path, steps)
    back = torch.tensor(pd.read_csv(path)["loss"].to_numpy()).float()
    assert torch.equal(back, torch.stack([l.detach() for l in losses]))


def test_two_runs_are_bitwise_identical(tmp_path, synthetic):
    a = run_main(tmp_path, synthetic, out="a", repeats=1)
    b = run_main(tmp_path, synthetic, out="b", repeats=1)
    la, lb = (pd.read_csv(p / "steps.csv")["loss"] for p in (a, b))
    assert la.map(float.hex).tolist() == lb.map(float.hex).tolist()


def test_different_seed_changes_the_trajectory(tmp_path, synthetic):
    a = run_main(tmp_path, synthetic, out="a", repeats=1)
    b = run_main(tmp_path, synthetic, out="b", repeats=1, seed=1)
    assert not pd.read_csv(a / "steps.csv")["loss"].equals(pd.read_csv(b / "steps.csv")["loss"])


class Broken:
    """A loss that goes wrong at its fourth call in one run (each run builds a fresh one)."""

    kind = None

    def __init__(self):
        self.calls = 0

    def __call__(self, a, b):
        self.calls += 1
        value = ((a - b) ** 2).mean()
        if self.calls < 4:
            return value
        if self.kind == "nan":
            return value * float("nan")
        if self.kind == "raises":
            raise ValueError("shapes do not broadcast")
        return (a - b) ** 2  # kind == "vector": forgot the reduction


class BrokenNan(Broken):
    kind = "nan"


class BrokenRaises(Broken):
    kind = "raises"


class BrokenVector(Broken):
    kind = "vector"


@pytest.mark.parametrize("kind, message", [
    ("nan", "the loss is nan, expected a finite value"),
    ("raises", "the loss raised ValueError: shapes do not broadcast"),
    ("vector", r"the loss returned shape \(64, 784\), expected a scalar \(shape \(\)\): reduce it"),
])
def test_failure_inside_a_run_is_one_line_naming_config_repeat_epoch_step(tmp_path, synthetic, capsys, monkeypatch,
                                                                        kind, message):
    name = f"broken_{kind}_test_loss"
    monkeypatch.setitem(REGISTRY, name, Registered(f"tests.test_train:Broken{kind.capitalize()}"))
    with pytest.raises(SystemExit) as e:
        run_main(tmp_path, synthetic, loss=name)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"train: {name}-cpu-fp32-eager repeat 1, epoch 1, step 4 (global step 4): ")
    assert re.search(message, err), err
    assert not (tmp_path / "run" / f"{name}-cpu-fp32-eager").exists()  # nothing that looks done, no empty folder


def test_interrupted_run_leaves_no_steps_csv(tmp_path, synthetic, monkeypatch):
    out = run_main(tmp_path, synthetic)  # a finished run first
    real = training.run_once

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # as Ctrl-C after the first repeat

    monkeypatch.setattr(training, "run_once", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_main(tmp_path, synthetic)
    assert not out.exists()  # old results gone, nothing half-written, no empty folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: the no-GPU path is not testable")
def test_cuda_unavailable_is_recorded_without_training(tmp_path, synthetic, monkeypatch):
    monkeypatch.delenv("LOSSBENCH_REQUIRE_DEVICES", raising=False)
    out = run_main(tmp_path, synthetic, device="cuda", devices=["cpu", "cuda"])
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "unavailable" and ("GPU" in run["reason"] or "CUDA" in run["reason"])
    assert not (out / "steps.csv").exists()


def test_preloaded_equals_dataloader_on_synthetic_data(synthetic):
    images = data.preload(synthetic, "cpu")
    pre = list(data.preloaded_batches(images, 100))
    dl = list(data.dataloader_batches(synthetic, 100, "cpu"))
    assert [b.shape[0] for b in pre] == [100] * 5 + [12]
    assert all(torch.equal(a, b) for a, b in zip(pre, dl, strict=True))


@pytest.mark.slow
def test_preloaded_is_bitwise_identical_to_the_tutorial_loop_on_real_mnist(real_mnist):
    """Every batch of a real epoch, then real training steps, bit for bit."""
    images = data.preload(real_mnist, "cpu")
    pre = data.preloaded_batches(images, 256)
    dl = data.dataloader_batches(real_mnist, 256, "cpu")
    sizes = []
    for a, b in zip(pre, dl, strict=True):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
        sizes.append(a.shape[0])
    assert len(sizes) == 235 and sizes[-1] == 96

    def first(batches, n=40):  # the first n batches of each epoch
        return lambda: (x for i, x in zip(range(n), batches()))

    make = resolve("numpy_mse", "numpy_mse", {}).make
    a, _ = training.run_once(make, first(task.batches("preloaded", real_mnist, "cpu", 256)[0]), "cpu", 2, 1e-3, 0)
    b, _ = training.run_once(make, first(task.batches("dataloader", real_mnist, "cpu", 256)[0]), "cpu", 2, 1e-3, 0)
    assert np.array_equal(a["loss"].to_numpy(), b["loss"].to_numpy())
    assert a["loss"].iloc[0] != a["loss"].iloc[-1]


def test_byte_table_is_totensors_division():
    from torchvision import transforms
    from PIL import Image

    img = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert torch.equal(transforms.ToTensor()(img).flatten(), data.byte_table("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: CUDA graphs (gpu/run.sh's bench measures them)")
def test_graphed_forward_trains_bitwise_as_eager_and_leaves_the_data_alone(synthetic):
    batches, _ = task.batches("preloaded", synthetic, "cuda", 100)  # 5 batches of 100, then one of 12: eager
    before = [x.clone() for x in batches()]
    make = resolve("numpy_mse", "numpy_mse", {}).make
    eager, _ = training.run_once(make, batches, "cuda", 2, 1e-3, 0)
    graphed, _ = training.run_once(make, batches, "cuda", 2, 1e-3, 0, graphed=True)
    assert np.array_equal(eager["loss"].to_numpy(), graphed["loss"].to_numpy())
    assert all(torch.equal(a, b) for a, b in zip(before, batches(), strict=True))


def test_bench_prints_both_paths_the_breakdown_and_the_cost_table(tmp_path, synthetic, capsys):
    from lossbench import bench

    params = small_params(tmp_path / "p.yaml", losses=["torch_mse", "functional_mse", "numpy_detached"])
    bench.main(["--params", str(params), "--data", str(synthetic), "--rounds", "2"])
    out = capsys.readouterr().out
    assert "speed-up:" in out and "losses bitwise identical: True" in out
    parts = re.findall(r"^  (.+?)\s+(-?\d+\.\d{3}) s\s+-?\d+\.\d% of the steps' own work$", out, re.M)
    assert [p for p, _ in parts][:3] == ["load data", "seed, model, optimizer, digests", "steps' own work (n x median)"]
    total = float(re.search(r"total / steps' own work: (\d+\.\d{3})x", out).group(1))
    own = float(parts[2][1])
    slack = len(parts) * 5e-4 / own + 5e-4  # each part is printed to the ms; the ratio to 3 decimals
    assert total == pytest.approx(sum(float(v) for _, v in parts) / own, abs=slack)
    assert re.search(r"^  functional_mse\s+torch_mse\s+\d+\.\d{3}x \[\d+\.\d{3}, \d+\.\d{3}\]", out, re.M)
    assert re.search(r"^  torch_mse\s+-\s+1 \(reference\)", out, re.M)


IMPORTS = """
import json, sys
from stages import {stage}
{stage}.main({argv!r})
heavy = ["torch", "torchvision"]
print(json.dumps({{m: m in sys.modules for m in heavy}}))
"""


def imported(stage, argv):
    """Which heavy modules a stage's process imported, run as DVC runs it (its own process)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", IMPORTS.format(stage=stage, argv=argv)], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.splitlines()[-1])


def test_a_run_does_not_import_torchvision(tmp_path, synthetic):
    # ~0.5 s a process beyond torch and torch._dynamo (which Adam itself imports), x every configuration
    params = small_params(tmp_path / "p.yaml", losses=["torch_mse"])
    checks = check_files(params, tmp_path / "check")
    argv = ["--check", str(checks / "cpu" / "torch_mse-cpu-fp32-eager.json"), "--params", str(params), "--data", str(synthetic),
            "--out", str(tmp_path / "run")]
    assert imported("train", argv) == {"torch": True, "torchvision": False}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["determinism"]["use_deterministic_algorithms"]


def test_a_configuration_that_cannot_run_here_imports_no_torch(tmp_path, synthetic):
    check = {"config": "torch_mse-cuda-fp32-eager", "loss": "torch_mse", "device": "cuda", "precision": "fp32",
             "mode": "eager", "fn": "torch_mse", "args": {}, "source": {"registered": "lossbench/losses.py"},
             "platform": {"host": "h"}, "available": False, "reason": "no CUDA device here", "unsupported": None,
             "dtypes": None, "reference": None}
    (tmp_path / "check" / "cuda").mkdir(parents=True)
    (tmp_path / "check" / "cuda" / "torch_mse-cuda-fp32-eager.json").write_text(json.dumps(check))
    argv = ["--check", str(tmp_path / "check" / "cuda" / "torch_mse-cuda-fp32-eager.json"), "--params", "params.yaml",
            "--data", str(synthetic), "--out", str(tmp_path / "run")]
    assert not any(imported("train", argv).values())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "unavailable" and run["reason"] == "no CUDA device here"


def test_a_loss_unsupported_under_bf16_is_a_finding_its_train_stage_writes_before_importing_torch(tmp_path, synthetic):
    """The check's pre-flight through the model under bf16 found numpy_mse failing: its train stage records the
    state, the reason and the fix, and trains nothing; the negative control and the fix train under bf16."""
    params = small_params(tmp_path / "params.yaml", losses=["torch_mse", "numpy_mse", "wrong_backward"],
                          precisions=["bf16"], epochs=1)
    checks = check_files(params, tmp_path / "check")
    argv = ["--check", str(checks / "cpu" / "numpy_mse-cpu-bf16-eager.json"), "--params", str(params),
            "--data", str(synthetic), "--out", str(tmp_path / "run")]
    assert not any(imported("train", argv).values())
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "unsupported" and run["precision"] == "bf16"
    assert run["reason"].startswith("unsupported under bf16: the loss raised TypeError: Got unsupported ScalarType")
    assert run["dtypes"] == {"received": "bfloat16", "target": "float32"}
    out = train_config(params, synthetic, checks, tmp_path / "runs", "wrong_backward", precision="bf16")
    ran = json.loads((out / "run.json").read_text())
    assert ran["status"] == "ran" and ran["dtypes"]["received"] == "bfloat16" and ran["precision"] == "bf16"
