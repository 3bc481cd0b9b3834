"""Reduction specs and shape canonicalisation.

A norm is the set of axes it reduces.  Every within-sample norm is addressed by
the kernels as a strided ``[N, G, Cg, S]`` view (see kernels/tiles.py):

=============  ====  ===========  ====  ===  =====================
norm            N     G            Cg    S    affine indexed by
=============  ====  ===========  ====  ===  =====================
LayerNorm       1     rows         K     1    element j
RMSNorm         1     rows         K     1    element j
GroupNorm       N     num_groups   C/G   HWD  channel g*Cg + j
InstanceNorm    N     C            1     HWD  channel g*Cg + j = g
BatchNorm       1     C            N     HWD  row g (= channel)
=============  ====  ===========  ====  ===  =====================

BatchNorm reduces across the batch: its rows are channels and the ``j`` axis
walks the samples (stride sN), so few rows of N*S elements each -- exactly
what the split reduction (PHASE 1/2) spreads over many programs.
"""
import math
from typing import NamedTuple

import torch


# How the affine parameters are indexed (the kernels' W_MODE).
W_BY_CHANNEL, W_BY_ELEMENT, W_BY_ROW = 0, 1, 2


class ReductionSpec(NamedTuple):
    name: str
    center: bool    # subtract the mean (False for RMSNorm)
    w_mode: int     # W_BY_CHANNEL, W_BY_ELEMENT or W_BY_ROW
    cast_xhat: bool = False   # xhat rounded to the input's dtype before the weight (CAST_XHAT)


LAYER = ReductionSpec("layer_norm", center=True, w_mode=W_BY_ELEMENT)
RMS = ReductionSpec("rms_norm", center=False, w_mode=W_BY_ELEMENT)
# Hugging Face's Llama-family RMSNorm (and T5LayerNorm): normalised in fp32, cast back to
# the input's dtype, then multiplied by the weight -- two roundings in bf16, as it has.
RMS_CAST = ReductionSpec("rms_norm_cast", center=False, w_mode=W_BY_ELEMENT, cast_xhat=True)
GROUP = ReductionSpec("group_norm", center=True, w_mode=W_BY_CHANNEL)
INSTANCE = ReductionSpec("instance_norm", center=True, w_mode=W_BY_CHANNEL)
BATCH = ReductionSpec("batch_norm", center=True, w_mode=W_BY_ROW)


class RowView(NamedTuple):
    """Sizes and element strides of the [N, G, Cg, S] view of one tensor."""
    N: int
    G: int
    Cg: int
    S: int
    sN: int
    sG: int
    sJ: int
    sS: int
    memory_format: torch.memory_format
    # Consecutive rows that share one set of statistics: 1, or, in a kernel_view that walks a
    # channels_last GroupNorm by channel, the Cg channels of a group.
    stat_rows: int = 1

    @property
    def rows(self) -> int:
        return self.N * self.G

    @property
    def stat_count(self) -> int:
        """Sets of statistics (mean, rstd) a forward saves: one a row, or a group of rows."""
        return self.rows // self.stat_rows


def row_layout(x: torch.Tensor, k: int, strided: bool = False):
    """LayerNorm/RMSNorm: the trailing ``k`` elements form a row.  With ``strided``, a
    view whose rows are each one contiguous run, and whose leading dims merge into at
    most two strided axes (N, G) -- ``qkv[..., :H * D].view(B, T, H, D)`` over D -- is
    addressed in place, and its outputs are dense (rows_strided); any other layout is
    made contiguous."""
    if strided and not x.is_contiguous() and x.numel():
        view = _strided_rows(x, k)
        if view is not None:
            return x, view
    x = x.contiguous()
    rows = x.numel() // k if k else 0
    return x, RowView(1, rows, k, 1, 0, k, 1, 0, torch.contiguous_format)


def _strided_rows(x: torch.Tensor, k: int):
    """The [N, G, k, 1] view of x's rows of k elements, or None."""
    i, run = x.dim(), 1
    while run < k:
        i -= 1
        run *= x.shape[i]
    expect = 1
    for d in range(x.dim() - 1, i - 1, -1):   # the row: one contiguous run
        if x.shape[d] != 1 and x.stride(d) != expect:
            return None
        expect *= x.shape[d]
    merged = []   # leading dims, adjacent ones merged where their strides allow
    for size, stride in ((x.shape[d], x.stride(d)) for d in range(i) if x.shape[d] != 1):
        if merged and merged[-1][1] == stride * size:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    if len(merged) > 2:
        return None
    (n, sn), (g, sg) = [(1, 0)] * (2 - len(merged)) + merged
    return RowView(n, g, k, 1, sn, sg, 1, 0, torch.contiguous_format)


def rows_strided(view: RowView, spec: ReductionSpec) -> bool:
    """LayerNorm/RMSNorm rows read from a strided view: the outputs are dense instead."""
    return spec.w_mode == W_BY_ELEMENT and (
        view.sG != view.Cg or (view.N > 1 and view.sN != view.G * view.Cg))


def out_like(x: torch.Tensor, view: RowView, spec: ReductionSpec, dtype=None) -> torch.Tensor:
    """An output (y, dx) for input x: x's dense layout, or row-major for strided rows."""
    return new_output(x, rows_strided(view, spec), dtype)


def new_output(x: torch.Tensor, row_major: bool, dtype=None) -> torch.Tensor:
    """out_like with rows_strided decided (a launch plan holds it): row-major, or x's
    dense layout."""
    if row_major:
        return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)
    return torch.empty_like(x) if dtype is None else torch.empty_like(x, dtype=dtype)


def channel_format(x: torch.Tensor) -> torch.memory_format:
    """x's dense memory format: contiguous, channels_last(_3d), or None for other strides."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _nchw_strides(x: torch.Tensor):
    """(x, N, C, S, sN, sC, sS, format) of [N, C, *spatial] input.

    NCHW and channels_last inputs are addressed through their strides, with no
    copy; any other layout is made contiguous first."""
    fmt = channel_format(x)
    if fmt is None:
        x, fmt = x.contiguous(), torch.contiguous_format
    n, c = x.shape[0], x.shape[1]
    s = math.prod(x.shape[2:])
    if fmt == torch.contiguous_format:
        return x, n, c, s, c * s, s, 1, fmt
    return x, n, c, s, c * s, 1, c, fmt


def channel_layout(x: torch.Tensor, groups: int):
    """GroupNorm/InstanceNorm: rows are (n, group) over C/G channels x spatial."""
    x, n, c, s, s_n, s_c, s_s, fmt = _nchw_strides(x)
    cg = c // groups
    return x, RowView(n, groups, cg, s, s_n, cg * s_c, s_c, s_s, fmt)


def batch_layout(x: torch.Tensor):
    """BatchNorm: one row per channel, over the samples (j) and spatial (s) axes."""
    x, n, c, s, s_n, s_c, s_s, fmt = _nchw_strides(x)
    return x, RowView(1, c, n, s, 0, s_c, s_n, s_s, fmt)


def kernel_view(view: RowView, spec: ReductionSpec, itemsize: int) -> RowView:
    """The view the kernels walk: ``view``, except

    * where the j axis steps over whole runs of s (sJ = S * sS, BatchNorm channels_last: a
      channel's samples x positions are one axis of stride C) and the parameters do not
      depend on j (by row): there j and s merge into one s axis of Cg * S, whose tiles waste
      no lanes on S's remainder (BatchNorm 7x7: S = 49 in blocks of 64 left 23 % of every
      tile masked; 32 x 49 = 1568 is walked in whole blocks).  The rows, their lengths and
      their statistics are the same;
    * a channels_last GroupNorm whose groups are short runs of channels (``_by_channel``):
      walked as InstanceNorm is, a row a channel, with ``stat_rows = Cg`` -- the partials of
      a group's Cg channels are merged into its statistics (kernels/row_norm.py)."""
    if (spec.w_mode == W_BY_ROW and view.Cg > 1 and view.S > 1
            and view.sJ == view.S * view.sS):
        return RowView(view.N, view.G, 1, view.Cg * view.S, view.sN, view.sG, 0, view.sS,
                       view.memory_format)
    if _by_channel(view, spec, itemsize):
        return RowView(view.N, view.G * view.Cg, 1, view.S, view.sN, 1, 0, view.sS,
                       view.memory_format, view.Cg)
    return view


def _by_channel(view: RowView, spec: ReductionSpec, itemsize: int) -> bool:
    """A channels_last GroupNorm (channels contiguous, positions C apart) whose group is not
    a power of two of channels: its [groups, Cg, positions] tile padded Cg (10 to 16 at
    2x320x64x64, 38 % of the lanes idle), and a run of Cg channels starts off a 16-byte
    boundary, so every load was a 16-bit scalar (7 DRAM round trips a tile).  Walked by
    channel, a tile is [channels, positions] with the channels one contiguous, unpadded run
    of 16-byte loads, as channels_last InstanceNorm's (issue 23, item 5).

    In half precision and from 1024 positions: fwd+bwd, bf16 NHWC, 2x320x64x64 43.6 ->
    35.4 us, 2x320x128x128 95 -> 66, 2x640x64x64 60 -> 47, 2x1280x64x64 137 -> 72,
    2x1280x32x32 52 -> 37, 2x1920x32x32 52 -> 44; 2x960x64x64 and 4x320x64x64 even;
    2x960x32x32 31 -> 36.  Fewer positions lost by it (2x1280x16x16 23 -> 28: the tile of
    whole groups is resident there), and so did fp32 (2x320x64x64 41 -> 57: rows of 16
    channels, 64 bytes, are walked with one load in flight).
    ../shared/tools/sass_model.py, triton 3.6.

    fp32 is also where the merge would cost accuracy: a channel's partial means are stored
    in the statistics dtype, rounded at the scale of the mean, and the merge's
    c * (m_i - mean)^2 terms carry that rounding, so at |mean| / std of a few thousand a
    group's fp32 variance came out 4e-5 to 1e-4 off (relative), against 2e-7 for the padded
    walk, which shifts by one value of the group.  A half-precision input's own rounding is far
    coarser than that."""
    return (spec.w_mode == W_BY_CHANNEL and view.Cg > 1 and view.G > 1
            and view.S >= BY_CHANNEL_MIN_S and itemsize <= BY_CHANNEL_MAX_ITEMSIZE
            and view.sJ == 1 and view.sG == view.Cg and view.sS == view.G * view.Cg
            and view.Cg & (view.Cg - 1) != 0 and view.Cg <= MAX_STAT_ROWS)


# Where the by-channel walk pays (see _by_channel); tests lower them to walk small shapes
# in every dtype that way.
BY_CHANNEL_MIN_S = 1024
BY_CHANNEL_MAX_ITEMSIZE = 2
# The merge pass loads a group's Cg x SPLIT partials for each of its rows at once: past 64
# channels a group, 16 rows of them would not fit in registers even unsplit (config's
# MERGE_PER_THREAD), and such groups fill the [groups, Cg, positions] tile well anyway.
MAX_STAT_ROWS = 64


def match_layout(t: torch.Tensor, view: RowView) -> torch.Tensor:
    """Give a gradient the memory layout of the tensor the view describes."""
    return t if t.is_contiguous(memory_format=view.memory_format) else t.contiguous(memory_format=view.memory_format)
