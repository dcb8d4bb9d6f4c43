"""Worked examples: a NumPy ``torch.autograd.Function`` twin of each of torch's L1, Huber and BCE.

Each forward computes the loss in NumPy on the host; each backward is written by
hand, following torch's own formula (its subgradient at 0, its clamps), so that
the trajectory comes out `equal` to the reference named in params.yaml:

    numpy_l1:    {fn: "losses.examples:NumpyL1", reference: torch_l1}
    numpy_huber: {fn: "losses.examples:NumpyHuber", args: {delta: 0.1}, reference: huber_ref}
    numpy_bce:   {fn: "losses.examples:NumpyBCE", reference: torch_bce}

And the fix for bf16 autocast: ``NumpyMSEFloat32`` is the tutorial's NumPy MSE with its inputs cast to
float32 first, as autocast does for torch's mse_loss (``numpy_mse_float32`` in params.yaml).
"""

import numpy as np
import torch
from torch import nn


def _host(t):
    return t.detach().cpu().numpy()  # the device-to-host copy a NumPy loss costs on CUDA


class NumpyL1(torch.autograd.Function):
    """mean |x - t|; gradient sign(x - t) / n (0 where x == t, as torch)."""

    @staticmethod
    def forward(ctx, input, target):
        ctx.save_for_backward(input, target)
        loss = np.mean(np.abs(_host(input) - _host(target)))  # NumPy scalar, input's dtype
        return torch.as_tensor(loss, device=input.device)

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        return grad_output * torch.sign(input - target) / input.numel(), None


class _NumpyHuber(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, delta):
        ctx.save_for_backward(input, target)
        ctx.delta = delta
        d = np.abs(_host(input) - _host(target))  # (B, 784)
        # quadratic near 0, linear beyond delta: both branches are taken on MNIST for delta = 0.1
        per = np.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))
        return torch.as_tensor(np.mean(per), device=input.device)

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        g = (input - target).clamp(-ctx.delta, ctx.delta)  # d inside [-delta, delta], +-delta outside
        # in torch's order, (g * (1 / n)) * grad: bitwise its gradient; grad * g / n differs in the last bit
        # for 70% of elements, and 470 steps of Adam grow that into a 1e-5 drift of the loss
        return g * (1.0 / input.numel()) * grad_output, None, None


class NumpyHuber(nn.Module):
    """Huber with a threshold: a module, so that ``args: {delta: ...}`` reach its constructor."""

    def __init__(self, delta=1.0):
        super().__init__()
        self.delta = delta

    def forward(self, input, target):
        return _NumpyHuber.apply(input, target, self.delta)


class NumpyBCE(torch.autograd.Function):
    """Binary cross-entropy, torch's clamps included: log clamped at -100, x(1 - x) at 1e-12."""

    @staticmethod
    def forward(ctx, input, target):
        ctx.save_for_backward(input, target)
        x, t = _host(input), _host(target)
        with np.errstate(divide="ignore"):  # log(0) = -inf, clamped below, as torch does
            log_x, log_1mx = np.maximum(np.log(x), -100), np.maximum(np.log(1 - x), -100)
        return torch.as_tensor(np.mean(-(t * log_x + (1 - t) * log_1mx)), device=input.device)

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        denom = ((1 - input) * input).clamp_min(1e-12)
        return grad_output * (input - target) / denom / input.numel(), None


class _HuberOtherOrder(torch.autograd.Function):
    """Huber's right formula, its backward multiplied in another order than torch's: a rounding-only difference."""

    @staticmethod
    def forward(ctx, input, target, delta):
        ctx.save_for_backward(input, target)
        ctx.delta = delta
        d = (input - target).abs()  # (B, 784)
        return torch.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)).mean()

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        g = (input - target).clamp(-ctx.delta, ctx.delta)
        return grad_output * g / input.numel(), None, None  # torch: g * (1 / n) * grad


class HuberOtherOrder(nn.Module):
    """The example of a loss equal up to rounding: `equal` by the noise envelope, beyond a fixed 1e-5."""

    def __init__(self, delta=1.0):
        super().__init__()
        self.delta = delta

    def forward(self, input, target):
        return _HuberOtherOrder.apply(input, target, self.delta)


class HuberNoHalf(nn.Module):
    """A negative control wrong by a little: Huber whose quadratic branch lacks its 0.5 (d^2, not d^2 / 2)."""

    def __init__(self, delta=1.0):
        super().__init__()
        self.delta = delta

    def forward(self, input, target):
        d = (input - target).abs()  # (B, 784)
        return torch.where(d < self.delta, d * d, self.delta * (d - 0.5 * self.delta)).mean()


class NumpyMSEFloat32(torch.autograd.Function):
    """The tutorial's NumPy MSE, made to run under bf16 autocast: NumPy has no bfloat16 (``.numpy()`` raises
    "Got unsupported ScalarType BFloat16"), so the inputs go to float32 first, as autocast itself does for
    torch's mse_loss; in fp32 ``.float()`` returns the same tensor, so nothing changes there. The gradient
    comes back in float32 and autograd casts it to the input's bfloat16, as it does for mse_loss's."""

    @staticmethod
    def forward(ctx, input, target):
        input, target = input.float(), target.float()  # (B, 784) float32: the fix
        ctx.save_for_backward(input, target)
        loss = np.mean((_host(input) - _host(target)) ** 2)  # NumPy scalar, float32
        return torch.as_tensor(loss, device=input.device)

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        return grad_output * 2 * (input - target) / input.numel(), None
