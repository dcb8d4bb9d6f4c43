import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lossbench.config import load_params
from lossbench.configuration import Configuration, matrix
from lossbench import evidence, verdict
from stages import report
from tests.conftest import ROOT, check_files, small_params, train_config, write_idx

LOSSES = ["torch_mse", "functional_mse", "module_mse", "numpy_mse", "numpy_detached", "wrong_backward"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Real runs of every loss on tiny synthetic data, plus an unavailable cuda run per loss."""
    from lossbench.files import write_json

    tmp = tmp_path_factory.mktemp("runs")
    write_idx(tmp / "data" / "MNIST" / "raw")
    params = small_params(tmp / "params.yaml", losses=LOSSES)
    checks = check_files(params, tmp / "check")
    for loss in LOSSES:
        train_config(params, tmp / "data", checks, tmp / "runs", loss)
        write_json(tmp / "runs" / f"{loss}-cuda-fp32-eager" / "run.json",
                   {"status": "unavailable", "reason": "no GPU in this test", "config": f"{loss}-cuda-fp32-eager"})
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


def evaluate(work):
    params = load_params(work / "params.yaml")
    return verdict.evaluate(params, verdict.load_runs(work / "runs", matrix(params.train)))


def edit_steps(work, config, fn):
    path = work / "runs" / config / "steps.csv"
    steps = pd.read_csv(path)
    fn(steps)
    steps.to_csv(path, index=False)


def test_cost_ratio_has_an_interval_and_a_label(work):
    from lossbench import stats

    params = load_params(work / "params.yaml")
    runs = verdict.load_runs(work / "runs", matrix(params.train))
    c = verdict.evaluate(params, runs).configs
    assert c["torch_mse-cpu-fp32-eager"]["cost"] == "reference" and c["torch_mse-cpu-fp32-eager"]["cost_ratio"] == 1.0
    for loss in LOSSES[1:]:
        r = c[f"{loss}-cpu-fp32-eager"]
        assert r["cost_ratio_low"] <= r["cost_ratio"] <= r["cost_ratio_high"], r
        assert r["cost"].startswith(("no measurable difference", "below the 1.05 effect floor", "slower", "faster"))
        assert set(r["phases_ms"]) == {"forward", "loss", "backward", "step"}
        # the label follows the interval (what the timings are is the benchmark's business, not a test's)
        assert r["cost"].split(" (noisy")[0] == stats.label(r["cost_ratio"], r["cost_ratio_low"],
                                                            r["cost_ratio_high"], params.cost.min_effect)


def test_a_references_timed_step_pools_its_timings_beside_every_candidate(work):
    """Each candidate's stage timed the reference beside it: the reference's row is all of those rounds, whichever
    candidate is read first (it took the first one's, and jumped when a candidate was added)."""
    params = load_params(work / "params.yaml")
    runs = verdict.load_runs(work / "runs", matrix(params.train))
    ref = "torch_mse-cpu-fp32-eager"
    beside = [r.cost["configurations"][ref]["step_seconds"] for r in runs.values() if r.cost]
    assert len(beside) == len(LOSSES) - 1
    row = verdict.cost_rows(params, runs)[ref]
    pooled = [v * 1e3 for seconds in beside for v in seconds]
    assert row["timed_beside"] == len(beside)
    assert row["cost_step_ms"][0] == pytest.approx(np.exp(np.mean(np.log(pooled))))  # stats.mean_ci: geometric
    for key, cand in verdict.cost_rows(params, runs).items():  # a candidate's ratio is read against its own row
        if key != ref:
            assert cand["ref_step_ms"] != row["cost_step_ms"] and cand["ref_step_ms"][1] < cand["ref_step_ms"][0]
    backwards = dict(reversed(list(runs.items())))
    assert verdict.cost_rows(params, backwards)[ref]["cost_step_ms"] == pytest.approx(row["cost_step_ms"])


def test_all_pass_and_verdicts(work):
    res = evaluate(work)
    assert res.failures == []
    c = res.configs
    assert [c[f"{l}-cpu-fp32-eager"]["verdict"] for l in LOSSES] == ["reference", "equal", "equal", "equal", "differs", "differs"]
    assert c["numpy_detached-cpu-fp32-eager"]["weights_changed"] is False
    assert all(c[f"{l}-cuda-fp32-eager"]["verdict"] == "not run" and c[f"{l}-cuda-fp32-eager"]["passed"] for l in LOSSES)
    assert c["functional_mse-cpu-fp32-eager"]["bitwise_equal_steps"] == 32 // 2


def test_trajectory_beyond_tolerance_names_config_step_and_values(work):
    def bump(s):
        s.loc[(s["repeat"] == 1) & (s["global_step"] == 5), "loss"] += 1e-3
        s.loc[(s["repeat"] == 2) & (s["global_step"] == 5), "loss"] += 1e-3  # repeats stay identical

    edit_steps(work, "numpy_mse-cpu-fp32-eager", bump)
    res = evaluate(work)  # the default rule: the reference's own rounding noise
    assert len(res.failures) == 1 and res.failures[0].startswith(
        "numpy_mse-cpu-fp32-eager: expected equal to torch_mse-cpu-fp32-eager, first broken at global step 5: |diff| 0.001 > 2x its "
        "reference's rounding noise (")
    assert res.failures[0].endswith(f"; 1 steps outside, at most {res.configs['numpy_mse-cpu-fp32-eager']['noise_used']:.3g}x")
    assert res.configs["numpy_mse-cpu-fp32-eager"]["passed"] is False and res.configs["numpy_mse-cpu-fp32-eager"]["first_outside_noise"] == 5
    set_params(work, lambda p: p["report"].update(rule="fixed"))  # the fixed tolerance, as an explicit override
    res = evaluate(work)
    assert len(res.failures) == 1
    assert res.failures[0].startswith("numpy_mse-cpu-fp32-eager: expected equal to torch_mse-cpu-fp32-eager, first broken at global "
                                      "step 5 (epoch 1, step 5): loss ")
    assert "|diff| 0.001 > tolerance 1e-05" in res.failures[0]
    assert res.configs["numpy_mse-cpu-fp32-eager"]["passed"] is False


def test_negative_control_that_does_not_differ_fails(work):
    ref = pd.read_csv(work / "runs" / "torch_mse-cpu-fp32-eager" / "steps.csv")
    edit_steps(work, "numpy_detached-cpu-fp32-eager", lambda s: s.__setitem__("loss", ref["loss"]))
    res = evaluate(work)
    assert not any("numpy_detached-cpu-fp32-eager: expected to differ" in f for f in res.failures)  # its gradients still differ
    shutil.copy(work / "runs" / "torch_mse-cpu-fp32-eager" / "grads.npz", work / "runs" / "numpy_detached-cpu-fp32-eager" / "grads.npz")
    res = evaluate(work)
    assert any("numpy_detached-cpu-fp32-eager: expected to differ from torch_mse-cpu-fp32-eager" in f for f in res.failures)


def test_weights_that_should_not_change_but_did_fail(work):
    path = work / "runs" / "numpy_detached-cpu-fp32-eager" / "run.json"
    run = json.loads(path.read_text())
    run["weights_changed"] = True
    path.write_text(json.dumps(run))
    assert "numpy_detached-cpu-fp32-eager: weights changed, expected them unchanged" in evaluate(work).failures


def test_repeats_that_differ_fail_with_the_step(work):
    def nudge(s):
        s.loc[(s["repeat"] == 2) & (s["global_step"] == 7), "loss"] = np.nextafter(
            s.loc[(s["repeat"] == 2) & (s["global_step"] == 7), "loss"], 1.0)

    edit_steps(work, "module_mse-cpu-fp32-eager", nudge)
    res = evaluate(work)
    assert len(res.failures) == 1 and res.failures[0].startswith(
        "module_mse-cpu-fp32-eager: repeat 2 differs from repeat 1 at global step 7: ")
    assert re.search(r"global step 7: 0\.\d+ vs 0\.\d+$", res.failures[0])  # plain numbers, not np.float64(...)
    assert res.configs["module_mse-cpu-fp32-eager"]["repeats_identical"] is False


def test_repeats_that_end_with_other_weights_fail(work):
    path = work / "runs" / "numpy_mse-cpu-fp32-eager" / "run.json"
    run = json.loads(path.read_text())
    run["repeats"][1]["weights_end"] = "0" * 64
    path.write_text(json.dumps(run))
    assert evaluate(work).failures == ["numpy_mse-cpu-fp32-eager: repeat 2 ends with other weights than repeat 1 "
                                       f"(000000000000 vs {run['repeats'][0]['weights_end'][:12]})"]


def test_cross_device_is_compared_when_both_ran(work):
    for loss in LOSSES:  # pretend the cpu runs were cuda runs, one of them off by a lot
        shutil.rmtree(work / "runs" / f"{loss}-cuda-fp32-eager")
        shutil.copytree(work / "runs" / f"{loss}-cpu-fp32-eager", work / "runs" / f"{loss}-cuda-fp32-eager")
    edit_steps(work, "numpy_mse-cuda-fp32-eager", lambda s: s.__setitem__("loss", s["loss"] + 1e-9))
    res = evaluate(work)
    assert res.failures == [] and res.cross["numpy_mse-cpu-fp32-eager vs numpy_mse-cuda-fp32-eager"]["bitwise_equal_steps"] == 0
    edit_steps(work, "module_mse-cuda-fp32-eager", lambda s: s.__setitem__("loss", s["loss"] * 1.1))
    res = evaluate(work)
    assert any(f.startswith("module_mse-cuda-fp32-eager vs module_mse-cpu-fp32-eager: first broken at global step 1") for f in res.failures)


def set_params(work, fn):
    import yaml

    p = yaml.safe_load((work / "params.yaml").read_text())
    fn(p)
    (work / "params.yaml").write_text(yaml.safe_dump(p))


def test_gradient_check_names_a_scaled_backward_at_step_1(work):
    c = evaluate(work).configs["wrong_backward-cpu-fp32-eager"]
    assert c["verdict"] == "differs" and c["grad_factor"] == pytest.approx(2.0, abs=1e-3)
    assert c["grad_summary"].startswith("step 1: every gradient is 2.000x the reference's: the backward is scaled "
                                        "wrongly (the step-1 loss agrees: the forward is right)")
    assert evaluate(work).configs["numpy_detached-cpu-fp32-eager"]["grad_factor"] == 0.0


def test_gradient_check_alone_catches_it_when_the_trajectory_passes(work):
    """With a trajectory tolerance so loose that every step passes, step 1's gradients still fail it."""
    def loose(p):
        p["report"]["rule"] = "fixed"
        p["report"]["same_device"]["atol"] = 1.0
        p["losses"]["wrong_backward_expected_equal"] = {"fn": "wrong_backward", "expect": "equal"}
        p["train"]["losses"] = [l if l != "wrong_backward" else "wrong_backward_expected_equal" for l in LOSSES]
    set_params(work, loose)
    (work / "runs" / "wrong_backward-cpu-fp32-eager").rename(work / "runs" / "wrong_backward_expected_equal-cpu-fp32-eager")
    (work / "runs" / "wrong_backward-cuda-fp32-eager").rename(work / "runs" / "wrong_backward_expected_equal-cuda-fp32-eager")
    res = evaluate(work)
    assert res.configs["wrong_backward_expected_equal-cpu-fp32-eager"]["max_abs_diff"] < 1.0  # the trajectory alone passes
    assert [f for f in res.failures if "wrong_backward" in f] == [
        "wrong_backward_expected_equal-cpu-fp32-eager: expected equal to torch_mse-cpu-fp32-eager, but step 1: every gradient is 2.000x "
        "the reference's: the backward is scaled wrongly (the step-1 loss agrees: the forward is right)"]


def test_gradient_within_relative_tolerance_and_beyond(work):
    path = work / "runs" / "numpy_mse-cpu-fp32-eager" / "grads.npz"
    g = dict(np.load(path))
    ref = dict(np.load(work / "runs" / "torch_mse-cpu-fp32-eager" / "grads.npz"))
    k = "decoder.6.bias"
    g[k] = ref[k] + 5e-4 * np.abs(ref[k]).max()  # one tensor off by 5e-4 of its scale; tolerance 1e-4
    np.savez(path, **g)
    res = evaluate(work)
    assert res.configs["numpy_mse-cpu-fp32-eager"]["verdict"] == "differs"
    assert any(f.startswith("numpy_mse-cpu-fp32-eager: expected equal to torch_mse-cpu-fp32-eager, but step 1: gradients differ, worst in "
                            "decoder.6.bias (max rel err 0.0005") for f in res.failures)


def test_each_loss_is_judged_against_its_own_reference(work):
    """functional_mse judged against module_mse (equal), numpy_detached against numpy_mse (differs)."""
    def refs(p):
        p["losses"]["fmse"] = {"fn": "functional_mse", "reference": "module_mse"}
        p["train"]["losses"] = [l if l != "functional_mse" else "fmse" for l in LOSSES]
    set_params(work, refs)
    for d in ("cpu", "cuda"):
        (work / "runs" / f"functional_mse-{d}-fp32-eager").rename(work / "runs" / f"fmse-{d}-fp32-eager")
    # module_mse ran as a candidate, without the ensemble a reference trains under the noise rule: not judged
    res = evaluate(work)
    assert res.failures == ["fmse-cpu-fp32-eager: its reference module_mse-cpu-fp32-eager has no envelope (report.rule is envelope): "
                            "re-run it (`dvc repro -f -s results/<machine>/dvc.yaml:train@module_mse-cpu-fp32-eager`)"]
    assert res.configs["fmse-cpu-fp32-eager"]["verdict"] == "not judged"
    set_params(work, lambda p: p["report"].update(rule="fixed"))
    res = evaluate(work)
    assert res.failures == []
    assert res.configs["fmse-cpu-fp32-eager"]["reference"] == "module_mse" and res.configs["fmse-cpu-fp32-eager"]["verdict"] == "equal"
    assert res.configs["module_mse-cpu-fp32-eager"]["verdict"] == "reference"  # named as a reference: judged against nothing


def test_truncated_steps_csv_is_an_error_naming_the_file(work):
    path = work / "runs" / "numpy_mse-cpu-fp32-eager" / "steps.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:10]))
    with pytest.raises(verdict.ReportError, match=r"numpy_mse-cpu-fp32-eager/steps.csv: 9 rows, expected 32 .*interrupted"):
        evaluate(work)


def test_a_missing_run_is_not_run_with_the_reason_and_its_candidates_fail(work):
    # e.g. another machine's lock pulled, but one configuration its machine never pushed
    shutil.rmtree(work / "runs" / "numpy_mse-cpu-fp32-eager")
    res = evaluate(work)
    row = res.configs["numpy_mse-cpu-fp32-eager"]
    assert row["verdict"] == "not run" and row["status"] == "missing"
    assert "numpy_mse-cpu-fp32-eager/run.json is not here (`make repro` on its machine; from another machine: `make pull`)" \
        in row["reason"]
    shutil.rmtree(work / "runs" / "torch_mse-cpu-fp32-eager")
    res = evaluate(work)
    assert res.configs["module_mse-cpu-fp32-eager"]["verdict"] == "not judged"
    assert any(f.startswith("module_mse-cpu-fp32-eager: its reference torch_mse-cpu-fp32-eager has no result to compare with: no result: ")
               for f in res.failures)


def test_one_device_from_two_platforms_fails_naming_both_machines(work):
    path = work / "runs" / "numpy_mse-cpu-fp32-eager" / "run.json"
    info = json.loads(path.read_text())
    info["platform"] = {**info["platform"], "cpu": "Other CPU"}
    info["host"] = {"machine": "b", "name": "node2"}
    path.write_text(json.dumps(info))
    failures = [f for f in evaluate(work).failures if "platforms differ" in f]
    assert len(failures) == 1
    assert failures[0].startswith("cpu: platforms differ for one device: torch_mse-cpu-fp32-eager ran on ")
    assert (", numpy_mse-cpu-fp32-eager on b (node2) (cpu differ): two hosts share one machine name; give each its own "
            "LOSSBENCH_MACHINE, or re-run this device here") in failures[0]


def run_report(work):
    report.main(["--params", str(work / "params.yaml"), "--runs", str(work / "runs"),
                 "--out", str(work / "out")])
    return work / "out"


def test_main_writes_report_metrics_plots_and_pictures(work):
    out = run_report(work)
    md = (out / "report.md").read_text()
    summary = md[: md.index("## Details")]
    assert "**Result: PASS**" in summary and "## Not run" in summary and "## Cost" in summary
    assert "- **cuda** (torch_mse, functional_mse, module_mse, numpy_mse, numpy_detached, wrong_backward): no GPU in this test" in summary
    m = json.loads((out / "metrics.json").read_text())
    assert m["passed"] is True and m["configs"]["numpy_detached-cpu-fp32-eager"]["verdict"] == "differs"
    # metrics fit a terminal: numbers, flags and one-word verdicts; no sentence, platform or reason
    words = [v for c in m["configs"].values() for v in c.values() if isinstance(v, str)]
    assert words and max(map(len, words)) <= 10 and "platform" not in m
    assert all(name.endswith("-cpu-fp32-eager") for name in m["configs"])  # not-run configurations stay in summary.json
    full = json.loads((out / "summary.json").read_text())
    assert "cpu" in full["platform"] and full["configs"]["torch_mse-cuda-fp32-eager"]["reason"] == "no GPU in this test"
    loss = pd.read_csv(out / "plots" / "loss" / "cpu-fp32-eager.csv")
    assert list(loss.columns) == ["global_step", *LOSSES] and len(loss) == 16
    for name in ("loss-cpu-fp32-eager.png", "absdiff-cpu-fp32-eager.png", "step-time.png"):
        assert f"]({name})" in md
        with Image.open(out / name) as img:
            img.verify()
            assert img.format == "PNG"
        assert (out / name).stat().st_size < 100_000  # small enough to commit


def test_main_writes_the_report_then_exits_nonzero_on_failure(work):
    edit_steps(work, "functional_mse-cpu-fp32-eager", lambda s: s.__setitem__("loss", s["loss"] * 2))
    with pytest.raises(SystemExit, match=r"report: FAIL \(.*report.md\)\n  functional_mse-cpu-fp32-eager: expected equal"):
        run_report(work)
    md = (work / "out" / "report.md").read_text()
    assert "**Result: FAIL (1)**" in md and "## Failures" in md
    assert json.loads((work / "out" / "metrics.json").read_text())["passed"] is False


def test_reading_params_judging_and_comparing_import_no_torch():
    # torch costs ~3 s a process: the report, `make compare` and the params check need none of it
    import subprocess
    import sys

    code = ("import sys; import stages.report, lossbench.compare, lossbench.config; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def drift(work, loss, step, by):
    """The cuda device drifts by ``by`` at ``step``: the loss, its reference torch_mse and the reference's noise
    ensemble alike (the ensemble moved with it: its noise is unchanged), so on cuda the loss still equals its
    reference while cuda vs cpu moved."""
    def f(s):
        s.loc[s["global_step"] == step, "loss"] += by
    for name in {loss, "torch_mse"}:
        edit_steps(work, f"{name}-cuda-fp32-eager", f)
    path = work / "runs" / "torch_mse-cuda-fp32-eager" / "envelope.csv"
    env = pd.read_csv(path)
    members = [c for c in env.columns if c.startswith("member_")]
    env.loc[env["global_step"] == step, members] += by
    env.to_csv(path, index=False)


def test_across_devices_each_loss_is_judged_by_both_devices_noise(work):
    """A second device made from the first: a rounding-sized difference passes, a larger one fails, by the noise."""
    for loss in LOSSES:
        shutil.rmtree(work / "runs" / f"{loss}-cuda-fp32-eager")
        shutil.copytree(work / "runs" / f"{loss}-cpu-fp32-eager", work / "runs" / f"{loss}-cuda-fp32-eager")
    res = evaluate(work)
    pair = res.cross["numpy_mse-cpu-fp32-eager vs numpy_mse-cuda-fp32-eager"]
    assert pair["rule"] == "envelope" and pair["passed"] and pair["noise_used"] == 0.0
    ref = verdict.load_run(work / "runs" / "torch_mse-cpu-fp32-eager", Configuration("torch_mse", "cpu"))
    level = evidence.noise(ref.members, ref.losses(), load_params(work / "params.yaml").report.envelope.floor_ulps)

    drift(work, "numpy_mse", 10, level[9])  # half of 2x the noise at step 10: inside
    res = evaluate(work)
    assert res.cross["numpy_mse-cpu-fp32-eager vs numpy_mse-cuda-fp32-eager"]["noise_used"] == pytest.approx(0.5, rel=0.2)
    assert res.cross["numpy_mse-cpu-fp32-eager vs numpy_mse-cuda-fp32-eager"]["passed"], res.cross["numpy_mse-cpu-fp32-eager vs numpy_mse-cuda-fp32-eager"]
    drift(work, "numpy_mse", 10, 1e-2)
    res = evaluate(work)
    assert res.configs["numpy_mse-cuda-fp32-eager"]["verdict"] == "equal"  # on cuda it still follows its reference
    assert not res.cross["numpy_mse-cpu-fp32-eager vs numpy_mse-cuda-fp32-eager"]["passed"]
    assert any(f.startswith("numpy_mse-cuda-fp32-eager vs numpy_mse-cpu-fp32-eager: first broken at global step 10: |diff| ") and
               f.endswith("(both devices' noise, the larger)") for f in res.failures)


def test_across_devices_a_loss_that_differs_from_its_reference_is_judged_by_the_fixed_rule(work):
    """The H100 run's finding (docs/gpu/2026-11-26-h100-run3): wrong_backward's CPU vs CUDA drift was 3.1x its
    reference's noise, a noise measured on the reference's trajectory, which a loss that differs does not follow.
    Such a pair is judged by report.cross_device; a loss equal to its reference stays on the noise rule."""
    for loss in LOSSES:
        shutil.rmtree(work / "runs" / f"{loss}-cuda-fp32-eager")
        shutil.copytree(work / "runs" / f"{loss}-cpu-fp32-eager", work / "runs" / f"{loss}-cuda-fp32-eager")
    ref = verdict.load_run(work / "runs" / "torch_mse-cpu-fp32-eager", Configuration("torch_mse", "cpu"))
    params = load_params(work / "params.yaml")
    level = evidence.noise(ref.members, ref.losses(), params.report.envelope.floor_ulps)
    by = 5 * params.report.envelope.multiplier * level[9]  # 5x the noise bound at step 10
    assert by < params.report.cross_device.atol  # and inside the fixed tolerance, as the H100's 1.0e-5 was

    def shift(amount):
        def f(s):
            s.loc[s["global_step"] == 10, "loss"] += amount
        return f
    edit_steps(work, "wrong_backward-cuda-fp32-eager", shift(by))
    drift(work, "numpy_mse", 10, by)
    res = evaluate(work)
    differs = res.cross["wrong_backward-cpu-fp32-eager vs wrong_backward-cuda-fp32-eager"]
    equal = res.cross["numpy_mse-cpu-fp32-eager vs numpy_mse-cuda-fp32-eager"]
    assert differs["rule"] == "fixed (differs from its reference)" and differs["passed"], differs
    assert equal["rule"] == "envelope" and not equal["passed"], equal  # the same shift, 5x its noise: fails
    assert not any(f.startswith("wrong_backward-cuda") for f in res.failures), res.failures
    edit_steps(work, "wrong_backward-cuda-fp32-eager", shift(1e-3))  # beyond the fixed tolerance: fails
    res = evaluate(work)
    assert not res.cross["wrong_backward-cpu-fp32-eager vs wrong_backward-cuda-fp32-eager"]["passed"]
    assert any(f.startswith("wrong_backward-cuda-fp32-eager vs wrong_backward-cpu-fp32-eager: first broken at global "
                            "step 10") for f in res.failures), res.failures


def test_the_float64_diagnostic_is_shown_and_the_pictures_draw_the_noise_bound(work):
    """The reference's float64 run is reported beside the verdict, never deciding it; the |diff| picture's bound is
    2x the reference's noise under the envelope rule (it drew the fixed atol before)."""
    res = evaluate(work)
    ref, cand = res.configs["torch_mse-cpu-fp32-eager"], res.configs["numpy_mse-cpu-fp32-eager"]
    assert ref["fp64_max_diff"] > 0 and cand["fp64_ratio"] == pytest.approx(
        cand["fp64_max_diff"] / cand["ref_fp64_max_diff"])
    fp64 = pd.read_csv(work / "runs" / "torch_mse-cpu-fp32-eager" / "envelope.csv")["fp64"]
    edit = work / "runs" / "torch_mse-cpu-fp32-eager" / "envelope.csv"
    table = pd.read_csv(edit)
    table["fp64"] = fp64 + 1.0  # a float64 run far away changes the diagnostic and nothing else
    table.to_csv(edit, index=False)
    moved = evaluate(work)
    assert moved.configs["numpy_mse-cpu-fp32-eager"]["fp64_max_diff"] > 0.9 and moved.failures == []
    assert [moved.configs[k]["verdict"] for k in moved.configs] == [res.configs[k]["verdict"] for k in res.configs]
    ref_run = verdict.load_run(work / "runs" / "torch_mse-cpu-fp32-eager", Configuration("torch_mse", "cpu"))
    level = evidence.noise(ref_run.members, ref_run.losses(), load_params(work / "params.yaml").report.envelope.floor_ulps)
    np.testing.assert_array_equal(res.bounds["torch_mse-cpu-fp32-eager"], 2.0 * level)
    md = (run_report(work) / "report.md").read_text()
    assert "vs float64 (diagnostic)" in md and "x the reference's" in md


def test_a_nudge_that_did_not_survive_the_precision_fails_the_reference(work):
    """Members bitwise equal to their reference would make the envelope its floor alone: said, not hidden."""
    res = evaluate(work)
    assert res.configs["torch_mse-cpu-fp32-eager"]["nudge_visible_from"] is not None
    path = work / "runs" / "torch_mse-cpu-fp32-eager" / "envelope.csv"
    table = pd.read_csv(path)
    ref = verdict.load_run(work / "runs" / "torch_mse-cpu-fp32-eager", Configuration("torch_mse", "cpu")).losses()
    for col in table.filter(like="member_"):
        table[col] = ref
    table.to_csv(path, index=False)
    res = evaluate(work)
    assert "torch_mse-cpu-fp32-eager: the one-ulp nudge did not survive fp32: every member equals the reference at " \
           "every step, so its envelope is the floor alone" in res.failures


def test_the_loss_picture_shows_each_candidate_against_its_reference(work, monkeypatch):
    """The references' curve on top; below, each candidate's loss / its reference's - 1 (every curve on one loss
    axis lay under the last: they agree to 1e-6)."""
    from lossbench import render

    figures = {}
    monkeypatch.setattr(render, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    run_report(work)
    top, low = figures["loss-cpu-fp32-eager.png"].axes[:2]
    assert [l.get_label() for l in top.get_lines()] == ["torch_mse (reference)"]
    drawn = {l.get_label(): l.get_ydata() for l in low.get_lines() if not l.get_label().startswith("_")}
    assert set(drawn) == {f"{l} vs torch_mse" for l in LOSSES[1:]} and low.get_ylabel() == "loss / its reference's - 1"
    assert np.all(drawn["functional_mse vs torch_mse"] == 0) and np.max(np.abs(drawn["numpy_detached vs torch_mse"])) > 1e-3


def test_a_compiled_loss_whose_numpy_did_not_run_says_so_in_its_verdict():
    """Compile traced the NumPy into torch ops: `equal` judges torch's code, not the user's NumPy; the verdicts
    table says so where it is read, not only under Details."""
    from lossbench.render import _verdict

    traced = {"verdict": "equal", "numpy_calls": 0, "vs_eager": {"numpy_calls_eager": 2}}
    assert _verdict(traced) == "equal; but its NumPy did not run (Details: Compiled)"
    assert _verdict({**traced, "numpy_calls": 2}) == "equal"  # an opaque op: its NumPy ran
    assert _verdict({"verdict": "equal", "numpy_calls": 0, "vs_eager": None}) == "equal"  # a torch loss, eager
    assert _verdict({"verdict": "equal", "numpy_calls": 0, "vs_eager": float("nan")}) == "equal"  # as pandas gives
