"""Activation and residual epilogues: y = act(norm(x) [+ residual]) in one kernel.

The spec is torch's composition: the norm, then ``+ residual``, then the activation,
each rounded to the input's dtype.  Output and every gradient (x, residual, weight,
bias) are compared, in both memory layouts, for every activation; the running
statistics and eval mode for the norms that keep them.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
import tritonnorm.functional as TF
from conftest import TILINGS
from oracle import GRAD_TOL, TOL, assert_matches_torch
import tritonnorm.config as config

# (activation, its keywords): every activation and both gelu forms.
ACTS = [("relu", {}), ("silu", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"}),
        ("leaky_relu", {"negative_slope": 0.2})]
ACT_IDS = ["relu", "silu", "gelu", "gelu_tanh", "leaky_relu"]


def torch_act(y, name, kw):
    if name == "gelu":
        return F.gelu(y, approximate=kw.get("approximate", "none"))
    if name == "leaky_relu":
        return F.leaky_relu(y, kw["negative_slope"])
    return getattr(F, name)(y)


# Per norm: ours (x, residual, weight, bias) with the epilogue keywords, and torch's norm.
NORMS = {
    "batch_norm": (lambda x, r, w, b, **e: TF.batch_norm(x, None, None, w, b, True, residual=r, **e),
                   lambda x, w, b: F.batch_norm(x, None, None, w, b, True)),
    "group_norm": (lambda x, r, w, b, **e: TF.group_norm(x, 2, w, b, residual=r, **e),
                   lambda x, w, b: F.group_norm(x, 2, w, b)),
    "instance_norm": (lambda x, r, w, b, **e: TF.instance_norm(x, weight=w, bias=b, residual=r, **e),
                      lambda x, w, b: F.instance_norm(x, weight=w, bias=b)),
}


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _check(norm, act, kw, shape, layout, dtype, residual, device):
    ours_norm, ref_norm = NORMS[norm]
    x = _layout(torch.randn(shape, dtype=dtype, device=device) * 2 + 0.5, layout)
    r = _layout(torch.randn(shape, dtype=dtype, device=device), layout) if residual else None
    w = torch.randn(shape[1], dtype=dtype, device=device)
    b = torch.randn(shape[1], dtype=dtype, device=device)
    if residual and act in ("relu", "leaky_relu"):
        # Away from the kink: where norm(x) + r cancels to about 0, one ulp of norm(x) --
        # torch's CPU kernel and ours round it apart by that much -- flips relu's derivative.
        z = ref_norm(x.double(), w.double(), b.double()) + r.double()
        r = torch.where(z.abs() < 0.05, r + torch.where(z < 0, -0.1, 0.1).to(dtype), r)

    def ours(x, w, b, r=None):
        return ours_norm(x, r, w, b, activation=act, **kw)

    def ref(x, w, b, r=None):
        y = ref_norm(x, w, b)
        return torch_act(y if r is None else y + r, act, kw)

    inputs = [x, w, b] + ([r] if residual else [])
    y = assert_matches_torch(ours, ref, inputs)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


# Every activation, layout and residual form in float32; bfloat16 (the same kernels, its
# roundings) in the default run with a residual in channels_last, the rest marked slow
# (-m slow) for the suite's time.
FORMS = [pytest.param(layout, dtype, residual, id=f"{layout}-{str(dtype)[6:]}-"
                      f"{'residual+act' if residual else 'act'}",
                      marks=pytest.mark.slow if dtype == torch.bfloat16
                      and (layout, residual) != ("channels_last", True) else ())
         for layout in ("contiguous", "channels_last")
         for dtype in (torch.float32, torch.bfloat16) for residual in (False, True)]


@pytest.mark.parametrize("layout,dtype,residual", FORMS)
@pytest.mark.parametrize("act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("norm", list(NORMS))
def test_epilogue_matches_the_torch_composition(norm, act, kw, layout, dtype, residual, device):
    _check(norm, act, kw, (2, 4, 3, 5), layout, dtype, residual, device)


# relu + residual saves a sign mask, silu recomputes z; the looped walks (the split walk's
# first pass, without its merge) are marked slow for the suite's time.
WALKS = [pytest.param(act, tiling, marks=pytest.mark.slow if tiling == "looped" else ())
         for act in ("relu", "silu") for tiling in ("looped", "split")]


@pytest.mark.parametrize("act,tiling", WALKS)
@pytest.mark.parametrize("norm", list(NORMS))
def test_epilogue_on_walked_and_split_rows(norm, act, tiling, device):
    with config.override(**TILINGS[tiling]):
        _check(norm, act, {}, (3, 4, 9, 7), "contiguous", torch.float32, True, device)
        _check(norm, act, {}, (3, 4, 9, 7), "channels_last", torch.float32, True, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act,kw", ACTS, ids=ACT_IDS)
def test_layer_norm_activation(act, kw, dtype, device):
    x = torch.randn(3, 2, 12, dtype=dtype, device=device)
    w, b = torch.randn(12, dtype=dtype, device=device), torch.randn(12, dtype=dtype, device=device)
    assert_matches_torch(lambda x, w, b: TF.layer_norm(x, (12,), w, b, activation=act, **kw),
                         lambda x, w, b: torch_act(F.layer_norm(x, (12,), w, b), act, kw),
                         [x, w, b])


@pytest.mark.parametrize("act", ["silu", "relu"])
def test_layer_norm_with_residual_and_activation(act, device):
    """LayerNorm's residual is added before the norm: (act(layer_norm(x + r)), x + r), from
    the module and the functional API alike."""
    ln = tritonnorm.LayerNorm(16, activation=act).to(device)
    x, r = (torch.randn(4, 16, device=device) for _ in range(2))
    w, b = torch.randn(16, device=device), torch.randn(16, device=device)

    def ours(x, r, w, b):
        return torch.cat(TF.add_layer_norm(x, r, (16,), w, b, activation=act))

    def ref(x, r, w, b):
        h = x + r
        return torch.cat([torch_act(F.layer_norm(h, (16,), w, b), act, {}), h])

    assert_matches_torch(ours, ref, [x, r, w, b])
    y, h = ln(x, r)
    torch.testing.assert_close(y, torch_act(F.layer_norm(x + r, (16,), ln.weight, ln.bias), act, {}))


BN_MODULES = {"batch_norm": (tritonnorm.BatchNorm2d, nn.BatchNorm2d),
              "instance_norm": (tritonnorm.InstanceNorm2d, nn.InstanceNorm2d)}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act,residual", [("relu", True), ("silu", False), ("gelu", True)])
@pytest.mark.parametrize("norm", list(BN_MODULES))
def test_modules_running_stats_and_eval(norm, act, residual, training, layout, device):
    """Modules with an activation: output, gradients (x, residual, weight, bias) and the
    running statistics after a step, in training and in eval."""
    ours_cls, ref_cls = BN_MODULES[norm]
    kwargs = dict(affine=True, track_running_stats=True)
    ref = ref_cls(4, **kwargs).to(device)
    with torch.no_grad():
        ref.weight.normal_(), ref.bias.normal_(), ref.running_mean.normal_()
        ref.running_var.uniform_(0.5, 2.0)
    ours = ours_cls(4, activation=act, **kwargs).to(device)
    ours.load_state_dict(ref.state_dict())
    ours.train(training), ref.train(training)
    x = _layout(torch.randn(3, 4, 5, 6, device=device) + 1, layout)
    r = _layout(torch.randn(3, 4, 5, 6, device=device), layout) if residual else None
    xs = [x.clone().requires_grad_() for _ in range(2)]
    rs = [r.clone().requires_grad_() if residual else None for _ in range(2)]
    y = ours(xs[0], rs[0])
    y_ref = torch_act(ref(xs[1]) + (rs[1] if residual else 0), act, {})
    torch.testing.assert_close(y, y_ref, **TOL[torch.float32])
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy)
    pairs = [(xs[0].grad, xs[1].grad), (ours.weight.grad, ref.weight.grad),
             (ours.bias.grad, ref.bias.grad)] + ([(rs[0].grad, rs[1].grad)] if residual else [])
    for a, b in pairs:
        torch.testing.assert_close(a, b, **GRAD_TOL[torch.float32])
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))


# Each activation once with and once without a residual, spread over the norms.
GRADCHECK = [(norm, *ACTS[i], (k + i) % 2 == 0) for k, norm in enumerate(NORMS)
             for i in range(len(ACTS)) if (k + i) % 3 != 1]


@pytest.mark.parametrize("norm,act,kw,residual", GRADCHECK, ids=str)
def test_gradcheck_fp64(norm, act, kw, residual, device):
    ours_norm = NORMS[norm][0]
    g = torch.Generator().manual_seed(0)
    # Values kept away from relu's kink, where finite differences are meaningless.
    x = (torch.randn(2, 4, 3, generator=g, dtype=torch.float64) * 2).to(device).requires_grad_()
    w = torch.randn(4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    r = torch.randn(2, 4, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    fn = (lambda x, w, b, r: ours_norm(x, r, w, b, activation=act, **kw)) if residual else (
        lambda x, w, b: ours_norm(x, None, w, b, activation=act, **kw))
    assert torch.autograd.gradcheck(fn, (x, w, b, r) if residual else (x, w, b), fast_mode=True)


def test_modules_keep_torch_state_dict_and_show_the_activation():
    ours = tritonnorm.GroupNorm(2, 4, activation="leaky_relu", negative_slope=0.3)
    assert list(ours.state_dict()) == list(nn.GroupNorm(2, 4).state_dict())
    assert "activation='leaky_relu', negative_slope=0.3" in repr(ours)
    plain = tritonnorm.BatchNorm2d(4)
    plain.load_state_dict(ours.state_dict(), strict=False)
    assert plain.activation is None and "activation" not in repr(plain)


def test_bad_activation_is_refused():
    with pytest.raises(ValueError, match="activation"):
        tritonnorm.BatchNorm2d(4, activation="tanh")
    with pytest.raises(ValueError, match="approximate"):
        TF.group_norm(torch.randn(2, 4, 3), 2, activation="gelu", approximate="fast")
    # A residual that does not broadcast against x: torch's error for the add.
    with pytest.raises(RuntimeError, match="must match the size"):
        TF.batch_norm(torch.randn(2, 4, 3), None, None, training=True, residual=torch.randn(2, 4))


# Residuals of another shape: they broadcast as torch's + does, either way round.
BROADCASTS = {"per channel": (4, 1), "0-d": (), "per sample": (2, 1, 1),
              "x broadcasts to it": (3, 2, 4, 5)}
BROADCAST_OURS = {
    "batch": lambda x, r: TF.batch_norm(x, None, None, training=True, residual=r,
                                        activation="relu"),
    "group": lambda x, r: TF.group_norm(x, 2, residual=r, activation="silu"),
    "instance": lambda x, r: TF.instance_norm(x, residual=r, activation="gelu")}
BROADCAST_TORCH = {
    "batch": lambda x, r: F.relu(F.batch_norm(x, None, None, training=True) + r),
    "group": lambda x, r: F.silu(F.group_norm(x, 2) + r),
    "instance": lambda x, r: F.gelu(F.instance_norm(x) + r)}


@pytest.mark.parametrize("norm", BROADCAST_OURS)
@pytest.mark.parametrize("shape", BROADCASTS)
def test_a_residual_that_broadcasts_gives_torch_result(norm, shape, device):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, device=device, requires_grad=True)
    r = torch.randn(BROADCASTS[shape], device=device, requires_grad=True)
    y, y_ref = BROADCAST_OURS[norm](x, r), BROADCAST_TORCH[norm](x, r)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn_like(y)
    got, want = (torch.autograd.grad(out, (x, r), dy) for out in (y, y_ref))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_residual_of_another_dtype_follows_torch_promotion(device):
    x = torch.randn(2, 4, 3, dtype=torch.bfloat16, device=device)
    r = torch.randn(2, 4, 3, dtype=torch.float32, device=device)
    y = TF.group_norm(x, 2, residual=r, activation="relu")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.relu(F.group_norm(x, 2) + r))
