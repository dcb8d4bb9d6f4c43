"""Before anything trains: can each loss be built, and does it behave like a loss?

``preflight`` runs a loss once on a small batch: it must return a finite scalar
tensor on the input's device and dtype, connected to the input's graph, and its
backward must run and give finite gradients. ``source`` says where a loss's code
lives, so that DVC re-runs a configuration exactly when that code changes.
"""

import hashlib
import importlib.metadata
import sys
from pathlib import Path
from types import ModuleType

import torch

from lossbench.errors import debugging, raised
from lossbench.losses import not_scalar
from lossbench.registry import REGISTRY

DETACHED = "the loss is not connected to the input's graph"
DETACHED_HINT = ("no gradient would reach the model (a NumPy result wrapped in a new tensor? "
                 "compute it inside a torch.autograd.Function with a backward)")


def preflight(spec, device):
    """None when the loss behaves, else what is wrong, in words."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 784, generator=g) * 0.98 + 0.01).to(device).requires_grad_()  # a sigmoid's output
    t = torch.rand(4, 784, generator=g).to(device)  # targets in [0, 1]
    try:
        loss = spec.make()(x, t)
    except Exception as e:  # user code: one line naming its own file and line; the traceback behind LOSSBENCH_DEBUG
        if debugging():
            raise
        return f"the loss raised {raised(e)}"
    problem = not_scalar(loss)
    if problem:
        return f"the loss {problem}"
    if loss.dtype != x.dtype:
        return f"the loss returned {loss.dtype}, expected {x.dtype} (the input's dtype)"
    if loss.device != x.device:
        return f"the loss returned a tensor on {loss.device}, expected {x.device} (the input's device)"
    if not torch.isfinite(loss):
        return f"the loss returned {loss.item()}, expected a finite value"
    grad = None
    if loss.requires_grad:
        try:
            (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
        except Exception as e:  # a user's backward
            if debugging():
                raise
            return f"the loss's backward raised {raised(e)}"
    if grad is None:
        return f"{DETACHED}: {DETACHED_HINT}"
    if not torch.isfinite(grad).all():
        return "the loss's backward gives non-finite gradients"
    return None


def check(spec, device):
    """preflight, judged by what the loss declares: a detached control must fail the graph check, and only that."""
    problem = preflight(spec, device)
    if spec.updates_weights:
        return problem
    if problem is None:
        return "the loss is declared detached (no gradient reaches the model), but its gradient reaches the input"
    return None if problem.startswith(DETACHED) else problem


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _local(path, root):
    p = Path(path).resolve()
    return p.is_relative_to(root) and "site-packages" not in p.parts


def source(fn, root="."):
    """Where a loss's code lives: the repository files it comes from (with digests), or its package's version."""
    if fn in REGISTRY:
        return {"registered": "lossbench/losses.py"}
    root = Path(root).resolve()
    module = sys.modules[fn.split(":")[0]]
    # the module's own file, and the repository modules it uses directly (a helper next to it)
    mods = {module} | {v if isinstance(v, ModuleType) else sys.modules.get(getattr(v, "__module__", "") or "")
                       for v in vars(module).values()}
    files = sorted({str(Path(m.__file__).resolve().relative_to(root)) for m in mods
                    if getattr(m, "__file__", None) and _local(m.__file__, root)})
    if files:
        return {"files": {f: _sha256(root / f) for f in files}}
    top = module.__name__.split(".")[0]
    dist = (importlib.metadata.packages_distributions().get(top) or [top])[0]
    try:
        return {"package": dist, "version": importlib.metadata.version(dist)}
    except importlib.metadata.PackageNotFoundError:
        return {"package": dist, "version": None, "file": getattr(module, "__file__", None)}
