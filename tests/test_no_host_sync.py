"""No forward or backward reads device data on the host: a CUDA graph can capture a
training step, momentum=None (1 / num_batches_tracked on the device) included.
SyncBatchNorm across ranks is checked the same way in test_sync_batchnorm."""
import pytest
import torch
import torch.nn as nn

import tritonnorm
from host_sync import host_syncs

LAYERS = {
    "BatchNorm2d": lambda: nn.BatchNorm2d(8),
    "BatchNorm2d momentum=None": lambda: nn.BatchNorm2d(8, momentum=None),
    "InstanceNorm2d tracked, momentum=None": lambda: nn.InstanceNorm2d(
        8, affine=True, track_running_stats=True, momentum=None),
    "GroupNorm": lambda: nn.GroupNorm(4, 8),
    "LayerNorm": lambda: nn.LayerNorm([8, 5, 5]),
    "RMSNorm": lambda: nn.RMSNorm([5]),
}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("split", [None, 4], ids=["whole-rows", "split-rows"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_forward_and_backward_never_sync_with_the_host(name, split, training, layout, device):
    layer = tritonnorm.convert(nn.Sequential(LAYERS[name]())).to(device).train(training)
    x = torch.randn(4, 8, 5, 5, device=device).contiguous(memory_format=layout).requires_grad_()
    with tritonnorm.config.override(**({"split": split} if split else {})), host_syncs() as syncs:
        layer(x).square().sum().backward()
    assert syncs == []


def test_the_probe_sees_a_sync():
    """The spy is live: a .item() from tritonnorm's own code is recorded."""
    from tritonnorm.tools.check import _scaled_err
    with host_syncs() as syncs:
        _scaled_err(torch.ones(2), torch.ones(2))  # ends in .item()
    assert [s[0] for s in syncs] == ["item"]
