"""What can be wrong with a loss, as values: a code that callers and tests branch on, and the one
place each message is worded. Torch-free: a problem is data, whoever found it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    code: str
    message: str

    def at(self, where):
        """The one line a user reads: where it happened, then what is wrong."""
        return f"{where}: {self.message}" if where else self.message

    def as_dict(self):
        return {"code": self.code, "message": self.message}


RAISED = "raised"
BACKWARD_RAISED = "backward_raised"
NOT_A_TENSOR = "not_a_tensor"
NOT_SCALAR = "not_scalar"
WRONG_DEVICE = "wrong_device"
NOT_FINITE = "not_finite"
DETACHED = "detached"
GRADIENT_NOT_FINITE = "gradient_not_finite"
UNSUPPORTED = "unsupported"  # runs in fp32, fails under a requested setting (bf16): a finding, not a crash
NOT_DETACHED = "not_detached"  # declared detached (a negative control), yet its gradient reaches the input


def raised(what):
    return Problem(RAISED, f"the loss raised {what}")


def backward_raised(what):
    return Problem(BACKWARD_RAISED, f"the loss's backward raised {what}")


def not_scalar(loss):
    """Why ``loss`` is not a scalar tensor, or None. Reads only type and shape: never waits for a device."""
    if not hasattr(loss, "dim"):
        return Problem(NOT_A_TENSOR, f"the loss returned a {type(loss).__name__}, expected a scalar tensor")
    if loss.dim() != 0:
        return Problem(NOT_SCALAR, f"the loss returned shape {tuple(loss.shape)}, expected a scalar (shape ()): "
                                   "reduce it, e.g. .mean()")
    return None


def wrong_device(got, expected):
    return Problem(WRONG_DEVICE, f"the loss returned a tensor on {got}, expected {expected} (the input's device)")


def not_finite(value):
    return Problem(NOT_FINITE, f"the loss is {value}, expected a finite value")


def detached():
    return Problem(DETACHED, "the loss is not connected to the input's graph: no gradient would reach the model "
                             "(a NumPy result wrapped in a new tensor? compute it inside a "
                             "torch.autograd.Function with a backward)")


def gradient_not_finite():
    return Problem(GRADIENT_NOT_FINITE, "the loss's backward gives non-finite gradients")


def not_detached():
    return Problem(NOT_DETACHED, "the loss is declared detached (no gradient reaches the model), but its gradient "
                                 "reaches the input")


def unsupported(precision, mode, device, problem):
    """A loss that runs in fp32, eager and fails under ``precision`` or ``mode``: the reason and the fix, one line."""
    setting = " and ".join([*([precision] if precision != "fp32" else []), *(["torch.compile"] if mode != "eager" else [])])
    fixes = []
    if precision != "fp32":
        fixes.append("call .float() on its inputs first, or decorate its forward with "
                     f"@torch.amp.custom_fwd(device_type={device!r}, cast_inputs=torch.float32) "
                     "(losses/examples.py NumpyMSEFloat32)")
    if mode != "eager":
        fixes.append("make its NumPy code an opaque op that compile calls as it is: torch.library.custom_op with "
                     "register_fake and register_autograd (losses/numpy_op.py)")
    return Problem(UNSUPPORTED, f"unsupported under {setting}: {problem.message}; the fix: {'; and '.join(fixes)}")
