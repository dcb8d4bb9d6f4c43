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


def noise(members, ref, floor_ulps):
    """Per step, the reference's own rounding noise: the largest |member - reference| up to that step over
    the ensemble (members: (K, steps)), and never below ``floor_ulps`` ulps of the reference's loss there
    (early on, the members are still bitwise the reference while another rounding of the loss is not)."""
    spread = np.maximum.accumulate(np.max(np.abs(members - ref), axis=0))  # (steps,)
    floor = floor_ulps * np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    return np.maximum(spread, floor)


def within_noise(values, ref, level, multiplier, steps):
    """Step by step |values - ref| against ``multiplier`` x the reference's noise ``level``.

    ``noise_used`` is the largest share of that bound any step used (< 1 passes); ``growth`` is the slope of
    log |diff| against log noise over the steps where both are non-zero: a difference that rounding made
    and training grew rises with the noise (slope near 1 or above); a different function's is there from
    the first steps and rises less (see docs/envelope.md for what it showed on the calibration set).
    """
    diff = np.abs(values - ref)
    share = diff / (multiplier * level)
    out = np.flatnonzero(share > 1)
    both = (diff > 0) & (level > 0)
    x, y = np.log(level[both]), np.log(diff[both])
    growth = float(np.polyfit(x, y, 1)[0]) if x.size >= 10 and np.ptp(x) > 0 else None  # None: too few, or flat
    first = None
    if out.size:
        j = int(out[0])
        first = {"global_step": int(steps["global_step"].iloc[j]), "abs_diff": float(diff[j]),
                 "bound": float(multiplier * level[j])}
    return {"within": out.size == 0, "noise_used": float(share.max()), "steps_outside": int(out.size),
            "first_outside": first, "growth": growth, "noise_max": float(level.max())}


def first_visible(members, ref):
    """The first step (1-based) at which some member's loss differs from the reference's, or None: whether
    the one-ulp nudge survived the precision the run computes in (bf16 casts could have rounded it away)."""
    differs = np.flatnonzero(np.any(members != ref, axis=0))
    return int(differs[0]) + 1 if differs.size else None


def against_fp64(values, ref, fp64):
    """The diagnostic beside the verdict: the candidate's and its reference's largest distance from the
    reference's float64 run, and their ratio (torch._dynamo's accuracy check passes fp32 below 2x). One
    float64 run is one sample of a chaotic process, so this informs and the envelope decides."""
    cand, own = float(np.abs(values - fp64).max()), float(np.abs(ref - fp64).max())
    return {"fp64_max_diff": cand, "ref_fp64_max_diff": own,
            "fp64_ratio": cand / own if own > 0 else (0.0 if cand == 0 else float("inf"))}


def gradient_noise(member_grads, ref):
    """Per parameter, the members' largest |g_member - g_ref| at step 1: the gradients' own rounding noise."""
    return {k: float(max(np.abs(g[k].astype(np.float64) - ref[k]).max() for g in member_grads)) for k in ref}


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


def gradients(grads, ref, rtol, forward_equal=True, spread=None, floor_ulps=0.0, multiplier=1.0):
    """Step-1 gradients against the reference's: per tensor, the max abs and relative error, and a verdict.

    With ``spread`` (lossbench.evidence.gradient_noise of the reference's ensemble) the verdict is the
    noise rule: every tensor's max abs error within ``multiplier`` x its noise, floored at ``floor_ulps``
    ulps of the tensor's largest reference gradient; ``rtol`` is then only reported (``max_rel_err``).
    """
    tensors = {}
    for k in ref:
        err = float(np.abs(grads[k].astype(np.float64) - ref[k]).max())
        scale = float(np.abs(ref[k]).max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        tensors[k] = {"max_abs_err": err, "max_rel_err": rel}
        if spread is not None:
            level = max(spread[k], floor_ulps * float(np.spacing(np.float32(scale))))
            tensors[k]["noise_used"] = err / (multiplier * level) if level > 0 else (0.0 if err == 0 else np.inf)
    worst = max(tensors, key=lambda k: tensors[k]["max_rel_err"])
    noise_used = None
    if spread is None:
        within = tensors[worst]["max_rel_err"] <= rtol
    else:
        noise_used = max(t["noise_used"] for t in tensors.values())
        within = noise_used <= 1
    factor = None if within else constant_factor(grads, ref)
    if within and spread is not None:
        text = (f"step 1: every gradient within {multiplier:g}x the reference's own rounding noise "
                f"(used {noise_used:.2g} of it; max rel err {tensors[worst]['max_rel_err']:.3g})")
    elif within:
        text = f"step 1: every gradient within {rtol:g} of the reference's (max rel err {tensors[worst]['max_rel_err']:.3g})"
    elif factor == 0:
        text = "step 1: no gradient reaches the model (every gradient is 0): the loss is detached from the graph"
    elif factor is not None and factor < 0:
        text = (f"step 1: every gradient is {factor:.3f}x the reference's: sign flipped"
                + ("" if forward_equal else ", and the loss differs too"))
    elif factor is not None and forward_equal:
        text = f"step 1: every gradient is {factor:.3f}x the reference's: the backward is scaled wrongly"
    elif factor is not None:
        text = (f"step 1: every gradient is {factor:.3f}x the reference's, and the loss differs too: "
                "the loss itself is scaled, not only its backward")
    elif not forward_equal:  # the forward differs already: the gradients follow it, the backward may be right
        text = (f"step 1: the loss itself differs from the reference's, so the forward is wrong first; the gradients "
                f"differ too, worst in {worst} (max rel err {tensors[worst]['max_rel_err']:.3g})")
    else:
        text = (f"step 1: gradients differ, worst in {worst} (max rel err {tensors[worst]['max_rel_err']:.3g}): "
                "the backward is wrong")
    if not within and forward_equal:
        text += " (the step-1 loss agrees: the forward is right)"
    return {"within": within, "max_abs_err": max(t["max_abs_err"] for t in tensors.values()),
            "max_rel_err": tensors[worst]["max_rel_err"], "worst_tensor": worst, "factor": factor,
            "noise_used": noise_used, "summary": text, "tensors": tensors}


def weights(final, ref):
    """Final weights against the reference's: max abs diff per tensor and overall."""
    tensors = {k: float(np.abs(final[k].astype(np.float64) - ref[k]).max()) for k in ref}
    worst = max(tensors, key=tensors.get)
    return {"max_abs_diff": tensors[worst], "worst_tensor": worst, "tensors": tensors}
