"""A captured training step of a converted model replays with eager numbers (CUDA only)."""
import copy

import pytest
import torch
import torch.nn as nn

import tritonnorm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fuse"])
def test_captured_training_step_replays_like_eager(fuse):
    """With fuse=True the BatchNorm takes the ReLU and the GroupNorm the SiLU."""
    torch.manual_seed(0)
    model = tritonnorm.convert(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
        nn.GroupNorm(4, 8), nn.SiLU(), nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
        nn.Flatten(), nn.LayerNorm(8 * 8 * 8), nn.Linear(512, 16), nn.RMSNorm(16)),
        fuse=fuse).cuda()
    eager = copy.deepcopy(model)
    x = torch.randn(4, 3, 8, 8, device="cuda")
    # Warm up on a side stream (kernels compile here, outside the capture).
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            model(x).square().mean().backward()
            eager(x).square().mean().backward()
    torch.cuda.current_stream().wait_stream(s)
    model.zero_grad(set_to_none=False)
    eager.zero_grad(set_to_none=False)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # fails on any host sync inside forward or backward
        loss = model(x).square().mean()
        loss.backward()
    for step in range(3):
        x.copy_(torch.randn_like(x))
        for p in model.parameters():
            p.grad.zero_()
        eager.zero_grad()
        graph.replay()
        ref = eager(x).square().mean()
        ref.backward()
        torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
        for (name, p), q in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)
        for (name, b), c in zip(model.named_buffers(), eager.buffers()):
            torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5, msg=name)
