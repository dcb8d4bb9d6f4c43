"""The gradient evidence's words, from made-up gradients."""

import numpy as np
import pandas as pd
import pytest

from lossbench import evidence

REF = {"w": np.array([[0.5, -0.25], [1e-9, 2.0]]), "b": np.array([0.1, -0.3])}


def scaled(c):
    return {k: c * v for k, v in REF.items()}


@pytest.mark.parametrize("grads, forward_equal, text", [
    (scaled(1.0), True, "step 1: every gradient within 0.0001 of the reference's (max rel err 0)"),
    (scaled(2.0), True, "step 1: every gradient is 2.000x the reference's: the backward is scaled wrongly "
                        "(the step-1 loss agrees: the forward is right)"),
    (scaled(2.0), False, "step 1: every gradient is 2.000x the reference's, and the loss differs too: the loss "
                         "itself is scaled, not only its backward"),
    (scaled(0.0), True, "step 1: no gradient reaches the model (every gradient is 0): the loss is detached from "
                        "the graph (the step-1 loss agrees: the forward is right)"),
    ({"w": REF["w"], "b": np.array([0.1, -0.2])}, True,
     "step 1: gradients differ, worst in b (max rel err 0.333): the backward is wrong "
     "(the step-1 loss agrees: the forward is right)"),
    # the step-1 loss differs already: the forward is named first (it read "the backward is wrong")
    ({"w": REF["w"], "b": np.array([0.1, -0.2])}, False,
     "step 1: the loss itself differs from the reference's, so the forward is wrong first; the gradients differ too, "
     "worst in b (max rel err 0.333)"),
    # a flipped sign is not a scale (it read "the backward is scaled wrongly")
    (scaled(-1.0), True, "step 1: every gradient is -1.000x the reference's: sign flipped "
                         "(the step-1 loss agrees: the forward is right)"),
])
def test_gradient_summary(grads, forward_equal, text):
    assert evidence.gradients(grads, REF, 1e-4, forward_equal)["summary"] == text


def test_weights_per_tensor():
    w = evidence.weights({"w": REF["w"] + 0.5, "b": REF["b"]}, REF)
    assert w["max_abs_diff"] == 0.5 and w["worst_tensor"] == "w" and w["tensors"]["b"] == 0.0


def test_the_noise_is_the_running_largest_member_spread_floored_at_ulps_of_the_loss():
    from lossbench.evidence import noise

    ref = np.array([0.25, 0.2, 0.15, 0.1])
    members = np.array([[0.25, 0.2 + 1e-6, 0.15, 0.1],  # (K, steps)
                        [0.25, 0.2, 0.15 - 3e-7, 0.1 + 5e-8]])
    level = noise(members, ref, floor_ulps=8)
    floor = 8 * np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert level[0] == floor[0]  # step 1: the members are bitwise the reference, the floor carries it
    assert level[1:] == pytest.approx([1e-6, 1e-6, 1e-6], rel=1e-9)  # the largest spread so far never shrinks
    assert np.all(level >= floor)


def test_within_noise_names_the_first_step_outside_and_the_share_used():
    from lossbench.evidence import within_noise

    steps = pd.DataFrame({"global_step": [1, 2, 3, 4]})
    ref = np.array([0.25, 0.2, 0.15, 0.1])
    level = np.array([1e-8, 1e-7, 1e-6, 1e-6])
    inside = within_noise(ref + np.array([0, 1e-7, 1e-6, 0]), ref, level, 2.0, steps)
    assert inside["within"] and inside["noise_used"] == pytest.approx(0.5) and inside["first_outside"] is None
    out = within_noise(ref + np.array([0, 3e-7, 0, 0]), ref, level, 2.0, steps)
    assert not out["within"] and out["steps_outside"] == 1
    assert out["first_outside"] == {"global_step": 2, "abs_diff": pytest.approx(3e-7), "bound": pytest.approx(2e-7)}
    assert out["growth"] is None  # fewer than 10 steps to fit: no growth figure rather than a noisy one


def test_gradients_within_noise_decide_by_each_tensors_own_noise():
    from lossbench.evidence import gradients

    ref = {"w": np.array([1e-3, -2e-3], dtype=np.float32), "b": np.array([0.0], dtype=np.float32)}
    spread = {"w": 1e-9, "b": 0.0}
    ok = gradients({"w": ref["w"] + np.float32(1e-9), "b": ref["b"]}, ref, 1e-4, True, spread, 8, 2.0)
    assert ok["within"] and 0 < ok["noise_used"] <= 1 and "rounding noise" in ok["summary"]
    bad = gradients({"w": ref["w"] * 2, "b": ref["b"]}, ref, 1e-4, True, spread, 8, 2.0)
    assert not bad["within"] and bad["factor"] == pytest.approx(2.0) and bad["noise_used"] > 1e3


def test_against_fp64_is_the_candidates_distance_as_a_share_of_the_references_own():
    from lossbench.evidence import against_fp64

    fp64 = np.array([1.0, 0.5, 0.25])
    d = against_fp64(fp64 + [0, 4e-7, 0], fp64 + [0, 0, 2e-7], fp64)
    assert (d["fp64_max_diff"], d["ref_fp64_max_diff"]) == (pytest.approx(4e-7), pytest.approx(2e-7))
    assert d["fp64_ratio"] == pytest.approx(2.0)
    assert against_fp64(fp64, fp64, fp64)["fp64_ratio"] == 0.0  # all three the same: no distance to share


def test_first_visible_is_the_first_step_where_a_member_left_the_reference():
    from lossbench.evidence import first_visible

    ref = np.array([1.0, 0.5, 0.25, 0.2])
    assert first_visible(np.array([ref, ref + [0, 0, 1e-7, 0]]), ref) == 3
    assert first_visible(np.array([ref, ref]), ref) is None  # the nudge rounded away: the envelope is its floor


def test_a_dtype_asymmetry_is_one_sentence_and_numpy_computing_outside_torch_is_none():
    from lossbench.verdict import asymmetry

    ref = {"received": "bfloat16", "target": "float32", "computed": ["float32"], "returned": "float32"}
    assert asymmetry(dict(ref), ref) is None
    numpy = {**ref, "computed": []}  # its arithmetic ran in NumPy: no torch op to compare
    assert asymmetry(numpy, ref) is None
    low = {**ref, "computed": ["bfloat16"], "returned": "bfloat16"}
    assert asymmetry(low, ref) == ("your loss computed in bfloat16 and returned bfloat16; its reference computed in "
                                   "float32 and returned float32")
    assert asymmetry({**ref, "received": "float32"}, ref).startswith("your loss received float32; its reference "
                                                                      "received bfloat16")
