import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from lossbench import data, training
from lossbench.config import load_params
from lossbench.losses import REGISTRY, register
from lossbench.model import AutoEncoder
from tests.conftest import check_files, small_params, train_config


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
    assert run["status"] == "ran" and run["config"] == "numpy_mse-cpu" and run["steps"] == 16
    assert run["weights_changed"] and run["weights_start"] != run["weights_end"]
    assert run["params"]["batch_size"] == 64 and run["platform"]["versions"]["torch"] == torch.__version__
    assert run["fn"] == "numpy_mse" and run["loss_source"] == {"registered": "lossbench/losses.py"}
    grads, weights = training.read_tensors(out / "grads.npz"), training.read_tensors(out / "weights.npz")
    assert list(grads) == list(weights) == [k for k, _ in AutoEncoder().named_parameters()]
    assert all(np.abs(g).max() > 0 for g in grads.values())
    assert run["determinism"]["use_deterministic_algorithms"] is True
    assert run["determinism"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert len(run["repeats"]) == 2 and run["warmup_steps_excluded"] == 1
    for r in run["repeats"]:
        assert 0 < r["step_seconds"]["median"] <= r["step_seconds"]["p90"] < r["total_seconds"]


def test_loss_round_trips_float32_exactly(synthetic):
    params = load_params("params.yaml").train.model_copy(update={"epochs": 1, "batch_size": 64})
    batches = training.make_batches("preloaded", synthetic, "cpu", 64)
    losses = []
    original = REGISTRY["torch_mse"].make

    def recording():
        fn = original()
        return lambda a, b: losses.append(fn(a, b)) or losses[-1]

    steps, _ = training.run_once(recording, batches, "cpu", params.epochs, params.lr, params.seed)
    path = synthetic / "steps.csv"
    training.write_steps(path, steps)
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


def broken(kind):
    """A loss that goes wrong at its fourth call in one run (each make() starts counting anew)."""

    def make():
        calls = []

        def loss(a, b):
            calls.append(1)
            value = ((a - b) ** 2).mean()
            if len(calls) < 4:
                return value
            if kind == "nan":
                return value * float("nan")
            if kind == "raises":
                raise ValueError("shapes do not broadcast")
            return (a - b) ** 2  # kind == "vector": forgot the reduction

        return loss

    return make


@pytest.mark.parametrize("kind, message", [
    ("nan", "the loss is nan, expected a finite value"),
    ("raises", "the loss raised ValueError: shapes do not broadcast"),
    ("vector", r"the loss returned shape \(64, 784\), expected a scalar \(shape \(\)\): reduce it"),
])
def test_failure_inside_a_run_is_one_line_naming_config_repeat_epoch_step(tmp_path, synthetic, capsys, kind, message):
    name = f"broken_{kind}_test_loss"
    register(name)(broken(kind))
    try:
        with pytest.raises(SystemExit) as e:
            run_main(tmp_path, synthetic, loss=name)
    finally:
        del REGISTRY[name]
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"train: {name}-cpu repeat 1, epoch 1, step 4 (global step 4): ")
    assert re.search(message, err), err
    assert sorted(p.name for p in (tmp_path / "run" / f"{name}-cpu").iterdir()) == []  # nothing that looks done


def test_interrupted_run_leaves_no_steps_csv(tmp_path, synthetic, monkeypatch):
    out = run_main(tmp_path, synthetic)  # a finished run first
    real = training.run_once

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # as Ctrl-C after the first repeat

    monkeypatch.setattr(training, "run_once", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_main(tmp_path, synthetic)
    assert sorted(p.name for p in out.iterdir()) == []  # old results gone, nothing half-written


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

    make = REGISTRY["numpy_mse"].make
    a, _ = training.run_once(make, first(training.make_batches("preloaded", real_mnist, "cpu", 256)), "cpu", 2, 1e-3, 0)
    b, _ = training.run_once(make, first(training.make_batches("dataloader", real_mnist, "cpu", 256)), "cpu", 2, 1e-3, 0)
    assert np.array_equal(a["loss"].to_numpy(), b["loss"].to_numpy())
    assert a["loss"].iloc[0] != a["loss"].iloc[-1]


def test_byte_table_is_totensors_division():
    from torchvision import transforms
    from PIL import Image

    img = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert torch.equal(transforms.ToTensor()(img).flatten(), data.byte_table("cpu"))


def test_bench_runs_both_paths_and_checks_identity(synthetic, capsys):
    from lossbench import bench

    bench.main(["--params", "params.yaml", "--data", str(synthetic)])
    out = capsys.readouterr().out
    assert "speed-up:" in out and "losses bitwise identical: True" in out
