"""A candidate against its reference: trajectory, step-1 gradients, final weights.

As Liger-Kernel's convergence tests judge a kernel: every step's loss within a
tolerance, and the parameters themselves compared. The step-1 gradients come from
the same initial weights and the same first batch, so they isolate the loss's
backward from everything training does afterwards.
"""

import numpy as np


def trajectory(values, ref, atol, rtol, steps):
    """Step-by-step |values - ref| against atol + rtol * |ref|."""
    diff = np.abs(values - ref)
    bound = atol + rtol * np.abs(ref)
    bad = np.flatnonzero(diff > bound)
    i = int(np.argmax(diff))
    out = {
        "within": bad.size == 0,
        "max_abs_diff": float(diff[i]),
        # the largest share of its tolerance any step used (< 1 passes): a metric that stays readable when
        # max |diff| goes 3e-6 -> 3e-8 (`dvc metrics diff` rounds to 5 decimals)
        "tol_used": float(np.max(diff / bound)) if np.all(bound > 0) else float("inf") * bool(bad.size),
        "max_at_global_step": int(steps["global_step"].iloc[i]),
        "bitwise_equal_steps": int(np.sum(values == ref)),
        "steps": int(values.size),
        "first_step_within": bool(diff[0] <= bound[0]),
        "first_violation": None,
    }
    if bad.size:
        j = int(bad[0])
        row = steps.iloc[j]
        out["first_violation"] = {
            "global_step": int(row["global_step"]), "epoch": int(row["epoch"]), "step": int(row["step"]),
            "loss": float(values[j]), "reference": float(ref[j]),
            "abs_diff": float(diff[j]), "tolerance": float(bound[j]),
        }
    return out


def constant_factor(grads, ref, spread=1e-3):
    """The factor c with grads == c * ref everywhere the reference is not tiny, or None."""
    a = np.concatenate([grads[k].ravel() for k in ref]).astype(np.float64)
    b = np.concatenate([ref[k].ravel() for k in ref]).astype(np.float64)
    mask = np.abs(b) > 1e-3 * np.abs(b).max() if b.size and np.abs(b).max() > 0 else np.zeros(b.shape, bool)
    if not mask.any():
        return None
    r = a[mask] / b[mask]
    c = float(np.median(r))
    return c if np.all(np.abs(r - c) <= spread * max(abs(c), 1e-12)) else None


def gradients(grads, ref, rtol, forward_equal=True):
    """Step-1 gradients against the reference's: per tensor, the max abs and relative error, and a verdict."""
    tensors = {}
    for k in ref:
        err = float(np.abs(grads[k].astype(np.float64) - ref[k]).max())
        scale = float(np.abs(ref[k]).max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        tensors[k] = {"max_abs_err": err, "max_rel_err": rel}
    worst = max(tensors, key=lambda k: tensors[k]["max_rel_err"])
    within = tensors[worst]["max_rel_err"] <= rtol
    factor = None if within else constant_factor(grads, ref)
    if within:
        text = f"step 1: every gradient within {rtol:g} of the reference's (max rel err {tensors[worst]['max_rel_err']:.3g})"
    elif factor == 0:
        text = "step 1: no gradient reaches the model (every gradient is 0): the loss is detached from the graph"
    elif factor is not None and forward_equal:
        text = f"step 1: every gradient is {factor:.3f}x the reference's: the backward is scaled wrongly"
    elif factor is not None:
        text = (f"step 1: every gradient is {factor:.3f}x the reference's, and the loss differs too: "
                "the loss itself is scaled, not only its backward")
    else:
        text = (f"step 1: gradients differ, worst in {worst} (max rel err {tensors[worst]['max_rel_err']:.3g}): "
                "the backward is wrong")
    if not within and forward_equal:
        text += " (the step-1 loss agrees: the forward is right)"
    return {"within": within, "max_abs_err": max(t["max_abs_err"] for t in tensors.values()),
            "max_rel_err": tensors[worst]["max_rel_err"], "worst_tensor": worst, "factor": factor,
            "summary": text, "tensors": tensors}


def weights(final, ref):
    """Final weights against the reference's: max abs diff per tensor and overall."""
    tensors = {k: float(np.abs(final[k].astype(np.float64) - ref[k]).max()) for k in ref}
    worst = max(tensors, key=tensors.get)
    return {"max_abs_diff": tensors[worst], "worst_tensor": worst, "tensors": tensors}
