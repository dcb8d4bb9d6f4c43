import copy

import pytest
import yaml

from lossbench.config import ParamsError, load_params, parse_params
from tests.conftest import ROOT

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_(path, value):
    """BASE with the dotted key set to value (or deleted, for value=...)."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


def test_repo_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.train.losses[0] == params.report.reference == "torch_mse"
    assert params.train.devices == ["cpu", "cuda"]  # the default never depends on the host


@pytest.mark.parametrize("key, value, message", [
    ("train.losses", ["torch_mse", "nope"], r"train.losses: Value error, unknown loss 'nope': expected one of \["),
    ("train.devices", ["cpu", "tpu"], r"train.devices.1: Input should be 'cpu' or 'cuda' \(got 'tpu'\)"),
    ("train.epochs", 0, r"train.epochs: Input should be greater than 0 \(got 0\)"),
    ("train.batch_size", -1, r"train.batch_size: Input should be greater than 0 \(got -1\)"),
    ("train.profile_steps", 0, r"train.profile_steps: Input should be greater than 0 \(got 0\)"),
    ("train.lr", 0.0, r"train.lr: Input should be greater than 0 \(got 0.0\)"),
    ("train.lr", "1e-3", r"train.lr: Input should be a valid number \(got '1e-3'\)"),
    ("train.epochs", "2", r"train.epochs: Input should be a valid integer \(got '2'\)"),
    ("train.epochs", ..., r"train.epochs: Field required"),
    ("train.epoch", 2, r"train.epoch: Extra inputs are not permitted"),
    ("train.losses", ["torch_mse", "torch_mse"], r"duplicate entries \['torch_mse'\]"),
    ("train.loader", "fast", r"train.loader: Input should be 'preloaded' or 'dataloader'"),
    ("report.reference", "numpy_mse_x", r"report: Value error, reference 'numpy_mse_x' is not in train.losses"),
    ("report.expect", {"numpy_detatched": "differs"}, r"expect names 'numpy_detatched', which is neither"),
    ("report.expect", {"numpy_mse": "same"}, r"report.expect.numpy_mse: Input should be 'equal' or 'differs'"),
    ("compare.cost_factor", 1.0, r"compare.cost_factor: Input should be greater than 1"),
    ("extra", {}, r"extra: Extra inputs are not permitted"),
])
def test_bad_params_name_key_value_and_expectation(key, value, message):
    with pytest.raises(ParamsError, match=message) as e:
        parse_params(with_(key, value), source="params.yaml")
    assert str(e.value).startswith("params.yaml: invalid params:")


def test_user_loss_syntax_is_accepted():
    params = parse_params(with_("train.losses", ["torch_mse", "mypkg.losses:MyLoss"]))
    assert params.train.losses[1] == "mypkg.losses:MyLoss"


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(ParamsError, match=r"nope.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: not valid YAML"):
        load_params(bad)
