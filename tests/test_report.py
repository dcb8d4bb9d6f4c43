import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lossbench import gpu, report, train
from lossbench.config import load_params
from tests.conftest import small_params, write_idx

LOSSES = ["torch_mse", "functional_mse", "module_mse", "numpy_mse", "numpy_detached"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Real runs of every loss on tiny synthetic data, plus an unavailable cuda run per loss."""
    from lossbench import platform_info
    from lossbench.io import write_json

    tmp = tmp_path_factory.mktemp("runs")
    write_idx(tmp / "data" / "MNIST" / "raw")
    write_json(tmp / "platform.json", platform_info.collect())
    params = small_params(tmp / "params.yaml")
    for loss in LOSSES:
        train.main(["--loss", loss, "--device", "cpu", "--params", str(params), "--data", str(tmp / "data"),
                    "--platform", str(tmp / "platform.json"), "--out", str(tmp / "runs" / f"{loss}-cpu")])
        write_json(tmp / "runs" / f"{loss}-cuda" / "run.json",
                   {"status": "unavailable", "reason": "no GPU in this test", "config": f"{loss}-cuda"})
    return tmp


@pytest.fixture
def work(runs_dir, tmp_path):
    """A private copy of the runs and params, free to break."""
    shutil.copytree(runs_dir / "runs", tmp_path / "runs")
    shutil.copy(runs_dir / "params.yaml", tmp_path / "params.yaml")
    import yaml

    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["train"]["devices"] = ["cpu", "cuda"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    return tmp_path


def evaluate(work, require=False):
    params = load_params(work / "params.yaml")
    return report.evaluate(params, report.load_runs(work / "runs", params.train.losses, params.train.devices), require)


def edit_steps(work, config, fn):
    path = work / "runs" / config / "steps.csv"
    steps = pd.read_csv(path)
    fn(steps)
    steps.to_csv(path, index=False)


def test_all_pass_and_verdicts(work):
    res = evaluate(work)
    assert res.failures == []
    c = res.configs
    assert [c[f"{l}-cpu"]["verdict"] for l in LOSSES] == ["reference", "equal", "equal", "equal", "differs"]
    assert c["numpy_detached-cpu"]["weights_changed"] is False
    assert all(c[f"{l}-cuda"]["verdict"] == "not run" and c[f"{l}-cuda"]["passed"] for l in LOSSES)
    assert c["functional_mse-cpu"]["bitwise_equal_steps"] == 32 // 2


def test_trajectory_beyond_tolerance_names_config_step_and_values(work):
    def bump(s):
        s.loc[(s["repeat"] == 1) & (s["global_step"] == 5), "loss"] += 1e-3
        s.loc[(s["repeat"] == 2) & (s["global_step"] == 5), "loss"] += 1e-3  # repeats stay identical

    edit_steps(work, "numpy_mse-cpu", bump)
    res = evaluate(work)
    assert len(res.failures) == 1
    assert res.failures[0].startswith("numpy_mse-cpu: expected equal to torch_mse-cpu, first broken at global "
                                      "step 5 (epoch 1, step 5): loss ")
    assert "|diff| 0.001 > tolerance 1e-05" in res.failures[0]
    assert res.configs["numpy_mse-cpu"]["passed"] is False


def test_negative_control_that_does_not_differ_fails(work):
    ref = pd.read_csv(work / "runs" / "torch_mse-cpu" / "steps.csv")
    edit_steps(work, "numpy_detached-cpu", lambda s: s.__setitem__("loss", ref["loss"]))
    res = evaluate(work)
    assert any("numpy_detached-cpu: expected to differ from torch_mse-cpu" in f for f in res.failures)


def test_weights_that_should_not_change_but_did_fail(work):
    path = work / "runs" / "numpy_detached-cpu" / "run.json"
    run = json.loads(path.read_text())
    run["weights_changed"] = True
    path.write_text(json.dumps(run))
    assert "numpy_detached-cpu: weights changed, expected them unchanged" in evaluate(work).failures


def test_repeats_that_differ_fail_with_the_step(work):
    def nudge(s):
        s.loc[(s["repeat"] == 2) & (s["global_step"] == 7), "loss"] = np.nextafter(
            s.loc[(s["repeat"] == 2) & (s["global_step"] == 7), "loss"], 1.0)

    edit_steps(work, "module_mse-cpu", nudge)
    res = evaluate(work)
    assert len(res.failures) == 1 and res.failures[0].startswith(
        "module_mse-cpu: repeat 2 differs from repeat 1 at global step 7: ")
    assert res.configs["module_mse-cpu"]["repeats_identical"] is False


def test_repeats_that_end_with_other_weights_fail(work):
    path = work / "runs" / "numpy_mse-cpu" / "run.json"
    run = json.loads(path.read_text())
    run["repeats"][1]["weights_end"] = "0" * 64
    path.write_text(json.dumps(run))
    assert evaluate(work).failures == ["numpy_mse-cpu: repeat 2 ends with other weights than repeat 1 "
                                       f"(000000000000 vs {run['repeats'][0]['weights_end'][:12]})"]


def test_cross_device_is_compared_when_both_ran(work):
    for loss in LOSSES:  # pretend the cpu runs were cuda runs, one of them off by a lot
        shutil.rmtree(work / "runs" / f"{loss}-cuda")
        shutil.copytree(work / "runs" / f"{loss}-cpu", work / "runs" / f"{loss}-cuda")
    edit_steps(work, "numpy_mse-cuda", lambda s: s.__setitem__("loss", s["loss"] + 1e-9))
    res = evaluate(work)
    assert res.failures == [] and res.cross["numpy_mse:cpu-vs-cuda"]["bitwise_equal_steps"] == 0
    edit_steps(work, "module_mse-cuda", lambda s: s.__setitem__("loss", s["loss"] * 1.1))
    res = evaluate(work)
    assert any(f.startswith("module_mse-cuda vs module_mse-cpu: first broken at global step 1") for f in res.failures)


def test_not_run_fails_only_when_devices_required(work):
    res = evaluate(work, require=True)
    assert len(res.failures) == 5
    assert res.failures[0] == "torch_mse-cuda: not run and LOSSBENCH_REQUIRE_DEVICES=1: no GPU in this test"


def test_truncated_steps_csv_is_an_error_naming_the_file(work):
    path = work / "runs" / "numpy_mse-cpu" / "steps.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:10]))
    with pytest.raises(report.ReportError, match=r"numpy_mse-cpu/steps.csv: 9 rows, expected 32 .*interrupted"):
        evaluate(work)


def test_missing_run_is_an_error_naming_the_file(work):
    shutil.rmtree(work / "runs" / "numpy_mse-cpu")
    with pytest.raises(FileNotFoundError, match=r"numpy_mse-cpu/run.json: file not found"):
        evaluate(work)


def run_report(work):
    report.main(["--params", str(work / "params.yaml"), "--runs", str(work / "runs"), "--out", str(work / "out")])
    return work / "out"


def test_main_writes_report_metrics_plots_and_pictures(work, monkeypatch):
    monkeypatch.delenv(gpu.REQUIRE_DEVICES, raising=False)
    out = run_report(work)
    md = (out / "report.md").read_text()
    summary = md[: md.index("## Details")]
    assert "**Result: PASS**" in summary and "## Not run" in summary and "## Cost" in summary
    assert "numpy_mse-cuda**: no GPU in this test" in summary
    m = json.loads((out / "metrics.json").read_text())
    assert m["passed"] is True and m["configs"]["numpy_detached-cpu"]["verdict"] == "differs"
    assert "cpu" in m["platform"]
    loss = pd.read_csv(out / "plots" / "loss" / "cpu.csv")
    assert list(loss.columns) == ["global_step", *LOSSES] and len(loss) == 16
    for name in ("loss-cpu.png", "absdiff-cpu.png", "step-time.png"):
        assert f"]({name})" in md
        with Image.open(out / name) as img:
            img.verify()
            assert img.format == "PNG"
        assert (out / name).stat().st_size < 100_000  # small enough to commit


def test_main_writes_the_report_then_exits_nonzero_on_failure(work):
    edit_steps(work, "functional_mse-cpu", lambda s: s.__setitem__("loss", s["loss"] * 2))
    with pytest.raises(SystemExit, match=r"report: FAIL\n  functional_mse-cpu: expected equal"):
        run_report(work)
    md = (work / "out" / "report.md").read_text()
    assert "**Result: FAIL (1)**" in md and "## Failures" in md
    assert json.loads((work / "out" / "metrics.json").read_text())["passed"] is False
