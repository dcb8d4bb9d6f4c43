"""The gradient evidence's words, from made-up gradients."""

import numpy as np
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
    ({"w": REF["w"], "b": np.array([0.1, -0.2])}, False,
     "step 1: gradients differ, worst in b (max rel err 0.333): the backward is wrong"),
])
def test_gradient_summary(grads, forward_equal, text):
    assert evidence.gradients(grads, REF, 1e-4, forward_equal)["summary"] == text


def test_weights_per_tensor():
    w = evidence.weights({"w": REF["w"] + 0.5, "b": REF["b"]}, REF)
    assert w["max_abs_diff"] == 0.5 and w["worst_tensor"] == "w" and w["tensors"]["b"] == 0.0
