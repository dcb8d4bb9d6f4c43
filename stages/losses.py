"""The loss implementations under test, as a registry.

Adding one is one small function: decorate a factory that returns a callable
``loss(input, target) -> scalar tensor``. ``train.losses`` in params.yaml may
also name a user's own loss as ``package.module:attr`` (a function, an
``nn.Module`` subclass or a ``torch.autograd.Function`` subclass).
"""

import importlib
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

USER_LOSS = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class LossSpec:
    name: str
    make: Callable[[], Callable]  # a fresh loss callable per run
    updates_weights: bool  # False only for the negative control


REGISTRY: dict[str, LossSpec] = {}


def register(name, updates_weights=True):
    def deco(make):
        REGISTRY[name] = LossSpec(name, make, updates_weights)
        return make

    return deco


@register("torch_mse")
def torch_mse():
    """The reference: nn.MSELoss()."""
    return nn.MSELoss()


@register("functional_mse")
def functional_mse():
    """F.mse_loss called as a plain function."""
    return F.mse_loss


class ModuleMSE(nn.Module):
    """A user-written module, structured like library losses are."""

    def forward(self, input, target):
        return ((input - target) ** 2).mean()


@register("module_mse")
def module_mse():
    return ModuleMSE()


class NumpyMSE(torch.autograd.Function):
    """NumPy forward, analytic backward: the tutorial's custom loss."""

    @staticmethod
    def forward(ctx, input, target):
        ctx.save_for_backward(input, target)
        # .cpu() is the device-to-host copy (and sync) this loss costs on CUDA
        a = input.detach().cpu().numpy()  # (B, 784)
        b = target.detach().cpu().numpy()  # (B, 784)
        loss = np.mean((a - b) ** 2)  # NumPy scalar, input's dtype
        return torch.as_tensor(loss, device=input.device)

    @staticmethod
    def backward(ctx, grad_output):
        input, target = ctx.saved_tensors
        return grad_output * 2 * (input - target) / input.numel(), None


@register("numpy_mse")
def numpy_mse():
    return NumpyMSE.apply


def _numpy_detached(input, target):
    a = input.detach().cpu().numpy()
    b = target.detach().cpu().numpy()
    # the pitfall: a fresh leaf tensor has no history, so no gradient reaches the model
    return torch.tensor(np.mean((a - b) ** 2), device=input.device, requires_grad=True)


@register("numpy_detached", updates_weights=False)
def numpy_detached():
    """Negative control: NumPy loss wrapped back into a tensor without autograd."""
    return _numpy_detached


def check_loss_name(name):
    """Raise ValueError unless ``name`` is a registered loss or ``package.module:attr``."""
    if name in REGISTRY or USER_LOSS.match(name):
        return name
    raise ValueError(
        f"unknown loss {name!r}: expected one of {sorted(REGISTRY)} "
        "or a user loss as 'package.module:attr'"
    )


def resolve(name) -> LossSpec:
    """The LossSpec for a registered name or a user's ``package.module:attr``."""
    check_loss_name(name)
    if name in REGISTRY:
        return REGISTRY[name]
    module_name, attr = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"loss {name!r}: cannot import module {module_name!r} ({e})") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"loss {name!r}: module {module_name!r} has no attribute {attr!r}") from None
    return LossSpec(name, lambda: _as_callable(name, obj), updates_weights=True)


def _as_callable(name, obj):
    if isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
        return obj.apply
    if isinstance(obj, type):
        return obj()  # an nn.Module (or any class) built with no arguments
    if callable(obj):
        return obj
    raise ValueError(f"loss {name!r}: {type(obj).__name__} is not a class or function")
