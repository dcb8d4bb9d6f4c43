"""Held-out losses: written after the noise envelope's rule was chosen, to check it on losses it was not tuned on.

Two are right (they differ from their reference by rounding only), three are subtly wrong. Their
verdicts are in docs/envelope.md; none of them trains by default.
"""

import numpy as np
import torch
from torch import nn


class _Float64MSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target):
        ctx.save_for_backward(input, target)
        x, t = input.detach().cpu().numpy().astype(np.float64), target.detach().cpu().numpy().astype(np.float64)
        return torch.as_tensor(np.mean((x - t) ** 2), dtype=input.dtype, device=input.device)

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        g = grad_output.double() * 2 * (input.double() - target.double()) / input.numel()  # in float64, then cast
        return g.to(input.dtype), None


class Float64MSE(nn.Module):
    """Right: MSE computed in float64 (forward in NumPy, backward in torch) and rounded to float32."""

    def forward(self, input, target):
        return _Float64MSE.apply(input, target)


class RowMSE(nn.Module):
    """Right: MSE summed per row, then averaged, then divided: another reduction order than torch's."""

    def forward(self, input, target):
        return ((input - target) ** 2).sum(dim=1).mean() / input.shape[1]  # (B,) -> scalar


class SmoothedMSE(nn.Module):
    """Subtly wrong: MSE against the target shrunk by 0.1% (a label smoothing nobody asked for)."""

    def forward(self, input, target):
        return ((input - target * 0.999) ** 2).mean()


class _BiasedGradMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target):
        ctx.save_for_backward(input, target)
        return ((input - target) ** 2).mean()

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        n = input.numel()
        return grad_output * 2 * (input - target) / n + 1e-3 / n, None  # a constant 0.1% of a typical gradient


class BiasedGradMSE(nn.Module):
    """Subtly wrong: the right forward, a backward with a tiny constant added to every element."""

    def forward(self, input, target):
        return _BiasedGradMSE.apply(input, target)


class HuberWideDelta(nn.Module):
    """Subtly wrong: Huber whose threshold is 0.105 where its reference's is 0.1."""

    def forward(self, input, target):
        return nn.functional.huber_loss(input, target, delta=0.105)
