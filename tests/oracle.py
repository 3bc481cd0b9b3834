"""Torch as the oracle: run ours and torch's op on the same inputs and compare
the output and every gradient with per-dtype tolerances."""
import copy

import torch

# Output tolerances: a few ulps of the dtype (fp16/bf16 outputs are rounded
# once by both sides, so one ulp of disagreement is legitimate).
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=1e-5),
    torch.float16: dict(atol=4e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
}
# Gradients sum over many elements in a different order than torch does.
GRAD_TOL = {
    torch.float64: dict(atol=1e-9, rtol=1e-9),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=8e-2, rtol=4e-2),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def leaf(t):
    if t is None or not isinstance(t, torch.Tensor):
        return t
    return t.detach().clone().requires_grad_(t.is_floating_point())


def forward_backward(fn, inputs, grad_out=None):
    """Run fn on fresh leaves; returns (y, grads, grad_out)."""
    leaves = [leaf(t) for t in inputs]
    y = fn(*leaves)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    y.backward(grad_out)
    return y, [getattr(t, "grad", None) for t in leaves], grad_out


def _upcast(fn):
    """fn on fp64 copies of the inputs (and of a module's parameters)."""
    if isinstance(fn, torch.nn.Module):
        fn = copy.deepcopy(fn).double()
    return lambda *a: fn(*[t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                           for t in a])


def _assert_close(name, a, b, exact, torch_lowp, tol):
    """fp64: ours within tol of torch.  Below fp64 a result can be
    ill-conditioned (a group of two nearly equal values), so ours must be within
    tol of the exact (fp64) answer, plus twice torch's own error there."""
    assert a.dtype == b.dtype and a.shape == b.shape, f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
    if exact is None:
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
        return
    exact = exact.to(torch.float64)
    slack = tol["atol"] + tol["rtol"] * exact.abs() + 2 * (torch_lowp.double() - exact).abs()
    err = (a.double() - exact).abs()
    assert bool((err <= slack).all()), f"{name}: error {(err - slack).max().item():.3g} past tolerance"


def assert_matches_torch(ours, ref, inputs, dtype=None):
    """Output, result dtype and every gradient match torch's."""
    dtype = dtype or inputs[0].dtype
    y_ref, g_ref, go = forward_backward(ref, inputs)
    y, g, _ = forward_backward(ours, inputs, go)
    y_64 = g_64 = None
    if dtype != torch.float64 and y.numel():
        y_64, g_64, _ = forward_backward(_upcast(ref), inputs, go.double())
    for i, (a, b) in enumerate(zip([y] + g, [y_ref] + g_ref)):
        name = "output" if i == 0 else f"grad of input {i - 1}"
        if b is None:
            assert a is None, f"{name}: unexpected"
            continue
        assert a is not None, f"{name}: missing"
        exact = None if y_64 is None else ([y_64] + g_64)[i]
        _assert_close(name, a, b, exact, b, (TOL if i == 0 else GRAD_TOL)[dtype])
    return y
