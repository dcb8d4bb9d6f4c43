"""The losses: shipped references, shipped candidates, and a user's own.

A loss is named in ``train.losses`` by one of:
- a registered name (lossbench.registry): ``torch_mse``, ``numpy_mse``, ...;
- a name defined in the ``losses`` section of params.yaml:
  ``{fn: <registered name or package.module:attr>, args: {...}, reference: ..., expect: ...}``;
- ``package.module:attr`` directly (a function, an ``nn.Module`` subclass or a
  ``torch.autograd.Function`` subclass), compared with ``report.reference``.

Every loss is a callable ``loss(input, target) -> scalar tensor``; ``args`` go
to a class's constructor, or are bound to every call of a function.
"""

import importlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lossbench.errors import UserError, raised
from lossbench.registry import REGISTRY


class ModuleMSE(nn.Module):
    """A user-written module, structured like library losses are."""

    def forward(self, input, target):
        return ((input - target) ** 2).mean()


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


class WrongBackward(NumpyMSE):
    """Negative control: NumpyMSE's forward, its gradient doubled. Caught at step 1 by the gradient check.

    Its inputs go to float32 first (the same tensors in fp32), so that it runs under bf16 autocast too and the
    bf16 checks can be shown to fail; the tutorial's NumpyMSE stays as it is."""

    @staticmethod
    def forward(ctx, input, target):
        return NumpyMSE.forward(ctx, input.float(), target.float())

    @staticmethod
    def backward(ctx, grad_output):
        grad, _ = NumpyMSE.backward(ctx, grad_output)
        return 2 * grad, None


def numpy_detached(input, target):
    """Negative control: NumPy loss wrapped back into a tensor without autograd (in float32 first, as
    WrongBackward, so that it runs under bf16 too)."""
    a = input.detach().float().cpu().numpy()
    b = target.detach().float().cpu().numpy()
    # the pitfall: a fresh leaf tensor has no history, so no gradient reaches the model
    return torch.tensor(np.mean((a - b) ** 2), device=input.device, requires_grad=True)


@dataclass(frozen=True)
class LossSpec:
    """A loss ready to build: what it is, where its code comes from, how to make it."""

    name: str
    fn: str  # registered name or package.module:attr
    args: dict = field(default_factory=dict)
    updates_weights: bool = True
    obj: object = None  # the resolved class or function

    def make(self):
        """A fresh loss callable."""
        obj = self.obj
        if isinstance(obj, type) and issubclass(obj, torch.autograd.Function):
            if self.args:
                raise UserError(f"args {self.args} given, but {self.fn} is an autograd.Function, which takes no "
                                "constructor arguments: wrap it in an nn.Module whose __init__ takes them and whose "
                                "forward calls .apply(input, target, ...), as losses/examples.py NumpyHuber does")
            return obj.apply
        if isinstance(obj, type):
            return obj(**self.args)  # an nn.Module (or any class)
        if self.args:  # a function: keywords bound to every call
            return lambda input, target: obj(input, target, **self.args)
        return obj


def import_fn(fn):
    """The object ``package.module:attr`` names, or a UserError saying what is missing."""
    module_name, attr = fn.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = isinstance(e, ModuleNotFoundError) and module_name.startswith(e.name or "\0")
        if missing:  # the module itself (or its package) is not there
            raise UserError(f"cannot import module {module_name!r} ({e})") from e
        # raised while importing it: an import inside the user's file failed, say where
        raise UserError(f"importing {module_name!r} raised {raised(e)}") from e
    except Exception as e:  # the user's module itself is broken (SyntaxError, NameError, ...): say which
        raise UserError(f"importing {module_name!r} raised {raised(e)}") from e
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UserError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise UserError(f"{fn} is a {type(obj).__name__}, not a class or function")
    return obj


def resolve(name, fn, args) -> LossSpec:
    """A buildable LossSpec; imports user code, and builds it once so bad ``args`` show now."""
    reg = REGISTRY.get(fn)
    obj = import_fn(reg.target if reg else fn)
    spec = LossSpec(name, fn, dict(args), reg.updates_weights if reg else True, obj)
    try:
        spec.make()
    except TypeError as e:  # wrong constructor / factory keywords
        raise UserError(f"{fn} cannot be built with args {dict(args)}: {e}") from e
    return spec
