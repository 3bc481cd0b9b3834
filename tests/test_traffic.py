"""Bytes and launches per pass stay near the minimum (perf/traffic.py counts them
under the interpreter, with the launch configs of a GPU of PLAN_SMS SMs).

Minimal bytes, S = bytes of x: forward 2S, backward 3S; a BatchNorm training
pass reads x twice by necessity (the batch does not fit on chip): 3S and 5S.
"""
import sys
from pathlib import Path

import pytest
import torch

import tritonnorm
from tritonnorm import _runtime, config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import traffic  # noqa: E402

pytestmark = pytest.mark.skipif(not _runtime.INTERPRET, reason="counts loads under the interpreter")

# A 2-SM plan: 8 persistent programs, so the cases below have the rows per program
# of a real model on a 132-SM GPU (16: 128 rows here ~ 8192 tokens there).
PLAN_SMS = 2

# (case, module, shape, dtype, channels_last, training,
#  {pass: (max launches, max issued / minimal)})
CASES = [
    ("LayerNorm on-chip rows", lambda: tritonnorm.LayerNorm(1024), (128, 1024), torch.float32,
     False, True, {"fwd": (1, 1.10), "bwd": (2, 1.20)}),
    ("RMSNorm on-chip rows bf16", lambda: tritonnorm.RMSNorm(1024), (128, 1024), torch.bfloat16,
     False, True, {"fwd": (1, 1.10), "bwd": (2, 1.20)}),
    ("GroupNorm on-chip rows", lambda: tritonnorm.GroupNorm(8, 32), (4, 32, 16, 16), torch.float32,
     False, True, {"fwd": (1, 1.10), "bwd": (2, 1.20)}),
    ("InstanceNorm on-chip rows", lambda: tritonnorm.InstanceNorm2d(16, affine=True),
     (2, 16, 16, 16), torch.float32, False, True, {"fwd": (1, 1.10), "bwd": (2, 1.20)}),
    ("BatchNorm training NCHW", lambda: tritonnorm.BatchNorm2d(8), (8, 8, 16, 16), torch.float32,
     False, True, {"fwd": (2, 1.05), "bwd": (3, 1.05)}),
    ("BatchNorm training channels_last", lambda: tritonnorm.BatchNorm2d(8), (8, 8, 16, 16),
     torch.float32, True, True, {"fwd": (2, 1.05), "bwd": (3, 1.05)}),
    ("BatchNorm eval", lambda: tritonnorm.BatchNorm2d(8), (8, 8, 16, 16), torch.float32,
     False, False, {"fwd": (1, 1.05)}),
]
# The one torch-side kernel a step may run: torch's own `num_batches_tracked += 1`.
ALLOWED_TORCH = {"add_"}


@pytest.fixture
def plan(monkeypatch):
    monkeypatch.setattr(_runtime, "PLAN_SMS", PLAN_SMS)
    config.clear_cache()
    yield
    config.clear_cache()


def _passes(make, shape, dtype, channels_last, training):
    torch.manual_seed(0)
    m = make().to(dtype).train(training)
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(training)
    out = {}
    y = []
    out["fwd"] = traffic.measure(lambda: y.append(m(x)))
    if training:
        dy = torch.randn_like(y[0])
        out["bwd"] = traffic.measure(lambda: y[0].backward(dy))
    return out, x.numel() * x.element_size()


@pytest.mark.parametrize("case,make,shape,dtype,cl,training,bounds", CASES, ids=[c[0] for c in CASES])
def test_bytes_and_launches_near_the_minimum(plan, case, make, shape, dtype, cl, training, bounds):
    counts, s = _passes(make, shape, dtype, cl, training)
    batch = "BatchNorm training" in case
    minimal = {"fwd": (3 if batch else 2) * s, "bwd": (5 if batch else 3) * s}
    for pass_, (launches, ratio) in bounds.items():
        c = counts[pass_]
        assert 1 <= c["launches"] <= launches, f"{pass_}: {c['launches']} launches"
        # The counter saw the pass: at least x read and the result written, once each.
        assert c["distinct"] >= 0.99 * (2 if pass_ == "fwd" else 3) * s
        issued = (c["issued"] + c["torch_bytes"]) / minimal[pass_]
        assert issued <= ratio, f"{pass_}: {issued:.3f} x the minimal bytes"
        assert set(c["torch"]) <= ALLOWED_TORCH, f"{pass_}: torch-side kernels {c['torch']}"
        assert c["sectors"] <= 1.3 * c["issued"], f"{pass_}: uncoalesced, {c['sectors'] / c['issued']:.2f}"


def test_channels_last_group_norm_is_coalesced(plan):
    """Cg x itemsize = 8 bytes: a tile spans enough groups to fill whole sectors."""
    counts, _ = _passes(lambda: tritonnorm.GroupNorm(16, 32), (2, 32, 8, 8), torch.float32,
                        True, True)
    for pass_, c in counts.items():
        assert c["sectors"] <= 1.3 * c["issued"], f"{pass_}: {c['sectors'] / c['issued']:.2f}"


def test_the_counter_sees_a_plain_copy():
    """The counter itself: a torch copy_ counts as a torch-side kernel, nothing as a launch."""
    x = torch.randn(16)
    c = traffic.measure(lambda: torch.empty_like(x).copy_(x))
    assert c["launches"] == 0 and c["torch"] == ["copy_"]


@pytest.mark.parametrize("norm,shape,dtype", [
    ("layer", (64, 16384), torch.float32), ("rms", (64, 16384), torch.bfloat16),
    ("layer", (64, 768), torch.bfloat16), ("group", (2, 64, 32, 32), torch.float32)])
def test_forward_rows_up_to_16384_are_loaded_once(plan, norm, shape, dtype):
    """Contiguous rows up to the resident budget are one tile per program (RESIDENT)."""
    from tritonnorm.spec import GROUP, LAYER, RMS, channel_layout, row_layout
    x = torch.empty(shape, dtype=dtype)
    _, view = channel_layout(x, 8) if norm == "group" else row_layout(x, shape[-1])
    norm = {"layer": LAYER, "rms": RMS, "group": GROUP}[norm]
    cfg = config.row_config(view, x, norm, "fwd")
    assert cfg.chunk == 1 and cfg.BLOCK_J * cfg.BLOCK_S >= view.Cg * view.S


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_a_fused_residual_add_moves_four_tensors_a_pass(plan, norm):
    """Forward reads x and residual, writes y and h: 4 tensors, against 5 for the add and
    the norm apart.  Backward reads h, dy and dh, writes the one gradient x and residual
    share: 4 (plus dw/db)."""
    import tritonnorm.functional as TF
    torch.manual_seed(0)
    x = torch.randn(128, 1024, requires_grad=True)
    r = torch.randn(128, 1024, requires_grad=True)
    w = torch.rand(1024, requires_grad=True)
    fused = (lambda: TF.add_layer_norm(x, r, (1024,), w)) if norm == "layer" else \
        (lambda: TF.add_rms_norm(x, r, (1024,), w))
    out = []
    fwd = traffic.measure(lambda: out.append(fused()))
    y, h = out[0]
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    # autograd.grad: leaves' .grad accumulation would copy the shared gradient once more.
    bwd = traffic.measure(lambda: torch.autograd.grad((y, h), (x, r, w), (dy, dh)))
    s = x.numel() * x.element_size()
    for c, launches, bound in ((fwd, 1, 1.10), (bwd, 2, 1.20)):
        assert 1 <= c["launches"] <= launches
        assert (c["issued"] + c["torch_bytes"]) / (4 * s) <= bound
        assert c["distinct"] >= 0.99 * 4 * s


# (case, module, shape, dtype, channels_last, residual, {pass: max issued / minimal}).
# Minimal bytes are the plain norm's (an activation adds none); a residual adds 1S each
# way: its read forward, its gradient's write backward.  relu / leaky_relu after a
# residual also write (forward) and read (backward) a one-byte sign mask, M bytes, in
# place of reading the residual again: 0.5S in bf16, 0.25S in fp32.  BatchNorm's second
# walk reads dz (the residual's gradient, written by the first) in place of dy.
EPILOGUES = [
    ("GroupNorm+SiLU channels_last bf16", lambda: tritonnorm.GroupNorm(8, 32, activation="silu"),
     (4, 32, 16, 16), torch.bfloat16, True, False, {"fwd": 1.10, "bwd": 1.20}),
    ("InstanceNorm+GELU", lambda: tritonnorm.InstanceNorm2d(16, affine=True, activation="gelu"),
     (2, 16, 16, 16), torch.float32, False, False, {"fwd": 1.10, "bwd": 1.20}),
    # Its forward runs a row a warp (config._warp_a_row), and each of those programs reads
    # w and b once: 128 rows over 24 programs on the 2-SM plan read them 24 times, 0.19S
    # more than the minimum (on a GPU, 12 programs an SM each read them from L2 once).
    ("LayerNorm+GELU(tanh) bf16", lambda: tritonnorm.LayerNorm(1024, activation="gelu",
                                                             approximate="tanh"),
     (128, 1024), torch.bfloat16, False, False, {"fwd": 1.20, "bwd": 1.20}),
    ("BatchNorm+ReLU channels_last bf16", lambda: tritonnorm.BatchNorm2d(8, activation="relu"),
     (8, 8, 16, 16), torch.bfloat16, True, False, {"fwd": 1.05, "bwd": 1.05}),
    ("BatchNorm+add+ReLU channels_last bf16", lambda: tritonnorm.BatchNorm2d(8, activation="relu"),
     (16, 8, 16, 16), torch.bfloat16, True, True, {"fwd": 1.05, "bwd": 1.05}),
    ("GroupNorm+add+ReLU fp32", lambda: tritonnorm.GroupNorm(8, 32, activation="relu"),
     (4, 32, 16, 16), torch.float32, False, True, {"fwd": 1.10, "bwd": 1.20}),
]


@pytest.mark.parametrize("case,make,shape,dtype,cl,residual,bounds", EPILOGUES,
                         ids=[c[0] for c in EPILOGUES])
def test_an_epilogue_adds_no_pass(plan, case, make, shape, dtype, cl, residual, bounds):
    """The activation (and the residual add) ride on the norm's own passes: as many
    launches as the plain norm, and the bytes of its passes plus the residual's."""
    torch.manual_seed(0)
    m = make().to(dtype)
    x, r = (torch.randn(shape, dtype=dtype) for _ in range(2))
    if cl:
        x, r = (t.contiguous(memory_format=torch.channels_last) for t in (x, r))
    x.requires_grad_()
    r.requires_grad_(residual)
    out = []
    fwd = traffic.measure(lambda: out.append(m(x, r) if residual else m(x)))
    dy = torch.randn_like(out[0])
    inputs = (x, r) if residual else (x,)
    bwd = traffic.measure(lambda: torch.autograd.grad(out[0], inputs, dy))
    s = x.numel() * x.element_size()
    batch = "BatchNorm" in case
    mask = x.numel() if residual and m.activation in ("relu", "leaky_relu") else 0
    minimal = {"fwd": (3 if batch else 2) * s + residual * s + mask,
               "bwd": (5 if batch else 3) * s + residual * s + mask}
    # The distinct bytes: each tensor once (BatchNorm walks x twice, and dy or dz twice).
    once = {"fwd": minimal["fwd"] - batch * s, "bwd": minimal["bwd"] - batch * 2 * s}
    for pass_, c in (("fwd", fwd), ("bwd", bwd)):
        assert 1 <= c["launches"] <= (2 if batch or pass_ == "bwd" else 1) + (pass_ == "bwd" and batch)
        assert c["distinct"] >= 0.99 * once[pass_]
        issued = (c["issued"] + c["torch_bytes"]) / minimal[pass_]
        assert issued <= bounds[pass_], f"{pass_}: {issued:.3f} x the minimal bytes"
        assert set(c["torch"]) <= ALLOWED_TORCH, f"{pass_}: torch-side kernels {c['torch']}"
