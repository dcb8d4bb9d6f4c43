"""One training step, for everything that trains: the runs, the step-1 gradient evidence, the cost
measurement, the bench and the pre-flight.

A ``Trainer`` is the tutorial's state (the model built right after seeding, Adam, the loss) and its
step: forward, loss, ``zero_grad``, backward, ``step``. The run options (the device, the precision:
bf16 autocast, the mode: ``torch.compile``) are applied here and nowhere else, each at one line. A step never waits
for the device: its loss comes back as a tensor, so on CUDA the host queues step after step while
the GPU works, and a caller reads the values (one copy) when it needs them.

The loss under test is user code: an exception in its forward or backward becomes a ``RunError``
naming where it happened, with the user's own file and line.
"""

import contextlib
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lossbench import determinism
from lossbench import problems, task
from lossbench.errors import UserError, debugging, raised


class RunError(UserError):
    """The loss under test failed inside a run: the problem (a value) and where it happened."""

    exit_code = 1

    def __init__(self, problem, where=""):
        super().__init__(problem.at(where))
        self.problem = problem
        self.where = where


def _no_mark():
    return None


def nudge(model, member):
    """Every initial weight moved by one ulp of its dtype, up or down at random (signs seeded by ``member``).

    The smallest change a float can take: the ensemble it makes measures how far rounding alone carries
    a run, which is what a candidate equal to its reference may differ by.
    """
    signs = torch.Generator().manual_seed(member)  # apart from the global RNG: the run's own seeds are untouched
    with torch.no_grad():
        for p in model.parameters():
            up = torch.rand(p.shape, generator=signs) < 0.5  # (p.shape,) on the CPU
            toward = torch.where(up, torch.inf, -torch.inf).to(device=p.device, dtype=p.dtype)
            p.copy_(torch.nextafter(p, toward))


class Dtypes(TorchDispatchMode):
    """The floating dtypes the ops inside a call computed in, as they ran (after autocast's casts); views
    (detach, reshape) compute nothing and are left out."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.seen.add(_name(t.dtype))
        return out


class NumpyCalls:
    """Counts the calls into NumPy while active (a profile hook): under torch.compile a NumPy loss can be traced
    into torch ops and never run NumPy at all, and only counting what ran tells."""

    def __init__(self):
        self.calls = 0

    def _hook(self, frame, event, arg):
        if event == "call" and "/numpy/" in frame.f_code.co_filename:
            self.calls += 1
        elif event == "c_call" and (getattr(arg, "__module__", None) or "").startswith("numpy"):
            self.calls += 1

    def __enter__(self):
        sys.setprofile(self._hook)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


def _name(dtype):
    return str(dtype).removeprefix("torch.")


class GraphedForward:
    """The model's forward and backward as CUDA graphs (``torch.cuda.make_graphed_callables``), captured at the
    first batch and replayed for every batch of its shape; a batch of another shape (an epoch's short last one)
    runs eagerly. The same kernels in the same order as eager, launched as two graphs instead of one by one: on
    CUDA the tutorial's step is bound by the host's launches (docs/benchmarks.md, fourth CUDA run). Adam and the
    loss stay eager: a graphed Adam must be ``capturable``, which is not the tutorial's arithmetic."""

    def __init__(self, model):
        self.model = model
        self.shape = None

    def __call__(self, x):  # x: (B, 784)
        if self.shape is None:  # captured from a copy: replays copy each batch into it, never into the data
            self.shape = x.shape
            torch.cuda.make_graphed_callables(self.model, (x.clone(),))  # replaces the model's forward
        if x.shape != self.shape:
            return type(self.model).forward(self.model, x)  # the class's forward: eager
        return self.model(x)


class Trainer:
    """Seeded model, Adam and the loss on one device; ``step`` is the tutorial's step.

    ``dtypes`` holds what the loss received, computed in and returned at its first call, as observed;
    ``numpy_calls`` how many NumPy calls its second call made (the first compiles, under ``compiled``).
    """

    def __init__(self, make_loss, device, lr, seed, member=0, dtype=torch.float32, precision="fp32", mode="eager",
                 graphed=False):
        determinism.seed_everything(seed)
        self.device = device
        self.precision = precision
        self.mode = mode
        self.dtypes = None
        self.calls = 0
        self.numpy_calls = None
        self.dtype = dtype  # float64: the reference's higher-precision run, a diagnostic (docs/envelope.md)
        self.model = task.model().to(device, dtype)  # built right after seeding, then moved (float32 -> float64 exact)
        if member:  # a member of the reference's noise ensemble: the same run, one rounding apart at the start
            nudge(self.model, member)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)  # the model's own parameters, compiled or not
        self.loss_fn = make_loss()
        self.forward = self.model  # self.model stays the module itself: its parameters' names, its weights
        if mode == "compiled":  # the mode: the model and the loss compiled, as users do
            self.forward, self.loss_fn = torch.compile(self.model), torch.compile(self.loss_fn)
        if graphed:  # make bench on CUDA: the model's forward and backward replayed as CUDA graphs, the loss as it is
            self.forward = GraphedForward(self.model)

    def loss(self, x, where, mark=_no_mark):
        """Forward and loss on ``x`` (B, 784), input and target; the model's output and the loss tensor."""
        x = x.to(self.dtype)  # the same tensor in float32 (a no-op); exact in float64
        with self.autocast():  # the precision: around forward and loss, as users train
            out = self.forward(x)  # (B, 784), bfloat16 under bf16
            mark()
            self.calls += 1
            watch = self._watch()
            if self.calls == 1:  # what the loss sees is the same at every step: observed once (kept if it raises)
                self.dtypes = {"received": _name(out.dtype), "target": _name(x.dtype)}
            try:
                with watch:
                    loss = self.loss_fn(out, x)  # scalar
            except Exception as e:  # user code: say where it broke (the traceback behind LOSSBENCH_DEBUG)
                if debugging():
                    raise
                raise RunError(problems.raised(raised(e)), where) from e
        if self.calls == 1:
            self.dtypes |= {"computed": sorted(watch.seen) if isinstance(watch, Dtypes) else None,
                            "returned": _name(loss.dtype) if isinstance(loss, torch.Tensor) else None}
        elif isinstance(watch, NumpyCalls):
            self.numpy_calls = watch.calls
        problem = problems.not_scalar(loss)
        if problem:
            raise RunError(problem, where)
        return out, loss

    def _watch(self):
        """What watches this call of the loss: the ops' dtypes at the first, in eager (compiled code runs no
        Python ops to watch); NumPy's calls at the second, when compiled code runs (the first compiles)."""
        if self.calls == 1 and self.mode == "eager":
            return Dtypes()
        return NumpyCalls() if self.calls == 2 else contextlib.nullcontext()

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()  # fp32: the tutorial's step, untouched

    def backward(self, loss, where):
        try:
            loss.backward()
        except Exception as e:  # a user's backward
            if debugging():
                raise
            raise RunError(problems.backward_raised(raised(e)), where) from e

    def step(self, x, where, mark=_no_mark):
        """One step on ``x`` (B, 784); the loss before the update, detached, still on the device.

        ``mark()`` is called before the forward and after each phase (forward, loss, backward, step):
        the phase timer's hook, free when nobody times.
        """
        mark()
        _, loss = self.loss(x, where, mark)
        mark()
        self.opt.zero_grad()
        self.backward(loss, where)
        mark()
        self.opt.step()
        mark()
        return loss.detach()

    def gradients(self, x, where):
        """Every parameter's gradient after one backward on ``x``, without the update (zeros where none
        reaches the parameter: the detached control)."""
        _, loss = self.loss(x, where)
        self.backward(loss, where)
        return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().numpy()
                for k, p in self.model.named_parameters()}
