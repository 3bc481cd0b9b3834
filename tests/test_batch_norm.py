"""BatchNorm1d/2d/3d: rows are channels, reduced across the batch and space."""
import pytest
import torch
import torch.nn as nn

import tritonnorm
from oracle import GRAD_TOL, TOL, assert_matches_torch

# (our class, torch's class, input shape): every rank, 1d with and without length.
RANKS = [
    (tritonnorm.BatchNorm1d, nn.BatchNorm1d, (6, 5)),
    (tritonnorm.BatchNorm1d, nn.BatchNorm1d, (3, 4, 7)),
    (tritonnorm.BatchNorm2d, nn.BatchNorm2d, (3, 5, 6, 7)),
    (tritonnorm.BatchNorm3d, nn.BatchNorm3d, (2, 3, 3, 4, 5)),
]
LAYOUTS = {4: torch.channels_last, 5: torch.channels_last_3d}
# (affine, track_running_stats, momentum)
FLAGS = [(True, True, 0.1), (False, True, 0.3), (True, True, None), (False, False, 0.1),
         (True, False, 0.1)]


def with_layouts(ranks):
    out = []
    for ours, ref, shape in ranks:
        out.append((ours, ref, shape, torch.contiguous_format))
        if len(shape) in LAYOUTS:
            out.append((ours, ref, shape, LAYOUTS[len(shape)]))
    return out


CASES = with_layouts(RANKS)
IDS = [f"{o.__name__}-{'x'.join(map(str, s))}-{str(f).split('.')[-1]}" for o, _, s, f in CASES]


def _pair(ours_cls, ref_cls, c, dtype, device, affine=True, track=True, momentum=0.1):
    ref = ref_cls(c, affine=affine, track_running_stats=track, momentum=momentum).to(device, dtype)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
    ours = ours_cls(c, affine=affine, track_running_stats=track, momentum=momentum).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _assert_buffers_match(ours, ref, dtype, when):
    for name, b in ref.named_buffers():
        mine = dict(ours.named_buffers())[name]
        if b.dtype == torch.long:
            assert torch.equal(mine, b), f"{name} {when}"
        else:
            torch.testing.assert_close(mine, b, **GRAD_TOL[dtype], msg=lambda m: f"{name} {when}: {m}")


def _train_then_eval(ours, ref, shape, fmt, dtype, device, steps=3):
    for step in range(steps):
        x = (torch.randn(shape, device=device) * (step + 1) + step).to(dtype)
        assert_matches_torch(ours, ref, [x.contiguous(memory_format=fmt)])
        _assert_buffers_match(ours, ref, dtype, f"after step {step}")
    ours.eval()
    ref.eval()
    x = (torch.randn(shape, device=device) + 0.5).to(dtype).contiguous(memory_format=fmt)
    y = assert_matches_torch(ours, ref, [x])
    assert y.is_contiguous(memory_format=fmt), "output keeps the input's memory format"
    _assert_buffers_match(ours, ref, dtype, "after eval")


@pytest.mark.parametrize("ours_cls,ref_cls,shape,fmt", CASES, ids=IDS)
def test_batch_norm_trains_and_evals_like_torch(ours_cls, ref_cls, shape, fmt, mode, device):
    ours, ref = _pair(ours_cls, ref_cls, shape[1], mode, device)
    _train_then_eval(ours, ref, shape, fmt, mode, device, steps=2)


@pytest.mark.parametrize("affine,track,momentum", FLAGS, ids=str)
@pytest.mark.parametrize("ours_cls,ref_cls,shape,fmt", CASES, ids=IDS)
def test_batch_norm_flags(ours_cls, ref_cls, shape, fmt, affine, track, momentum, device):
    ours, ref = _pair(ours_cls, ref_cls, shape[1], torch.float32, device, affine, track, momentum)
    _train_then_eval(ours, ref, shape, fmt, torch.float32, device)


# Values per channel from 2 up to well past one 4096-element tile.
REDUCTION_SIZES = [(2, 3), (1, 4, 3), (5, 2, 7, 9), (3, 2, 47, 31), (64, 3, 80)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", REDUCTION_SIZES, ids=str)
def test_batch_norm_reduction_sizes(shape, dtype, device):
    ours_cls, ref_cls = {2: (tritonnorm.BatchNorm1d, nn.BatchNorm1d), 3: (tritonnorm.BatchNorm1d, nn.BatchNorm1d),
                         4: (tritonnorm.BatchNorm2d, nn.BatchNorm2d)}[len(shape)]
    ours, ref = _pair(ours_cls, ref_cls, shape[1], dtype, device)
    _train_then_eval(ours, ref, shape, torch.contiguous_format, dtype, device, steps=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_input_with_fp32_weights_and_buffers(dtype, device):
    ours, ref = _pair(tritonnorm.BatchNorm2d, nn.BatchNorm2d, 4, torch.float32, device)
    x = torch.randn(3, 4, 5, 5, device=device, dtype=dtype)
    assert_matches_torch(ours, ref, [x], dtype=dtype)
    _assert_buffers_match(ours, ref, torch.float32, "after a mixed-precision step")


def test_seed_worked_example(device):
    torch.manual_seed(42)
    x = torch.randn(1, 2, 2, 2)
    bn = tritonnorm.BatchNorm2d(2).to(device)
    bn.running_mean = 2 * torch.ones(2, device=device)
    bn.running_var = torch.ones(2, device=device)
    bn.train()
    y = bn(x.to(device))
    expected = torch.tensor([[[[1.4150, -1.4102], [0.0257, -0.0305]],
                              [[-0.9276, -0.1964], [1.6731, -0.5491]]]])
    torch.testing.assert_close(y.cpu(), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(bn.running_mean.cpu(), torch.tensor([1.8233, 1.8065]), atol=1e-4, rtol=0)
    torch.testing.assert_close(bn.running_var.cpu(), torch.tensor([0.9007, 1.1187]), atol=1e-4, rtol=0)


def test_eval_without_running_stats_uses_batch_stats(device):
    ours, ref = _pair(tritonnorm.BatchNorm2d, nn.BatchNorm2d, 3, torch.float32, device, track=False)
    ours.eval()
    ref.eval()
    x = torch.randn(4, 3, 5, 5, device=device) * 2 + 1
    torch.testing.assert_close(ours(x), ref(x), **TOL[torch.float32])


@pytest.mark.parametrize("shape, fmt, merged", [
    ((8, 6, 7, 7), torch.channels_last, True),
    ((2, 3, 3, 4, 5), torch.channels_last_3d, True),
    ((8, 6, 7, 7), torch.contiguous_format, False),
    ((6, 5), torch.contiguous_format, False),
    ((1, 6, 7, 7), torch.channels_last, False),
], ids=["nhwc", "ndhwc", "nchw", "1d", "one sample"])
def test_kernels_walk_a_channels_last_channel_as_one_strided_axis(shape, fmt, merged):
    """In channels_last BatchNorm a channel's (sample, position) pairs are equally spaced, C
    apart: the kernels walk them as one axis of N * S elements (kernel_view), so tiles
    need not pad S's remainder.  Elsewhere the view is kept.  The rows are the same."""
    from tritonnorm.spec import BATCH, GROUP, batch_layout, channel_layout, kernel_view
    x = torch.randn(shape).contiguous(memory_format=fmt)
    _, view = batch_layout(x)
    kv = kernel_view(view, BATCH, x.element_size())
    assert kv.rows == view.rows and kv.Cg * kv.S == view.Cg * view.S
    c = shape[1]
    if merged:
        assert (kv.Cg, kv.S, kv.sS, kv.sG) == (1, x.numel() // c, c, 1)
    else:
        assert kv == view
    if x.dim() > 2:   # GroupNorm's parameters depend on j: never merged
        _, gview = channel_layout(x, 3 if c % 3 == 0 else 1)
        assert kernel_view(gview, GROUP, x.element_size()) == gview


@pytest.mark.parametrize("shape,dtype,i32", [
    ((32, 64, 7, 7), torch.bfloat16, True),      # runs of 49 start off 16-byte boundaries
    ((8, 16, 7, 7), torch.float32, True),
    ((8, 16, 14, 14), torch.bfloat16, True),
    ((8, 16, 14, 14), torch.float32, False),     # 784-byte runs: aligned
    ((4, 6, 5, 3), torch.float64, True),
    ((8, 16, 8, 8), torch.bfloat16, False),      # runs of 64: vectorised, int64 kept
    ((8, 16, 7, 7), "channels_last", False),     # one strided axis (kernel_view)
    ((8, 3, 2 ** 27 // 49 + 1, 49), torch.bfloat16, False),   # offsets pass 2**31: int64
], ids=str)
def test_tile_offsets_are_int32_only_where_elements_load_one_by_one_and_fit(shape, dtype, i32):
    """config.offsets_i32, from the view and the tile alone (a meta tensor: no memory)."""
    from tritonnorm import config
    from tritonnorm.spec import BATCH, batch_layout, kernel_view
    fmt = torch.channels_last if dtype == "channels_last" else torch.contiguous_format
    dtype = torch.bfloat16 if dtype == "channels_last" else dtype
    x = torch.empty(shape, dtype=dtype, device="meta").contiguous(memory_format=fmt)
    view = kernel_view(batch_layout(x)[1], BATCH, x.element_size())
    cfg = config.row_config(view, x, BATCH, "fwd")
    assert config.offsets_i32(view, cfg.BLOCK_G, cfg.BLOCK_J, cfg.BLOCK_S,
                              x.element_size()) == i32
