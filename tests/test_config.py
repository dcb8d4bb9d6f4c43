import copy
from pathlib import Path

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
    plan = params.plan()
    assert plan["torch_mse"].reference is None and plan["numpy_mse"].reference == "torch_mse"
    assert plan["numpy_detached"].expect == plan["wrong_backward"].expect == "differs"


@pytest.mark.parametrize("key, value, message", [
    ("train.losses", ["torch_mse", "nope"], r"train.losses: unknown loss 'nope': expected a registered loss or "
                                            r"'package.module:attr', or a name defined under losses:"),
    ("train.losses", ["torch_mse", "numpy_mes"], r"train.losses: unknown loss 'numpy_mes': did you mean 'numpy_mse'\?$"),
    ("train.losses", ["torch_mse", "numpy_hubr"], r"train.losses: unknown loss 'numpy_hubr': did you mean 'numpy_huber'\?$"),
    ("train.devices", ["cpu", "tpu"], r"train.devices.1: expected 'cpu' or 'cuda' \(got 'tpu'\)"),
    ("train.epochs", 0, r"train.epochs: expected greater than 0 \(got 0\)"),
    ("train.batch_size", -1, r"train.batch_size: expected greater than 0 \(got -1\)"),
    ("cost.rounds", 1, r"cost.rounds: expected greater than or equal to 2 \(got 1\)"),
    ("cost.min_effect", 0.9, r"cost.min_effect: expected greater than or equal to 1"),
    ("train.lr", 0.0, r"train.lr: expected greater than 0 \(got 0.0\)"),
    ("train.lr", "1e-3", r"train.lr: expected a valid number \(got '1e-3'\)"),
    ("train.epochs", "2", r"train.epochs: expected a valid integer \(got '2'\)"),
    ("train.epochs", ..., r"train.epochs: required, and missing"),
    ("train.epoch", 2, r"train.epoch: unknown key: did you mean 'epochs'\?"),
    ("train.losses", ["torch_mse", "torch_mse"], r"duplicate entries \['torch_mse'\]"),
    # a value cut short keeps its brackets: a cut list still reads as a list
    ("train.losses", ["torch_mse"] * 9, r"duplicate entries \['torch_mse'\] \(got \['torch_mse', .* \.\.\.\]\)$"),
    # a run that leaves no step to time is refused before anything trains (it crashed at the end of training)
    ("train.batch_size", 100000, r"^params.yaml: train.batch_size: 100000 is more than the task's 60000 training "
                                 r"images: at most 60000$"),
    ("train.warmup_steps", 470, r"^params.yaml: train.warmup_steps: 470 leaves no step to time: a run has 470 steps "
                                r"\(train.epochs 2 x 235 batches of train.batch_size 256\): lower train.warmup_steps, "
                                r"or raise train.epochs$"),
    # a device label of before results/<machine>/ says where the machine is named now
    ("train.devices", ["cpu", "cuda-h100"], r"train.devices.1: expected 'cpu' or 'cuda'; a machine is named by "
                                            r"LOSSBENCH_MACHINE now, not in the device .* \(got 'cuda-h100'\)"),
    ("train.loader", "fast", r"train.loader: expected 'preloaded' or 'dataloader'"),
    ("report.reference", "numpy_mse_x", r"train.losses: 'functional_mse' is compared with 'numpy_mse_x' "
                                        r"\(report.reference\), which is not in train.losses"),
    ("losses.numpy_l1.reference", "torch_l1", None),  # defined, not trained: nothing to check against
    ("losses.mine", {"fn": "nosuch"}, r"losses.mine.fn: unknown loss 'nosuch': expected a registered loss or "
                                      r"'package.module:attr'"),
    ("losses.mine", {"fn": "a.b:c", "expect": "same"}, r"losses.mine.expect: expected 'equal' or 'differs'"),
    ("losses.mine", {"fn": "a.b:c", "refrence": "x"}, r"losses.mine.refrence: unknown key: did you mean 'reference'\?"),
    ("losses.torch_mse", {"fn": "a.b:c"}, r"losses: 'torch_mse' is a registered loss: give your definition "
                                          r"another name"),
    ("losses.numpy_huber.reference", "huber_rf", r"losses.numpy_huber.reference: unknown loss 'huber_rf': "
                                                 r"expected a registered loss, a name defined under losses:"),
    ("report.gradient.rtol", -1.0, r"report.gradient.rtol: expected greater than or equal to 0"),
    ("compare.cost_factor", 1.0, r"compare.cost_factor: expected greater than 1"),
    ("extra", {}, r"extra: unknown key$"),
])
def test_bad_params_name_key_value_and_expectation(key, value, message):
    if message is None:
        parse_params(with_(key, value))
        return
    with pytest.raises(ParamsError, match=message) as e:
        parse_params(with_(key, value), source="params.yaml")
    assert str(e.value).startswith("params.yaml: ") and "\n" not in str(e.value)  # one line


def test_a_misspelt_key_is_named_once_with_the_key_it_could_be():
    """`epoch: 2` for `epochs: 2`: one line, the typo and the nearest key, not also 'train.epochs: required'."""
    data = with_("train.epochs", ...)
    data["train"]["epoch"] = 2
    with pytest.raises(ParamsError) as e:
        parse_params(data, source="params.yaml")
    assert str(e.value) == "params.yaml: train.epoch: unknown key: did you mean 'epochs'?"


def test_reference_of_a_trained_loss_must_be_trained():
    data = with_("train.losses", ["torch_mse", "numpy_l1"])
    with pytest.raises(ParamsError, match=r"train.losses: 'numpy_l1' is compared with 'torch_l1' "
                                          r"\(losses.numpy_l1.reference\), which is not in train.losses"):
        parse_params(data)


def test_yaml_1_2_as_dvc_reads_it(tmp_path):
    """`lr: 1e-3` is a float to DVC (YAML 1.2): it must be one to us too."""
    text = (ROOT / "params.yaml").read_text().replace("lr: 1.0e-3", "lr: 1e-3")
    assert "lr: 1e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.lr == 1e-3


def test_user_loss_syntax_is_accepted():
    params = parse_params(with_("train.losses", ["torch_mse", "mypkg.losses:MyLoss"]))
    assert params.train.losses[1] == "mypkg.losses:MyLoss"
    assert params.plan()["mypkg.losses:MyLoss"].reference == "torch_mse"


def test_a_shipped_reference_is_a_reference_unless_given_one():
    plan = parse_params(with_("train.losses", ["torch_mse", "torch_l1", "torch_bce"])).plan()
    assert plan["torch_l1"].reference is None and plan["torch_bce"].reference is None
    data = with_("train.losses", ["torch_mse", "torch_l1"])
    data["losses"]["torch_l1_vs_mse"] = {"fn": "torch_l1", "reference": "torch_mse", "expect": "differs"}
    data["train"]["losses"].append("torch_l1_vs_mse")
    assert parse_params(data).plan()["torch_l1_vs_mse"].reference == "torch_mse"


def test_a_reference_with_arguments_and_a_chain():
    data = with_("train.losses", ["torch_mse", "huber_ref", "numpy_huber"])
    plan = parse_params(data).plan()
    assert plan["huber_ref"].reference is None and plan["huber_ref"].args == {"delta": 0.1}
    assert plan["numpy_huber"].reference == "huber_ref" and plan["numpy_huber"].expect == "equal"


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(ParamsError, match=r"nope.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [\n")
    with pytest.raises(ParamsError, match=r"bad.yaml: not valid YAML"):
        load_params(bad)


def test_validate_before_dvc_reads_the_file(tmp_path):
    """`make repro` runs this first: a params.yaml DVC cannot expand gets one line, not DVC's parse error."""
    import subprocess
    import sys

    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text().replace("  devices: [cpu, cuda]", "  devices: cpu"))
    out = subprocess.run([sys.executable, "-m", "lossbench.config", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == f"params: {bad}: train.devices: expected a valid list (got 'cpu')\n"


@pytest.mark.parametrize("value", ["H100", "my box", "../x", "-a"])
def test_a_bad_machine_name_is_one_line(monkeypatch, value):
    from lossbench import machines
    from lossbench.errors import UserError

    monkeypatch.setenv("LOSSBENCH_MACHINE", value)
    with pytest.raises(UserError) as e:
        machines.name()
    assert str(e.value) == (f"LOSSBENCH_MACHINE={value!r}: expected lower-case letters, digits, _ or - "
                            "(it names this machine's directory, results/<machine>/)")


def test_an_unnamed_machine_is_local(monkeypatch):
    from lossbench import machines

    monkeypatch.delenv("LOSSBENCH_MACHINE", raising=False)
    assert machines.name() == "local" and machines.directory("/p") == Path("/p/results/local")


def test_a_torch_loss_named_directly_is_a_reference_itself():
    """Judged against report.reference (an MSE) it would read as a wrong loss; torch's own loss is a reference."""
    plan = parse_params(with_("train.losses", ["torch_mse", "torch.nn.functional:l1_loss", "mine.mod:f"])).plan()
    assert plan["torch.nn.functional:l1_loss"].reference is None
    assert plan["mine.mod:f"].reference == "torch_mse"
