"""torch.compile(fullgraph=True) of a converted model: no graph break, eager numbers."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import tritonnorm


class EveryNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 1), nn.SyncBatchNorm(8, momentum=None),
            nn.GroupNorm(4, 8), nn.InstanceNorm2d(8, affine=True, track_running_stats=True))
        self.head = nn.Sequential(nn.Flatten(), nn.LayerNorm(8 * 6 * 6), nn.Linear(288, 16),
                                  nn.RMSNorm(16), nn.Linear(16, 4))

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture
def world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# On a GPU also CUDA graphs: Inductor launches our kernels itself (traced.py, triton_op), so
# "reduce-overhead" captures the whole step.
MODES = ["default"] + (["reduce-overhead"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("mode", MODES)
def test_compiled_converted_model_matches_eager(world_of_one, device, mode):
    torch.manual_seed(0)
    eager = tritonnorm.convert(EveryNorm()).to(device)
    assert isinstance(eager.body[4], tritonnorm.SyncBatchNorm)
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True, mode=mode)  # fullgraph: a graph break raises
    for step in range(2):
        x = torch.randn(4, 3, 6, 6, device=device) + step
        y_eager, y = eager(x), compiled(x)
        torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
        y_eager.square().sum().backward()
        y.square().sum().backward()
        for (name, p), q in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)
        for (name, b), c in zip(model.named_buffers(), eager.buffers()):
            torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-6, msg=name)
    eager.eval()
    model.eval()
    x = torch.randn(4, 3, 6, 6, device=device)
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)


class Epilogues(nn.Module):
    """Every epilogue form: relu(bn(x) + identity), silu(group_norm), gelu(layer_norm)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = tritonnorm.BatchNorm2d(8, activation="relu")
        self.gn = tritonnorm.GroupNorm(4, 8, activation="silu")
        self.ln = tritonnorm.LayerNorm(8, activation="gelu", approximate="tanh")

    def forward(self, x):
        y = self.bn(self.conv(x), residual=x)
        return self.ln(self.gn(y).permute(0, 2, 3, 1))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compiled_epilogues_match_eager(training, device):
    torch.manual_seed(0)
    eager = Epilogues().to(device).train(training)
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 8, 5, 5, device=device)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    y_eager, y = eager(xs[0]), compiled(xs[1])
    torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
    y_eager.square().sum().backward()
    y.square().sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=1e-4, rtol=1e-4)
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)
    for (name, b), c in zip(model.named_buffers(), eager.buffers()):
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-6, msg=name)
