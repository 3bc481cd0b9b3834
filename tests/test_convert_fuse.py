"""tritonnorm.convert(model, fuse=True): norm -> activation (and norm + residual ->
activation) rewritten into fused norms, numbers and checkpoints unchanged."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
from blocks import ResnetBlock2D, resnet_stage


def _fuse(ref):
    """convert(fuse=True) of a copy of ``ref``: (model, {norm name: what was fused in})."""
    model, report = tritonnorm.convert(copy.deepcopy(ref), fuse=True, return_report=True)
    return model, {s.name: s.after for s in report if s.after.startswith("fused")}


def _assert_same_step(model, ref, args, training=True):
    """Output, input gradients, parameter gradients and buffers after one step."""
    model.train(training), ref.train(training)
    ins = [[a.clone().requires_grad_() for a in args] for _ in range(2)]
    y, y_ref = model(*ins[0]), ref(*ins[1])
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy)
    for a, b in zip(ins[0], ins[1]):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=1e-4, rtol=1e-4, msg=name)
    ref_buffers = dict(ref.named_buffers())
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, ref_buffers[name], msg=name)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_resnet_blocks(layout, device):
    torch.manual_seed(0)
    ref = resnet_stage().to(device)
    model, fused = _fuse(ref)
    assert fused == {
        "0.bn1": "fused: activation='relu'", "0.bn2": "fused: activation='relu', residual",
        "1.bn1": "fused: activation='relu'", "1.bn2": "fused: activation='relu'",
        "1.bn3": "fused: activation='relu', residual"}
    assert isinstance(model, torch.fx.GraphModule)
    assert list(model.state_dict()) == list(ref.state_dict())
    if layout == "channels_last":
        model, ref = model.to(memory_format=torch.channels_last), ref.to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 8, 8, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _assert_same_step(model, ref, [x])
    _assert_same_step(model, ref, [x], training=False)


def test_diffusers_resnet_block(device):
    torch.manual_seed(0)
    ref = ResnetBlock2D(8, 16).to(device)
    model, fused = _fuse(ref)
    assert fused == {"norm1": "fused: activation='silu'",
                              "norm2": "fused: activation='silu'"}
    _assert_same_step(model, ref, [torch.randn(2, 8, 6, 6, device=device),
                                   torch.randn(2, 16, device=device)])


def test_checkpoints_load_both_ways():
    torch.manual_seed(0)
    ref = resnet_stage()
    model = tritonnorm.convert(copy.deepcopy(ref), fuse=True)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(1)
    model.load_state_dict(ref.state_dict())
    ref.load_state_dict(model.state_dict())
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


class FunctionalActs(nn.Module):
    """Every activation spelling convert(fuse=True) knows, after each norm kind."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.ln = nn.LayerNorm(5)
        self.bn2 = nn.BatchNorm2d(4)
        self.bn3 = nn.BatchNorm2d(4)
        self.gelu = nn.GELU(approximate="tanh")
        self.leaky = nn.LeakyReLU(0.3, inplace=True)

    def forward(self, x):
        x = F.relu(self.bn(x), inplace=True)
        x = torch.relu(self.gn(x))
        x = self.inorm(x).relu()
        x = F.gelu(self.ln(x))
        x = F.leaky_relu(self.bn2(x), 0.2)
        y = self.gelu(self.bn3(x))
        return self.leaky(y + F.silu(x))


def test_functional_and_module_activation_spellings(device):
    torch.manual_seed(0)
    ref = FunctionalActs().to(device)
    model, fused = _fuse(ref)
    assert fused == {
        "bn": "fused: activation='relu'", "gn": "fused: activation='relu'",
        "inorm": "fused: activation='relu'", "ln": "fused: activation='gelu'",
        "bn2": "fused: activation='leaky_relu', negative_slope=0.2",
        "bn3": "fused: activation='gelu', approximate='tanh'"}
    _assert_same_step(model, ref, [torch.randn(2, 4, 3, 5, device=device)])


class SharedNorm(nn.Module):
    """A norm with two users, and one module called twice: neither can be fused."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.gn = nn.GroupNorm(2, 4)

    def forward(self, x):
        y = self.bn(x)
        z = F.relu(self.gn(y + F.relu(y)))
        return F.silu(self.gn(z))


def test_norms_with_other_users_are_left_unfused(device):
    ref = SharedNorm().to(device)
    model, fused = _fuse(ref)
    assert fused == {}
    _assert_same_step(model, ref, [torch.randn(3, 4, 5, device=device)])


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        if x.sum() > 0:   # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return F.relu(self.bn(x))


def test_untraceable_model_gets_the_plain_swap_and_the_reason(device):
    ref = Untraceable().to(device)
    model, report = tritonnorm.convert(copy.deepcopy(ref), fuse=True, return_report=True)
    assert type(model.bn) is tritonnorm.BatchNorm1d and model.bn.activation is None
    assert "not fused: torch.fx could not trace it" in report[-1].after
    _assert_same_step(model, ref, [torch.randn(3, 4, 5, device=device)])


def test_the_original_model_is_left_unfused(device):
    """The fused norms are new modules: the swapped original still applies its own
    activations once."""
    torch.manual_seed(0)
    ref = ResnetBlock2D(8).to(device)
    original = copy.deepcopy(ref)
    tritonnorm.convert(original, fuse=True)
    assert original.norm1.activation is None
    _assert_same_step(original, ref, [torch.randn(2, 8, 4, 4, device=device),
                                      torch.randn(2, 16, device=device)])


def test_fuse_with_sync_batchnorm(device):
    """sync_batchnorm=True and fuse=True together: the SyncBatchNorms take the epilogues
    (without a process group they normalise the local batch, as BatchNorm)."""
    torch.manual_seed(0)
    ref = resnet_stage().to(device)
    model, report = tritonnorm.convert(copy.deepcopy(ref), sync_batchnorm=True, fuse=True,
                                       return_report=True)
    fused = {s.name for s in report if s.after.startswith("fused")}
    assert fused == {"0.bn1", "0.bn2", "1.bn1", "1.bn2", "1.bn3"}
    assert type(model.get_submodule("0.bn2")) is tritonnorm.SyncBatchNorm
    _assert_same_step(model, ref, [torch.randn(2, 8, 8, 8, device=device)])


# --- Legality of the add pattern (issue 25) -------------------------------------------------
# A residual of another shape is fused, and that call's add and activation run in torch ops
# (activation.outside): torch's broadcasting, whichever operand is larger.

class TimeShift(nn.Module):
    """diffusers' time-embedding shift: silu(gn(h) + emb[:, :, None, None])."""

    def __init__(self):
        super().__init__()
        self.gn, self.proj = nn.GroupNorm(2, 4), nn.Linear(3, 4)

    def forward(self, h, temb):
        return F.silu(self.gn(h) + self.proj(temb)[:, :, None, None])


class ChannelShift(nn.Module):
    """relu(bn(x) + a per-channel parameter)."""

    def __init__(self):
        super().__init__()
        self.bn, self.shift = nn.BatchNorm2d(4), nn.Parameter(torch.randn(4, 1, 1))

    def forward(self, x):
        return F.relu(self.bn(x) + self.shift)


class ScalarBuffer(nn.Module):
    """relu(in(x) + a 0-d buffer)."""

    def __init__(self):
        super().__init__()
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.register_buffer("c", torch.tensor(0.25))

    def forward(self, x):
        return F.relu(self.c + self.inorm(x))


class SmallerX(nn.Module):
    """x broadcasts to the residual: gelu(gn(x) + y), x of batch 1, y of batch 3."""

    def __init__(self):
        super().__init__()
        self.gn = nn.GroupNorm(2, 4)

    def forward(self, x, y):
        return F.gelu(self.gn(x) + y)


BROADCAST = {
    "time embedding": (TimeShift, [(2, 4, 3, 5), (2, 3)]),
    "per-channel parameter": (ChannelShift, [(2, 4, 3, 5)]),
    "0-d buffer": (ScalarBuffer, [(2, 4, 3, 5)]),
    "x smaller than y": (SmallerX, [(1, 4, 3, 5), (3, 4, 3, 5)]),
}


@pytest.mark.parametrize("name", BROADCAST)
def test_a_broadcast_residual_is_fused_and_gives_torch_result(name, device):
    torch.manual_seed(0)
    make, shapes = BROADCAST[name]
    ref = make().to(device)
    model, fused = _fuse(ref)
    assert len(fused) == 1 and next(iter(fused.values())).endswith(", residual"), fused
    args = [torch.randn(s, device=device) for s in shapes]
    _assert_same_step(model, ref, args)
    _assert_same_step(model, ref, args, training=False)


# Anything that may mutate or hold state between the norm and the add: the norm would move
# past it to the add's place, so the add is left unfused and the report says why.  (Item
# assignment, h[i] = v, is refused too, but torch.fx cannot trace it at all; h += 1 on a
# traced tensor records an out-of-place add.)

class InplaceKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.conv(x)
        y = self.bn(h)
        r = F.relu(h, inplace=True)
        return F.relu(y + r)


class InplaceModule(InplaceKeyword):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.conv(x)
        y = self.bn(h)
        return F.relu(y + self.act(h))


class InplaceFunction(InplaceKeyword):
    def forward(self, x):
        h = self.conv(x)
        y = self.bn(h)
        torch.relu_(h)
        return F.relu(y + h)


class InplaceMethod(InplaceKeyword):
    def forward(self, x):
        h = self.conv(x)
        y = self.bn(h)
        h.mul_(2.0)
        return F.relu(y + h)


class SharedStats(InplaceKeyword):
    """A norm between the two that shares the moved norm's running statistics."""

    def __init__(self):
        super().__init__()
        self.twin = nn.BatchNorm2d(4)
        self.twin.running_mean, self.twin.running_var = self.bn.running_mean, self.bn.running_var

    def forward(self, x):
        h = self.conv(x)
        y = self.bn(h)
        return F.relu(y + self.twin(x))


MUTATING = {
    "inplace=True": (InplaceKeyword, "relu(inplace=True)"),
    "nn.ReLU(inplace=True)": (InplaceModule, "in-place module act"),
    "torch.relu_": (InplaceFunction, "in-place relu_"),
    "in-place method": (InplaceMethod, "in-place method .mul_()"),
    "a module sharing the state": (SharedStats, "a call of twin, a module with state (buffers)"),
}


@pytest.mark.parametrize("name", MUTATING)
def test_an_add_past_a_side_effect_is_left_unfused(name, device):
    """The forward, the running statistics and the backward (or the error torch raises for
    an input modified in place after the norm saved it) are torch's."""
    torch.manual_seed(0)
    make, why = MUTATING[name]
    ref = make().to(device)
    model, report = tritonnorm.convert(copy.deepcopy(ref), fuse=True, return_report=True)
    said = {s.name: s.after for s in report if "fused" in s.after}
    assert said.pop("bn") == f"not fused: {why} runs between the norm and the add"
    # The shortcut's own norm is next to the add: nothing runs between, so it fuses.
    assert said == ({"twin": "fused: activation='relu', residual"} if make is SharedStats else {})
    x = torch.randn(2, 4, 3, 5, device=device)
    outs = []
    for m in (model, ref):
        m.train()
        xi = x.clone().requires_grad_()
        y = m(xi)
        try:
            y.sum().backward()
            outs.append((y, xi.grad, None))
        except RuntimeError as e:   # modified in place after being saved, as torch says
            outs.append((y, None, type(e)))
    (y, g, err), (y_ref, g_ref, err_ref) = outs
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert err is err_ref
    if g_ref is not None:
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)
    for (name_, b), b_ref in zip(model.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, b_ref, msg=name_)
