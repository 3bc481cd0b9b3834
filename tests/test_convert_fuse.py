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
