"""Before anything trains: can each loss be built, and does it behave like a loss?

``preflight`` runs a loss once on a small batch: it must return a finite scalar
tensor on the input's device and dtype, connected to the input's graph, and its
backward must run and give finite gradients. ``source`` says where a loss's code
lives, so that DVC re-runs a configuration exactly when that code changes.
"""

import ast
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

import torch

from lossbench import problems, task
from lossbench.engine import RunError, Trainer
from lossbench.errors import ROOT, debugging, raised, shown
from lossbench.files import sha256
from lossbench.registry import REGISTRY


def preflight(spec, device, precision="fp32", mode="eager"):
    """(problem, dtypes): None when the loss behaves in the training step, else the Problem; and the dtypes
    it received, computed in and returned. The one Trainer runs the model's forward and the loss on a probe
    batch under the precision, then the backward through the model, as training runs it. A loss may return another dtype
    than it received (bf16 autocast upcasts mse_loss; a loss may compute in float64): the report notes it."""
    trainer = Trainer(spec.make, device, 1e-3, 0, precision=precision, mode=mode)
    x = task.probe(device)  # (4, 784)
    return _behaves(trainer, x, _backward_at(spec.obj)), trainer.dtypes


def _backward_at(obj):
    """`` (at losses/mine.py:12)``: an autograd.Function's backward, for what torch's engine raises about it
    from C++ (a wrong number of gradients), where no frame of the user's file is left; else ''."""
    backward = getattr(obj, "backward", None) if isinstance(obj, type) and issubclass(obj, torch.autograd.Function) \
        else None
    try:
        return f" (at {shown(inspect.getsourcefile(backward))}:{inspect.getsourcelines(backward)[1]})"
    except (OSError, TypeError):  # no backward of its own, or no source
        return ""


def _behaves(trainer, x, backward_at=""):
    """None when the loss behaves in the trainer's step on ``x``, else the Problem. ``backward_at``: where the
    loss's backward is, for an error that names no line of it."""
    try:
        out, loss = trainer.loss(x, "")
    except RunError as e:  # raised, or not a scalar tensor
        return e.problem
    if loss.device != out.device:
        return problems.wrong_device(loss.device, out.device)
    if not torch.isfinite(loss):
        return problems.not_finite(loss.item())
    grad = None
    if loss.requires_grad:
        try:
            # through the model's backward too, as training does (an in-place op on the output fails there)
            grad, *_ = torch.autograd.grad(loss, (out, *trainer.model.parameters()), allow_unused=True)
        except Exception as e:  # a user's backward: its own file and line (the traceback behind LOSSBENCH_DEBUG)
            if debugging():
                raise
            what = raised(e)
            return problems.backward_raised(what if " (at " in what else what + backward_at)
    if grad is None:
        return problems.detached()
    if not torch.isfinite(grad).all():
        return problems.gradient_not_finite()
    return None


def check(spec, device, precision="fp32", mode="eager"):
    """(problem, dtypes): preflight, judged by what the loss declares: a detached control must fail the graph
    check, and only that."""
    problem, dtypes = preflight(spec, device, precision, mode)
    if spec.updates_weights:
        return problem, dtypes
    if problem is None:
        return problems.not_detached(), dtypes
    return (None if problem.code == problems.DETACHED else problem), dtypes


def _local(path, root):
    p = Path(path).resolve()
    return p.is_relative_to(root) and "site-packages" not in p.parts


def _imported(module):
    """The modules ``module``'s file imports anywhere in it (a function's own imports too), those already loaded:
    importing the loss loaded its top-level ones."""
    try:
        tree = ast.parse(Path(module.__file__).read_text())
    except (OSError, SyntaxError, TypeError):
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__) \
                    if node.level else node.module
            except (ImportError, ValueError):
                continue
            names |= {base} | {f"{base}.{a.name}" for a in node.names}  # `from pkg import helper`: a module
    return [sys.modules[n] for n in sorted(names) if n in sys.modules]


def source(fn, root=ROOT):
    """Where a loss's code lives: the repository files it comes from (with digests), or its package's version."""
    if fn in REGISTRY:
        return {"registered": "lossbench/losses.py"}
    root = Path(root).resolve()
    module = sys.modules[fn.split(":")[0]]
    # the module's own file, and the repository modules it uses directly (a helper next to it) or imports, and
    # theirs in turn: `from losses.helper import SCALE` names a float, which says nothing of where it came from
    mods = {module} | {v if isinstance(v, ModuleType) else sys.modules.get(getattr(v, "__module__", "") or "")
                       for v in vars(module).values()}
    files, todo = set(), list(mods)
    while todo:  # each local module once, then the modules it imports
        m = todo.pop()
        f = getattr(m, "__file__", None)
        if f and _local(f, root) and (rel := str(Path(f).resolve().relative_to(root))) not in files:
            files.add(rel)
            todo += _imported(m)
    files = sorted(files)
    if files:
        return {"files": {f: sha256(root / f) for f in files}}
    top = module.__name__.split(".")[0]
    dist = (importlib.metadata.packages_distributions().get(top) or [top])[0]
    try:
        return {"package": dist, "version": importlib.metadata.version(dist)}
    except importlib.metadata.PackageNotFoundError:
        return {"package": dist, "version": None, "file": getattr(module, "__file__", None)}
