"""tritonnorm.convert swaps every torch norm layer of a model, in place."""
import copy
import logging

import torch
import torch.nn as nn

import tritonnorm


class SmallNet(nn.Module):
    """A conv net with every norm: BN, GN, IN, LN and RMS."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
            nn.Conv2d(8, 6, 3, stride=2), nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.LayerNorm(6 * 3 * 3), nn.Linear(54, 10),
                                  nn.BatchNorm1d(10, momentum=None), nn.RMSNorm(10), nn.Linear(10, 2))

    def forward(self, x):
        return self.head(self.body(x))


class MyNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x) * 2


def test_converted_net_trains_and_evals_like_the_original(device):
    torch.manual_seed(0)
    ref = SmallNet().to(device)
    model = copy.deepcopy(ref)
    ids = {name: id(m) for name, m in model.named_modules()}
    model, report = tritonnorm.convert(model, return_report=True)
    assert {name: id(m) for name, m in model.named_modules()} == ids, "layers are swapped in place"
    assert len(report) == 6 and all(r.after.startswith("tritonnorm.") for r in report)
    assert isinstance(model.body[1], tritonnorm.BatchNorm2d) and isinstance(model.head[4], tritonnorm.RMSNorm)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x = torch.randn(4, 3, 8, 8, device=device) + step
        for net, o in ((ref, opt_ref), (model, opt)):
            o.zero_grad()
            net(x).square().mean().backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name} step {step}: {m}")
        opt_ref.step()
        opt.step()
        for (name, b), c in zip(model.named_buffers(), ref.buffers()):
            torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name} step {step}: {m}")
    model.eval()
    ref.eval()
    x = torch.randn(4, 3, 8, 8, device=device)
    torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)


def test_convert_keeps_dtype_device_and_training_flag(device):
    m = nn.Sequential(nn.BatchNorm1d(4), nn.LayerNorm(4)).to(device, torch.float64).eval()
    tritonnorm.convert(m)
    assert not m.training and not m[0].training
    assert m[0].weight.dtype == torch.float64 and m[0].running_mean.device.type == torch.device(device).type


def test_convert_returns_the_replacement_for_a_norm_root():
    root = nn.GroupNorm(2, 4)
    out = tritonnorm.convert(root)
    assert isinstance(out, tritonnorm.GroupNorm) and isinstance(out, nn.GroupNorm)


def test_convert_leaves_user_subclasses_alone_and_says_so(caplog):
    m = nn.Sequential(MyNorm(5), nn.LayerNorm(5), tritonnorm.LayerNorm(5))
    with caplog.at_level(logging.INFO, logger="tritonnorm"):
        _, report = tritonnorm.convert(m, return_report=True)
    assert type(m[0]) is MyNorm and type(m[1]) is tritonnorm.LayerNorm
    assert [(r.name, r.after) for r in report] == [("0", "left alone (subclass)"), ("1", "tritonnorm.LayerNorm")]
    assert "torch.nn.LayerNorm -> tritonnorm.LayerNorm" in caplog.text
