"""The tutorial's NumPy MSE as a ``torch.library.custom_op``: NumPy that torch.compile calls as it is.

Under ``torch.compile`` a NumPy ``autograd.Function`` is traced into torch ops (``torch._numpy``): the
"NumPy loss" stops running NumPy, silently. A custom op is opaque to the compiler: ``register_fake`` tells
it the output's shape and dtype without running NumPy, ``register_autograd`` gives it the tutorial's
backward, and at run time NumPy really runs (the report counts its calls). Same arithmetic as
``lossbench.losses.NumpyMSE``, so its losses and gradients are bitwise that loss's, eager and compiled.

    numpy_mse_op: {fn: "losses.numpy_op:numpy_mse"}   (params.yaml)
"""

import numpy as np
import torch


@torch.library.custom_op("lossbench::numpy_mse", mutates_args=())
def numpy_mse(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # .cpu() is the device-to-host copy (and sync) this loss costs on CUDA
    a = input.detach().cpu().numpy()  # (B, 784)
    b = target.detach().cpu().numpy()  # (B, 784)
    return torch.as_tensor(np.mean((a - b) ** 2), device=input.device)  # scalar, input's dtype


@numpy_mse.register_fake
def _(input, target):
    return input.new_empty(())  # what compile needs to know: a scalar of the input's dtype and device


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    input, target = ctx.saved_tensors
    return grad_output * 2 * (input - target) / input.numel(), None


numpy_mse.register_autograd(_backward, setup_context=_setup_context)
