"""Residual add fused into LayerNorm/RMSNorm, and RMSNorm's weight offset.

add_layer_norm / add_rms_norm return (norm(h), h) with h = x + residual: against
torch's unfused composition, the output, h and the gradients of x, residual,
weight and bias, with both y and h reaching the loss, or only one of them."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
import tritonnorm.functional as TF
from conftest import DEVICE
from oracle import GRAD_TOL, TOL, assert_matches_torch

# (input shape, normalized_shape): ragged, several trailing dims, and rows of 100
# that the "looped" tiling walks twice (h read back by the second walk) and the
# "split" tiling splits (h written by the partials pass, read back by the merge).
SHAPES = [((6, 40), (40,)), ((3, 4, 10), (4, 10)), ((12, 100), (100,))]
AFFINE = ["none", "weight+bias"]


def _both(fn):
    """(y, h) as one tensor, so one random cotangent reaches both."""
    def run(*args):
        y, h = fn(*args)
        return torch.cat([y.flatten(), h.flatten()])
    return run


def _inputs(xshape, nshape, affine, dtype, scale_residual=4.0):
    x = torch.randn(xshape, dtype=dtype, device=DEVICE)
    # A residual stream larger than the block output, as in a pre-norm transformer.
    r = (torch.randn(xshape, dtype=dtype, device=DEVICE) * scale_residual + 2).to(dtype)
    w = torch.randn(nshape, dtype=dtype, device=DEVICE) if affine != "none" else None
    b = torch.randn(nshape, dtype=dtype, device=DEVICE) if affine != "none" else None
    return x, r, w, b


def _torch_add_layer_norm(x, r, nshape, w, b):
    h = x + r
    return F.layer_norm(h, nshape, w, b, 1e-5), h


def _torch_add_rms_norm(x, r, nshape, w, offset=0.0):
    h = x + r
    if offset:
        w = (torch.ones(nshape, dtype=torch.float32, device=x.device) * offset if w is None
             else w.to(torch.float64 if x.dtype == torch.float64 else torch.float32) + offset)
    return F.rms_norm(h, nshape, w), h


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("xshape,nshape", SHAPES, ids=str)
def test_add_layer_norm_matches_the_unfused_composition(xshape, nshape, affine, mode):
    x, r, w, b = _inputs(xshape, nshape, affine, mode)
    assert_matches_torch(_both(lambda x, r, w, b: TF.add_layer_norm(x, r, nshape, w, b)),
                         _both(lambda x, r, w, b: _torch_add_layer_norm(x, r, nshape, w, b)),
                         [x, r, w, b])


@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("xshape,nshape", SHAPES, ids=str)
def test_add_rms_norm_matches_the_unfused_composition(xshape, nshape, affine, offset, mode):
    x, r, w, _ = _inputs(xshape, nshape, affine, mode)
    assert_matches_torch(_both(lambda x, r, w: TF.add_rms_norm(x, r, nshape, w, offset=offset)),
                         _both(lambda x, r, w: _torch_add_rms_norm(x, r, nshape, w, offset)),
                         [x, r, w])


@pytest.mark.parametrize("used", ["y only", "h only"])
@pytest.mark.parametrize("fused", ["layer", "rms"])
def test_a_loss_on_one_output_gives_the_unfused_gradients(fused, used):
    x, r, w, b = _inputs((5, 24), (24,), "weight+bias", torch.float32)
    ours = (lambda *a: TF.add_layer_norm(*a[:2], (24,), *a[2:])) if fused == "layer" else \
        (lambda x, r, w, b: TF.add_rms_norm(x, r, (24,), w))
    ref = (lambda *a: _torch_add_layer_norm(*a[:2], (24,), *a[2:])) if fused == "layer" else \
        (lambda x, r, w, b: _torch_add_rms_norm(x, r, (24,), w))
    pick = 0 if used == "y only" else 1
    assert_matches_torch(lambda *a: ours(*a)[pick], lambda *a: ref(*a)[pick], [x, r, w, b])


def test_no_grad_gives_the_outputs_of_the_autograd_path():
    x, r, w, b = _inputs((7, 33), (33,), "weight+bias", torch.bfloat16)
    with torch.no_grad():
        y0, h0 = TF.add_layer_norm(x, r, (33,), w, b)
    y1, h1 = TF.add_layer_norm(x.requires_grad_(), r, (33,), w, b)
    assert y1.grad_fn is not None and y0.grad_fn is None
    assert torch.equal(y0, y1) and torch.equal(h0, h1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_modules_take_a_residual_and_return_y_and_h(dtype):
    x, r, _, _ = _inputs((4, 3, 16), (16,), "none", dtype)
    for ours, ref in [(tritonnorm.LayerNorm(16), nn.LayerNorm(16)),
                      (tritonnorm.RMSNorm(16, eps=1e-6), nn.RMSNorm(16, eps=1e-6))]:
        ours, ref = ours.to(DEVICE, dtype), ref.to(DEVICE, dtype)
        y, h = ours(x, r)
        assert h.dtype == y.dtype == dtype
        torch.testing.assert_close(h, x + r, rtol=0, atol=0)
        torch.testing.assert_close(y, ref(x + r), **TOL[dtype])
        torch.testing.assert_close(ours(x), ref(x), **TOL[dtype])   # no residual: torch's forward


class _Block(nn.Module):
    """A pre-norm block: h = x + r; y = norm(h); out = linear(y)."""

    def __init__(self, norm):
        super().__init__()
        self.norm, self.linear = norm, nn.Linear(32, 32)

    def forward(self, x, r, fused):
        if fused:
            y, h = self.norm(x, r)
        else:
            h = x + r
            y = self.norm(h)
        return self.linear(y), h


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_a_three_block_pre_norm_stack_trains_like_the_unfused_one(norm):
    torch.manual_seed(0)
    make = (lambda: nn.LayerNorm(32)) if norm == "layer" else (lambda: nn.RMSNorm(32))
    ref = nn.ModuleList([_Block(make()) for _ in range(3)]).to(DEVICE)
    ours = tritonnorm.convert(copy.deepcopy(ref))
    data = [torch.randn(8, 32, device=DEVICE) for _ in range(3)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, ours)]
    for x in data:
        losses = []
        for model, opt, fused in ((ref, opts[0], False), (ours, opts[1], True)):
            opt.zero_grad()
            out, r = x, torch.zeros_like(x)
            for block in model:
                out, r = block(out, r, fused)
            loss = (out + r).square().mean()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], **TOL[torch.float32])
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rms_norm_offset_scales_by_offset_plus_weight_in_fp32(dtype):
    """Gemma: y = (xhat in fp32) * (1 + w in fp32), then cast to x's dtype."""
    x = torch.randn(6, 24, dtype=dtype, device=DEVICE)
    w = (torch.randn(24, dtype=dtype, device=DEVICE) * 0.1)
    gemma = ((x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6))
             * (1.0 + w.float())).to(dtype)
    layer = tritonnorm.RMSNorm(24, eps=1e-6, offset=1.0).to(DEVICE, dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
    assert "offset=1.0" in repr(layer)
    torch.testing.assert_close(layer(x), gemma, **TOL[dtype])
    torch.testing.assert_close(TF.rms_norm(x, (24,), w, 1e-6, offset=1.0), gemma, **TOL[dtype])
    assert_matches_torch(lambda x, w: TF.rms_norm(x, (24,), w, 1e-6, offset=1.0),
                         lambda x, w: F.rms_norm(x, (24,), w.float() + 1.0, 1e-6), [x, w])


@pytest.mark.parametrize("offset", [1.0, 0.5, -2.0])
def test_rms_norm_with_an_offset_starts_at_scale_one(offset):
    """A fresh layer with an offset is the plain rms_norm: weight 1 - offset, so offset +
    weight is 1 (Gemma's layer starts at weight 0); reset_parameters restores that."""
    x = torch.randn(3, 8, device=DEVICE)
    layer = tritonnorm.RMSNorm(8, offset=offset).to(DEVICE)
    torch.testing.assert_close(layer.weight, torch.full((8,), 1.0 - offset, device=DEVICE))
    torch.testing.assert_close(layer(x), F.rms_norm(x, (8,)))
    with torch.no_grad():
        layer.weight.uniform_()
    layer.reset_parameters()
    torch.testing.assert_close(layer(x), F.rms_norm(x, (8,)))
    assert tritonnorm.RMSNorm(8).weight.eq(1).all()   # no offset: torch's ones


def test_a_residual_of_another_shape_is_refused():
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(RuntimeError, match="residual of shape"):
        TF.add_layer_norm(x, torch.randn(1, 8, device=DEVICE), (8,))


def test_double_backward_says_how_to_get_it():
    x = torch.randn(4, 8, device=DEVICE, requires_grad=True)
    y, h = TF.add_rms_norm(x, torch.randn(4, 8, device=DEVICE), (8,))
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


def test_compiled_fused_norms_match_eager_without_a_graph_break():
    """Traced, the fused functions are the add then tritonnorm's norm custom op."""
    x, r, w, b = _inputs((4, 24), (24,), "weight+bias", torch.float32)

    def step(x, r, w, b):
        y1, h1 = TF.add_layer_norm(x, r, (24,), w, b)
        y2, h2 = TF.add_rms_norm(y1, h1, (24,), w, offset=1.0)
        return y2 + h2

    compiled = torch.compile(step, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (x, r, w, b)]
    twins = [t.clone().requires_grad_() for t in (x, r, w, b)]
    out, ref = compiled(*leaves), step(*twins)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    out.sum().backward()
    ref.sum().backward()
    for a, c in zip(leaves, twins):
        torch.testing.assert_close(a.grad, c.grad, **GRAD_TOL[torch.float32])
