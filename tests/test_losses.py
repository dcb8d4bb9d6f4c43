import pytest
import torch

from lossbench import losses

CANDIDATES = ["functional_mse", "module_mse", "numpy_mse", "numpy_detached"]


def fixed(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 784, generator=g, dtype=dtype, requires_grad=True)
    t = torch.rand(8, 784, generator=g, dtype=dtype)
    return x, t


def value_and_grad(name, dtype=torch.float32):
    x, t = fixed(dtype)
    loss = losses.resolve(name).make()(x, t)
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


def test_numpy_mse_gradcheck_float64():
    x, t = fixed(torch.float64)
    x = x[:2, :20].detach().requires_grad_()
    assert torch.autograd.gradcheck(losses.NumpyMSE.apply, (x, t[:2, :20]))


def test_numpy_mse_returns_on_input_device_and_dtype():
    x, t = fixed(torch.float64)
    out = losses.NumpyMSE.apply(x, t)
    assert out.device == x.device and out.dtype == torch.float64 and out.requires_grad


def test_numpy_detached_gives_the_model_no_gradient():
    model = torch.nn.Linear(4, 4)
    x = torch.rand(3, 4)
    loss = losses.resolve("numpy_detached").make()(model(x), x)
    loss.backward()  # runs, and that is the trap: nothing reaches the model
    assert all(p.grad is None for p in model.parameters())
    assert losses.REGISTRY["numpy_detached"].updates_weights is False


def test_unknown_loss_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown loss 'nope'.*torch_mse"):
        losses.check_loss_name("nope")


def test_user_losses_resolve_as_function_module_and_autograd_function(tmp_path, monkeypatch):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "mine.py").write_text(
        "import torch\n"
        "def fn(a, b):\n    return ((a - b) ** 2).mean()\n"
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
    with pytest.raises(ValueError, match="userpkg.mine:NOT_CALLABLE.*not a class or function"):
        losses.resolve("userpkg.mine:NOT_CALLABLE").make()


@pytest.mark.parametrize("name, message", [
    ("no_such_pkg.mod:f", "cannot import module 'no_such_pkg.mod'"),
    ("stages.losses:nothing_here", "module 'stages.losses' has no attribute 'nothing_here'"),
])
def test_user_loss_that_does_not_resolve_is_a_clear_error(name, message):
    with pytest.raises(ValueError, match=message):
        losses.resolve(name)
