"""Every way torch differentiates a norm works on ours, with torch's numbers:
forward-mode AD (torch.func.jvp and dual tensors), torch.func.grad, and gradients of
gradients (create_graph=True), checked by fp64 gradgradcheck and against torch."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
from torch.autograd import gradgradcheck

import tritonnorm
from conftest import DEVICE

# name -> (module class name shared by torch.nn and tritonnorm, args, kwargs, input shape, training)
CASES = {
    "layer": ("LayerNorm", (6,), {}, (3, 6), True),
    "layer no affine": ("LayerNorm", (6,), dict(elementwise_affine=False), (3, 6), True),
    "rms": ("RMSNorm", (6,), {}, (3, 6), True),
    "group": ("GroupNorm", (2, 4), {}, (2, 4, 2), True),
    "instance": ("InstanceNorm1d", (3,), dict(affine=True), (2, 3, 3), True),
    "batch train": ("BatchNorm1d", (4,), dict(track_running_stats=False), (3, 4, 2), True),
    "batch eval": ("BatchNorm2d", (4,), {}, (3, 4, 2, 2), False),
}
# Transforms cannot mutate captured buffers: torch's own BatchNorm with running stats
# fails under them in training, so only double backward is compared there.
GRADGRAD_ONLY = {
    "batch train running": ("BatchNorm2d", (3,), {}, (3, 3, 2, 1), True),
    "batch train channels_last": ("BatchNorm2d", (3,), {}, (2, 3, 2, 2), True),
}
TOL = dict(atol=1e-9, rtol=1e-9)


def _pair(name, cases=CASES):
    cls, args, kwargs, shape, training = cases[name]
    torch.manual_seed(0)
    ref = getattr(nn, cls)(*args, **kwargs).to(DEVICE).double().train(training)
    ours = getattr(tritonnorm, cls)(*args, **kwargs).to(DEVICE).double().train(training)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(0.5, 1.5)
        for b in ref.buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, dtype=torch.float64, device=DEVICE) * 2 + 0.5
    if "channels_last" in name:
        x = x.contiguous(memory_format=torch.channels_last)
    return ref, ours, x


@pytest.mark.parametrize("name", CASES)
def test_func_jvp_matches_torch(name):
    ref, ours, x = _pair(name)
    v = torch.randn_like(x)
    y_ref, t_ref = torch.func.jvp(ref, (x,), (v,))
    y, t = torch.func.jvp(ours, (x,), (v,))
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(t, t_ref, **TOL)
    assert t.abs().sum() > 0


@pytest.mark.parametrize("name", CASES)
def test_dual_tensor_tangent_matches_torch(name):
    ref, ours, x = _pair(name)
    v = torch.randn_like(x)
    with fwAD.dual_level():
        t_ref = fwAD.unpack_dual(ref(fwAD.make_dual(x, v))).tangent
        t = fwAD.unpack_dual(ours(fwAD.make_dual(x, v))).tangent
    assert t is not None
    torch.testing.assert_close(t, t_ref, **TOL)


@pytest.mark.parametrize("name", CASES)
def test_func_grad_matches_torch(name):
    ref, ours, x = _pair(name)

    def loss(m):
        return lambda x: m(x).square().sum()
    torch.testing.assert_close(torch.func.grad(loss(ours))(x), torch.func.grad(loss(ref))(x), **TOL)


@pytest.mark.parametrize("name", [*CASES, *GRADGRAD_ONLY])
def test_gradgradcheck_fp64(name):
    _, ours, x = _pair(name, {**CASES, **GRADGRAD_ONLY})
    params = dict(ours.named_parameters())

    def f(x, *ps):
        return torch.func.functional_call(ours, dict(zip(params, ps)), (x,))
    # fast_mode: random projections of the Jacobians, exact for a smooth function.
    assert gradgradcheck(f, (x.requires_grad_(), *params.values()), eps=1e-6, atol=1e-5,
                         fast_mode=True)


@pytest.mark.parametrize("name", [*CASES, *GRADGRAD_ONLY])
def test_gradient_penalty_matches_torch(name):
    """A loss that holds a gradient (create_graph=True): its backward goes through
    the norm's backward, so every gradient of it matches torch only if double
    backward does."""
    ref, ours, x = _pair(name, {**CASES, **GRADGRAD_ONLY})
    # Random weights in the inner loss: sum(y^2) alone is constant per row for many norms.
    k = torch.rand_like(x)
    grads = []
    for m in (ref, ours):
        xi = x.detach().clone().requires_grad_()
        y = m(xi)
        (gx,) = torch.autograd.grad((y.square() * k).sum(), xi, create_graph=True)
        assert gx.requires_grad
        (y.sum() + gx.square().sum()).backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-8, rtol=1e-8)
