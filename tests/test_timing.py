"""The interleaved cost measurement: its statistics, and the stage on tiny data."""

import json
import math

import numpy as np
import pytest

from lossbench import stats
from tests.conftest import check_files, small_params, train_config


def test_ratio_interval_from_per_round_ratios():
    ref = np.array([10.0, 12.0, 9.0, 11.0])  # drift between rounds: it cancels
    cand = ref * np.array([1.10, 1.12, 1.08, 1.10])
    ratio, lo, hi = stats.ratio_ci(cand, ref)
    logs = np.log([1.10, 1.12, 1.08, 1.10])
    half = 3.182 * logs.std(ddof=1) / 2  # t(0.975, 3) * s / sqrt(4)
    assert ratio == pytest.approx(math.exp(logs.mean()))
    assert (lo, hi) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert stats.ratio_ci(ref, ref) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("ratio, lo, hi, label", [
    (1.10, 1.08, 1.12, "slower"),
    (0.50, 0.45, 0.55, "faster"),
    (1.03, 1.01, 1.05, "below the 1.05 effect floor"),  # clear of 1, but below the minimum effect: said so
    (1.10, 0.98, 1.22, "no measurable difference"),  # large, but the interval holds 1
])
def test_label_needs_an_interval_clear_of_1_and_a_minimum_effect(ratio, lo, hi, label):
    assert stats.label(ratio, lo, hi, 1.05) == label


def test_a_noisy_measurement_says_so():
    ref = np.ones(5)
    quiet, loud = ref * [1.01, 1.02, 1.0, 1.01, 1.02], ref * [1.0, 1.3, 0.95, 1.25, 1.1]
    assert stats.spread(quiet, ref) < stats.NOISY <= stats.spread(loud, ref)
    assert stats.label(1.13, 1.02, 1.25, 1.05, stats.spread(loud, ref)).startswith("slower (noisy: rounds spread 14%")
    assert stats.label(1.01, 1.0, 1.02, 1.05, stats.spread(quiet, ref)) == "no measurable difference"


def test_t_quantiles():
    assert stats.t975(9) == 2.262 and stats.t975(27) == 2.060 and abs(stats.t975(200) - 1.97) < 0.01


def test_a_candidates_train_stage_times_it_beside_its_reference(tmp_path, synthetic):
    """Its cost is measured where it trains, in turn with its reference: editing one loss re-times one loss
    (a device-wide cost stage re-timed every loss of the device). A reference writes no cost of its own."""
    params = small_params(tmp_path / "params.yaml", losses=["torch_mse", "numpy_mse"], devices=["cpu"])
    checks = check_files(params, tmp_path / "check")
    ref = train_config(params, synthetic, checks, tmp_path / "runs", "torch_mse")
    cand = train_config(params, synthetic, checks, tmp_path / "runs", "numpy_mse")
    assert not (ref / "cost.json").exists()
    c = json.loads((cand / "cost.json").read_text())
    assert c["params"]["rounds"] == 3 and c["loop_seconds"] > 0
    assert sorted(c["configurations"]) == ["numpy_mse-cpu-fp32-eager", "torch_mse-cpu-fp32-eager"]
    for m in c["configurations"].values():
        assert len(m["step_seconds"]) == 3 and all(s > 0 for s in m["step_seconds"])
        assert set(m["phase_seconds"]) == {"forward", "loss", "backward", "step"}
    record = json.loads((checks / "cpu" / "numpy_mse-cpu-fp32-eager.json").read_text())["reference"]
    assert record["config"] == "torch_mse-cpu-fp32-eager" and record["fn"] == "torch_mse"  # its timing's other half
