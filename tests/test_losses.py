import inspect
import re

import pytest
import torch
from torch import nn

from lossbench import losses, problems
from lossbench.errors import UserError
from lossbench.preflight import check, preflight, source
from lossbench.registry import REGISTRY

CANDIDATES = ["functional_mse", "module_mse", "numpy_mse", "numpy_detached", "wrong_backward"]


def fixed(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 784, generator=g, dtype=dtype, requires_grad=True)
    t = torch.rand(8, 784, generator=g, dtype=dtype)
    return x, t


def build(fn, args=None):
    return losses.resolve(fn, fn, args or {})


def value_and_grad(fn, args=None, dtype=torch.float32):
    x, t = fixed(dtype)
    loss = build(fn, args).make()(x, t)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("name", CANDIDATES)
def test_value_matches_torch_mse(name):
    ref, _ = value_and_grad("torch_mse")
    got, _ = value_and_grad(name)
    assert got.dtype == ref.dtype and got.shape == ref.shape == ()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["functional_mse", "module_mse", "numpy_mse"])
def test_gradient_matches_torch_mse(name):
    _, ref = value_and_grad("torch_mse")
    _, got = value_and_grad(name)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9)


def test_wrong_backward_has_the_right_value_and_twice_the_gradient():
    ref, ref_grad = value_and_grad("torch_mse")
    got, grad = value_and_grad("wrong_backward")
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, 2 * ref_grad, rtol=1e-6, atol=1e-9)


def test_numpy_mse_gradcheck_float64():
    x, t = fixed(torch.float64)
    x = x[:2, :20].detach().requires_grad_()
    assert torch.autograd.gradcheck(losses.NumpyMSE.apply, (x, t[:2, :20]))


def test_numpy_detached_gives_the_model_no_gradient():
    model = torch.nn.Linear(4, 4)
    x = torch.rand(3, 4)
    loss = build("numpy_detached").make()(model(x), x)
    loss.backward()  # runs, and that is the trap: nothing reaches the model
    assert all(p.grad is None for p in model.parameters())
    assert REGISTRY["numpy_detached"].updates_weights is False


# The examples: each NumPy twin against its torch reference, value and gradient, and gradcheck in float64.
EXAMPLES = [
    ("losses.examples:NumpyL1", {}, nn.L1Loss()),
    ("losses.examples:NumpyHuber", {"delta": 0.1}, nn.HuberLoss(delta=0.1)),
    ("losses.examples:NumpyBCE", {}, nn.BCELoss()),
]


@pytest.mark.parametrize("fn, args, ref", EXAMPLES)
def test_example_matches_its_reference(fn, args, ref):
    x, t = fixed()
    expected = ref(x, t)
    (g_ref,) = torch.autograd.grad(expected, x)
    got = build(fn, args).make()(x, t)
    (g,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert torch.equal(g, g_ref)  # the backward follows torch's formula and order: bit for bit


def test_huber_example_takes_both_branches_at_its_delta():
    x, t = fixed()
    d = (x - t).abs()
    assert (d < 0.1).any() and (d >= 0.1).any()
    _, g = value_and_grad("losses.examples:NumpyHuber", {"delta": 0.1})
    assert g.abs().max() == pytest.approx(0.1 / x.numel())  # clipped where |d| > delta


@pytest.mark.parametrize("fn, args", [(f, a) for f, a, _ in EXAMPLES])
def test_example_gradcheck_float64(fn, args):
    x, t = fixed(torch.float64)
    x = (x[:2, :20].detach() * 0.9 + 0.05).requires_grad_()  # away from BCE's clamps
    loss = build(fn, args).make()
    assert torch.autograd.gradcheck(lambda a: loss(a, t[:2, :20]), (x,))


def test_bce_example_keeps_torchs_clamps_at_0_and_1():
    x = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.5])
    ref = nn.BCELoss()(x, t)
    got = build("losses.examples:NumpyBCE").make()(x, t)
    assert torch.isfinite(got) and torch.equal(got, ref)


def test_user_losses_resolve_as_function_module_and_autograd_function(tmp_path, monkeypatch):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "mine.py").write_text(
        "import torch\n"
        "def fn(a, b, scale=1.0):\n    return ((a - b) ** 2).mean() * scale\n"
        "class Mod(torch.nn.Module):\n    def forward(self, a, b):\n        return ((a - b) ** 2).mean()\n"
        "class Fun(torch.autograd.Function):\n"
        "    @staticmethod\n    def forward(ctx, a, b):\n        ctx.save_for_backward(a, b)\n"
        "        return ((a - b) ** 2).mean()\n"
        "    @staticmethod\n    def backward(ctx, g):\n        a, b = ctx.saved_tensors\n"
        "        return g * 2 * (a - b) / a.numel(), None\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ref, ref_grad = value_and_grad("torch_mse")
    for attr in ("fn", "Mod", "Fun"):
        got, grad = value_and_grad(f"userpkg.mine:{attr}")
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-9)
    got, _ = value_and_grad("userpkg.mine:fn", {"scale": 2.0})  # keywords reach a function too
    torch.testing.assert_close(got, 2 * ref, rtol=1e-6, atol=0)
    with pytest.raises(UserError, match="userpkg.mine:NOT_CALLABLE is a int, not a class or function"):
        build("userpkg.mine:NOT_CALLABLE")
    with pytest.raises(UserError, match=r"userpkg.mine:Mod cannot be built with args \{'delta': 1\}"):
        build("userpkg.mine:Mod", {"delta": 1})


def test_reference_with_arguments():
    spec = build("torch_huber", {"delta": 0.05})
    assert isinstance(spec.make(), nn.HuberLoss) and spec.make().delta == 0.05
    spec = build("torch.nn:HuberLoss", {"delta": 0.05})
    assert spec.make().delta == 0.05
    with pytest.raises(UserError, match=r"torch_huber cannot be built with args \{'delt': 0.05\}"):
        build("torch_huber", {"delt": 0.05})


@pytest.mark.parametrize("name, message", [
    ("no_such_pkg.mod:f", "cannot import module 'no_such_pkg.mod'"),
    ("lossbench.losses:nothing_here", "module 'lossbench.losses' has no attribute 'nothing_here'"),
])
def test_user_loss_that_does_not_resolve_is_a_clear_error(name, message):
    with pytest.raises(UserError, match=message):
        build(name)


@pytest.mark.parametrize("body, message", [
    ("def f(a, b)\n    return a\n", r"raised SyntaxError: expected ':' \(at brokenloss_syn\.py:1\)"),
    ("x = 1\ny = undefined_name\n", r"raised NameError: name 'undefined_name' is not defined \(at brokenloss_name\.py:2\)"),
])
def test_user_module_that_does_not_import_names_its_file_and_line(tmp_path, monkeypatch, body, message):
    name = "brokenloss_syn" if "Syntax" in message else "brokenloss_name"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=message):
        build(f"{name}:f")


# Pre-flight: each way a loss can be broken, said in words.
class Spec:
    def __init__(self, fn, updates_weights=True):
        self.make, self.updates_weights = (lambda: fn), updates_weights
        self.obj = getattr(fn, "__self__", fn)  # a Function's .apply: the Function (LossSpec.obj)


def _detached(a, b):
    return torch.tensor(((a - b) ** 2).mean().item(), requires_grad=True)


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        return ((a - b) ** 2).mean()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("forgot to save the inputs")


@pytest.mark.parametrize("fn, code, message", [
    (lambda a, b: (a - b) ** 2, problems.NOT_SCALAR, r"returned shape \(4, 784\), expected a scalar \(shape \(\)\)"),
    (lambda a, b: float(((a - b) ** 2).mean().detach()), problems.NOT_A_TENSOR,
     "returned a float, expected a scalar tensor"),
    (lambda a, b: ((a - b) ** 2).mean() * float("nan"), problems.NOT_FINITE, "the loss is nan, expected a finite value"),
    (lambda a, b: ((a - b) * 0).sqrt().mean(), problems.GRADIENT_NOT_FINITE,
     "the loss's backward gives non-finite gradients"),  # d sqrt(0) = inf
    (lambda a, b: a.sum(dim=5), problems.RAISED,
     r"the loss raised IndexError: Dimension out of range.* \(at tests/test_losses.py:\d+\)$"),
    (_detached, problems.DETACHED, "is not connected to the input's graph: no gradient would reach the model"),
    (_BadBackward.apply, problems.BACKWARD_RAISED,
     r"the loss's backward raised RuntimeError: forgot to save the inputs \(at tests/test_losses.py:\d+\)"),
])
def test_preflight_names_what_is_wrong(fn, code, message):
    problem, _ = preflight(Spec(fn), "cpu")
    assert problem is not None and problem.code == code, problem
    assert re.search(message, problem.message), problem.message


def test_an_in_place_op_on_the_input_is_judged_as_in_training():
    """The pre-flight goes through the model, so the loss's input is the model's output, as in training: an
    in-place op on it fails the backward with torch's in-place message (a probe leaf gave "leaf Variable")."""
    problem, _ = preflight(Spec(lambda a, b: (a.mul_(2) - b).pow(2).mean()), "cpu")
    assert problem.code == problems.BACKWARD_RAISED and "modified by an inplace operation" in problem.message
    assert "leaf Variable" not in problem.message


class _TooFewGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return ((a - b) ** 2).mean()

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * 2 * (a - b) / a.numel()  # one gradient for two inputs: torch's engine raises, in C++


def test_a_backward_torch_rejects_from_cpp_is_named_at_its_line():
    problem, _ = preflight(Spec(_TooFewGradients.apply), "cpu")
    line = inspect.getsourcelines(_TooFewGradients.backward)[1]
    assert problem.code == problems.BACKWARD_RAISED and "incorrect number of gradients" in problem.message
    assert problem.message.endswith(f"(at tests/test_losses.py:{line})"), problem.message


def test_debug_raises_the_users_own_exception(monkeypatch):
    monkeypatch.setenv("LOSSBENCH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="forgot to save the inputs"):
        preflight(Spec(_BadBackward.apply), "cpu")


def test_preflight_passes_every_shipped_loss_and_holds_the_detached_control_to_its_declaration():
    for name, reg in REGISTRY.items():
        assert check(build(name), "cpu")[0] is None, name
    assert preflight(build("numpy_detached"), "cpu")[0].code == problems.DETACHED
    assert check(Spec(_detached, updates_weights=True), "cpu")[0].code == problems.DETACHED
    assert check(Spec(losses.NumpyMSE.apply, updates_weights=False), "cpu")[0].code == problems.NOT_DETACHED
    for fn, args, _ in EXAMPLES:
        assert check(build(fn, args), "cpu")[0] is None


def test_a_loss_computed_in_float64_is_judged_and_its_dtypes_recorded():
    """Computing a loss in higher precision is a legitimate choice: the pre-flight passes it (it was rejected)
    and records what it received, computed in and returned."""
    problem, dtypes = preflight(Spec(lambda a, b: ((a.double() - b.double()) ** 2).mean()), "cpu")
    assert problem is None and dtypes == {"received": "float32", "target": "float32", "computed": ["float64"],
                                          "returned": "float64"}


def test_under_bf16_the_tutorials_numpy_loss_fails_and_the_controls_and_the_fix_run():
    """Observed, not looked up: autocast hands the loss bfloat16; torch's mse_loss computes in float32, NumPy
    cannot take bfloat16; the negative controls and the example fix cast to float32 first."""
    problem, dtypes = preflight(build("numpy_mse"), "cpu", "bf16")
    assert problem.code == problems.RAISED and "Got unsupported ScalarType BFloat16" in problem.message
    assert dtypes == {"received": "bfloat16", "target": "float32"}  # it failed before computing anything
    assert preflight(build("torch_mse"), "cpu", "bf16")[1] == {
        "received": "bfloat16", "target": "float32", "computed": ["float32"], "returned": "float32"}
    for name in ("wrong_backward", "losses.examples:NumpyMSEFloat32"):
        assert check(build(name), "cpu", "bf16")[0] is None, name
    assert check(build("numpy_detached"), "cpu", "bf16")[0] is None  # its declared detachment, under bf16 too
    line = problems.unsupported("bf16", "eager", "cpu", problem).message
    assert line.startswith("unsupported under bf16: the loss raised TypeError: Got unsupported ScalarType BFloat16")
    assert "custom_fwd(device_type='cpu', cast_inputs=torch.float32)" in line and ".float()" in line


def test_source_of_a_loss():
    assert source("numpy_mse") == {"registered": "lossbench/losses.py"}
    build("losses.examples:NumpyL1")
    s = source("losses.examples:NumpyL1")
    assert list(s["files"]) == ["losses/examples.py"] and len(s["files"]["losses/examples.py"]) == 64
    build("torch.nn:HuberLoss")
    import importlib.metadata
    assert source("torch.nn:HuberLoss") == {"package": "torch", "version": importlib.metadata.version("torch")}


def test_a_losss_source_holds_the_helpers_it_imports_a_constant_from_and_theirs(tmp_path, monkeypatch):
    """The new user's finding: `from losses.myhelper import SCALE` (a float: no __module__ to follow) went
    unseen, so editing SCALE re-trained nothing and the report stayed PASS."""
    pkg = tmp_path / "userlosses_zz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "consts.py").write_text("from .deeper import BASE\nSCALE = BASE * 1.0\n")
    (pkg / "deeper.py").write_text("BASE = 1.0\n")
    (pkg / "mine.py").write_text("import torch\nfrom userlosses_zz.consts import SCALE\n\n\n"
                                 "def mse(input, target):\n    return SCALE * ((input - target) ** 2).mean()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    build("userlosses_zz.mine:mse")
    files = source("userlosses_zz.mine:mse", root=tmp_path)["files"]
    assert sorted(files) == ["userlosses_zz/consts.py", "userlosses_zz/deeper.py", "userlosses_zz/mine.py"]
    before = files["userlosses_zz/deeper.py"]
    (pkg / "deeper.py").write_text("BASE = 2.0\n")  # an edit two imports away changes the loss's source
    assert source("userlosses_zz.mine:mse", root=tmp_path)["files"]["userlosses_zz/deeper.py"] != before


def test_an_import_that_fails_inside_a_users_module_names_its_file_and_line(tmp_path, monkeypatch):
    from lossbench.errors import UserError
    from lossbench.losses import import_fn

    (tmp_path / "brokenimport_pkg.py").write_text("import numpy\nimport no_such_dependency_zz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        import_fn("brokenimport_pkg:f")
    assert str(e.value) == ("importing 'brokenimport_pkg' raised ModuleNotFoundError: No module named "
                            "'no_such_dependency_zz' (at brokenimport_pkg.py:2)")
    with pytest.raises(UserError, match=r"^cannot import module 'no_such_module_zz' \(No module named"):
        import_fn("no_such_module_zz:f")
