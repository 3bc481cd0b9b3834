"""Traced calls with symbolic sizes (issue 25): torch.compile(dynamic=True, fullgraph=True)
over many batch sizes and sequence lengths compiles no more frames than torch's own modules
need, and torch.export with a Dim on the batch and on the sequence gives a program that
runs at a new size and matches eager.  The host path reads no concrete size while a trace
runs (front.untraced): a memo keyed on x's sizes made dynamo guard on each of them."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.export import Dim, export

import tritonnorm
import tritonnorm.functional as TF
from conftest import DEVICE

D = 16   # the normalized size: static, as a model's hidden size is


class Call(nn.Module):
    """A functional call as a module of one or two inputs (export reads forward's
    signature), with its weight as a parameter -- frozen for the inference-only quantized
    outputs, through which no gradient flows."""

    def __init__(self, fn, inputs: int, grad: bool = True):
        super().__init__()
        self.fn, self.inputs = fn, inputs
        self.weight = nn.Parameter(torch.rand(D) + 0.5, requires_grad=grad)

    def forward(self, x, r=None):
        return self.fn(self, x) if self.inputs == 1 else self.fn(self, x, r)


def _llama_block(converted: bool):
    """A Hugging Face Llama MLP block, h = x + mlp(rms_norm(x)), converted or not."""
    modeling = pytest.importorskip("transformers.models.llama.modeling_llama",
                                   reason="transformers: in the test extra")
    config = pytest.importorskip("transformers").LlamaConfig(hidden_size=D, intermediate_size=32,
                                                              num_attention_heads=2, num_key_value_heads=2)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = modeling.LlamaRMSNorm(D)
            self.mlp = modeling.LlamaMLP(config)

        def forward(self, x):
            return x + self.mlp(self.norm(x))

    torch.manual_seed(0)
    block = Block()
    return tritonnorm.convert(block) if converted else block


# name: (ours, torch's counterpart, inputs, layout of an input: (batch, sequence, other)).
# "bs" inputs are [batch, sequence, D] (transformer rows), "cs" are [batch, C, sequence]
# (a channel norm over a sequence of positions).
CASES = {
    "LayerNorm": (lambda: tritonnorm.LayerNorm(D), lambda: nn.LayerNorm(D), 1, "bs"),
    "RMSNorm": (lambda: tritonnorm.RMSNorm(D), lambda: nn.RMSNorm(D), 1, "bs"),
    "GroupNorm": (lambda: tritonnorm.GroupNorm(2, 4), lambda: nn.GroupNorm(2, 4), 1, "cs"),
    "InstanceNorm1d": (lambda: tritonnorm.InstanceNorm1d(4, affine=True),
                       lambda: nn.InstanceNorm1d(4, affine=True), 1, "cs"),
    "BatchNorm1d": (lambda: tritonnorm.BatchNorm1d(4), lambda: nn.BatchNorm1d(4), 1, "cs"),
    "add_rms_norm": (lambda: Call(lambda m, x, r: TF.add_rms_norm(x, r, (D,), m.weight), 2),
                     lambda: Call(lambda m, x, r: (F.rms_norm(x + r, (D,), m.weight), x + r), 2),
                     2, "bs"),
    "add_layer_norm": (lambda: Call(lambda m, x, r: TF.add_layer_norm(x, r, (D,), m.weight), 2),
                       lambda: Call(lambda m, x, r: (F.layer_norm(x + r, (D,), m.weight), x + r),
                                    2),
                       2, "bs"),
    "rms_norm_quant": (lambda: Call(lambda m, x: TF.rms_norm_quant(x, (D,), m.weight), 1, False),
                       lambda: Call(lambda m, x: F.rms_norm(x, (D,), m.weight), 1), 1, "bs"),
    "layer_norm_quant": (lambda: Call(lambda m, x: TF.layer_norm_quant(x, (D,), m.weight), 1,
                                      False),
                         lambda: Call(lambda m, x: F.layer_norm(x, (D,), m.weight), 1), 1, "bs"),
    "HF Llama block": (lambda: _llama_block(True), lambda: _llama_block(False), 1, "bs"),
}


def _input(layout, b, t, i=0):
    torch.manual_seed(1000 * b + 10 * t + i)
    shape = (b, t, D) if layout == "bs" else (b, 4, t)
    return torch.randn(shape, device=DEVICE)


def _inputs(layout, n, b, t):
    return [_input(layout, b, t, i) for i in range(n)]


# 12 batch sizes (sequence fixed), then 12 sequence lengths (batch fixed); the first of each
# differs from the fixed size, so duck sizing adds no equality guard.
SWEEPS = {"batch": [(b, 7) for b in range(3, 15)], "sequence": [(2, t) for t in range(3, 15)]}


def _frames(module, n, layout, sizes):
    """Frames dynamo compiles for module over the sizes, and the outputs."""
    torch._dynamo.reset()
    counters.clear()
    f = torch.compile(module, backend="aot_eager", dynamic=True, fullgraph=True)
    outs = [f(*_inputs(layout, n, b, t)) for b, t in sizes]
    return counters["stats"]["unique_graphs"], outs


# The default run sweeps the batch of every case but the LayerNorm twins of the RMSNorm
# calls (add_layer_norm, layer_norm_quant: the same front end) and InstanceNorm (BatchNorm's
# path), and the sequence of the transformer rows that serving grows (LayerNorm, RMSNorm,
# the Llama block); the others, which take the same paths, are marked slow (-m slow) to
# keep the suite's time, as are those cases' exports.
SERVING = ("LayerNorm", "RMSNorm", "HF Llama block")
TWINS = ("add_layer_norm", "layer_norm_quant", "InstanceNorm1d")
PAIRS = [pytest.param(name, sweep, marks=() if (sweep == "batch" and name not in TWINS)
                      or name in SERVING else pytest.mark.slow)
         for name in CASES for sweep in SWEEPS]
EXPORTS = [pytest.param(name, marks=pytest.mark.slow if name in TWINS else ()) for name in CASES]


@pytest.mark.parametrize("name, sweep", PAIRS)
def test_dynamic_compile_needs_no_more_frames_than_torch(name, sweep):
    ours, theirs, n, layout = CASES[name]
    model = ours().to(DEVICE)
    frames, outs = _frames(model, n, layout, SWEEPS[sweep])
    torch_frames, _ = _frames(theirs().to(DEVICE), n, layout, SWEEPS[sweep])
    assert frames <= torch_frames, (frames, torch_frames)
    torch._dynamo.reset()
    for (b, t), out in zip(SWEEPS[sweep][-2:], outs[-2:]):   # the compiled calls are eager's
        torch.testing.assert_close(out, model(*_inputs(layout, n, b, t)))


@pytest.mark.parametrize("name", EXPORTS)
def test_export_with_dynamic_batch_and_sequence_runs_at_a_new_size(name):
    ours, _, n, layout = CASES[name]
    model = ours().to(DEVICE).eval()
    batch, seq = Dim("batch", min=2, max=1024), Dim("seq", min=2, max=4096)
    dims = {0: batch, 1: seq} if layout == "bs" else {0: batch, 2: seq}
    program = export(model, tuple(_inputs(layout, n, 3, 7)),
                     dynamic_shapes=tuple(dims for _ in range(n)))
    args = _inputs(layout, n, 5, 11)
    torch.testing.assert_close(program.module()(*args), model(*args))
