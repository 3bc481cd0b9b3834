"""Forward and backward kernels of every norm.

LayerNorm, RMSNorm, GroupNorm, InstanceNorm and BatchNorm are one kernel pair;
the reduction spec on the host picks the view ``[N, G, Cg, S]`` (see tiles.py)
and the constexprs below carry the rest:

* ``CENTER``  -- subtract the mean (everything but RMSNorm),
* ``W_MODE``  -- how the affine parameters are indexed: 0 by channel
  ``g * Cg + j`` (GroupNorm/InstanceNorm), 1 by element ``j`` (LayerNorm/RMSNorm),
  2 by row ``g`` (BatchNorm, whose rows are channels; InstanceNorm, one channel a row),
  3 by channel as 0, in a backward whose j block holds all of a row's channels,
* ``UPDATE_RUNNING`` -- fold the batch statistics into running_mean/var
  (BatchNorm), in place or into new tensors, with momentum, or 1 / num_batches_tracked
  read on the device when ``CUMULATIVE`` (momentum=None): no host sync,
* ``PHASE``   -- 0: one program owns whole rows; 1 and 2: a row is split over
  ``SPLIT`` programs (axis 1 of the grid); phase 1 writes per-program partials
  and phase 2 merges ``n_part`` of them (SPLIT, or the partials of every rank
  for SyncBatchNorm) and finishes the row chunk it owns; 3: the
  statistics are given (running mean and variance; eps and the rsqrt are
  applied here) and only the elementwise pass runs,
* ``RESIDENT`` -- each program's share of a row is a single tile: it is loaded
  once and kept in registers for the statistics and the elementwise pass,
* ``HAS_RES`` -- fused residual add (LayerNorm/RMSNorm): the row is
  h = x + residual, rounded to x's dtype as torch's add rounds it, and h is
  written out as the pass reads it; a later walk over the same row reads h back,
* ``CAST_XHAT`` -- xhat is rounded to the input's dtype before the weight multiplies
  it (Hugging Face's Llama-family RMSNorm casts back before its weight),
* ``Y_STRIDED`` -- LayerNorm/RMSNorm over the last dims of a strided view (QK-norm
  of a fused QKV projection): x is read in place through (sN, sG), and y, dense,
  has its rows at (ysN, ysG) (``tiles.out_offsets``),
* ``STAT_ROWS`` -- consecutive rows that share one set of statistics (1, or a channels_last
  GroupNorm walked a row a channel: its group's Cg channels, tritonnorm/spec.py kernel_view):
  PHASE 2 merges the partials of all of them, and the statistics are saved once a group, at
  ``stat_row`` (tiles.py); PHASE 1 and 2 only,
* ``I32`` -- tile offsets in int32, one register an element, where every offset fits and
  a tile's elements load one by one (tiles.tile_offsets; both kernels),
* ``QUANT`` -- quantized output, 1: int8, 2: fp8 e4m3: y / scale, clamped to +-qmax
  (int8 rounded half to even) and stored in Y's dtype; the scale per row is
  amax(|y|) / qmax, written to Scale (``DYNAMIC``), or one given per tensor.  A row
  walked in tiles is walked once more for its amax, without storing; PHASE 0 only.

Statistics of row (n, g) live at ``n * stat_sN + g``: ``stat_sN = G`` for
per-row statistics, 0 for per-group constants shared by every sample.

Programs are persistent over row blocks: program ``pid`` takes row blocks
``pid, pid + nprog, ...`` so the host can bound the number of programs.
"""
import triton
import triton.language as tl

from .activation import act
from .quant import quantize, row_scale, tile_amax
from .tiles import (add_shifted, by_row, div, out_offsets, part_index, per_row, row_block, rsqrt,
                    shifted_moments, stat_row, sum_parts, tile_moments, tiles_count,
                    tile_offsets, wide)


@triton.jit
def _param_index(g, j, Cg, G, W_MODE: tl.constexpr):
    """Index of the affine parameter of each (g, j) and its mask."""
    if W_MODE == 1:
        idx = j
        mask = j < Cg
    elif W_MODE == 2:
        idx = g
        mask = g < G
    else:
        idx = g * Cg + j
        mask = (g < G) & (j < Cg)
    return idx, mask


@triton.jit
def _update_running(RM_ptr, RV_ptr, RMo_ptr, RVo_ptr, NBT_ptr, rm, rv, rs, rmask, mean, cnt,
                    m2, mom_hi, mom_lo, CUMULATIVE: tl.constexpr):
    """running = (1 - f) * running + f * batch, with the unbiased variance; rm and rv, the
    running statistics read with the row block's first loads (row_norm_fwd), or None: read
    here.

    momentum comes as hi + lo fp32 parts (see tiles.wide)."""
    if CUMULATIVE:
        f = div(tl.zeros_like(mean) + 1.0, tl.load(NBT_ptr).to(mean.dtype))
    else:
        f = wide(mean, mom_hi, mom_lo)
    var = div(m2, tl.maximum(cnt - 1.0, 1.0))
    if rm is None:
        rm = tl.load(RM_ptr + rs, mask=rmask, other=0.0)
        rv = tl.load(RV_ptr + rs, mask=rmask, other=0.0)
    rm = rm.to(mean.dtype)
    rv = rv.to(mean.dtype)
    tl.store(RMo_ptr + rs, f * mean + (1.0 - f) * rm, mask=rmask)
    tl.store(RVo_ptr + rs, f * var + (1.0 - f) * rv, mask=rmask)


@triton.jit
def _chunk(T, chunk, PHASE: tl.constexpr):
    """The tile range [t0, t1) this program walks along its row: all of it in
    PHASE 0, chunk ``program_id(1)`` otherwise (PHASE 3 splits rows as well,
    so eval gets the parallelism of training)."""
    if PHASE != 0:
        t0 = tl.program_id(1) * chunk
        t1 = tl.minimum(t0 + chunk, T)
    else:
        t0 = 0
        t1 = T
    return t0, t1


@triton.jit
def _tile_j(t, nSB, BLOCK_J: tl.constexpr):
    """The j indices of tile t, shaped [BLOCK_J]; [None, :, None] puts them on the tile."""
    return (t // nSB) * BLOCK_J + tl.arange(0, BLOCK_J)


@triton.jit
def _load_params(W_ptr, B_ptr, g, j, Cg, G, W_MODE: tl.constexpr, HAS_W: tl.constexpr,
                 HAS_B: tl.constexpr, ACC: tl.constexpr, RAW: tl.constexpr = False):
    """The tile's weight and bias (1 and 0 when absent), in ACC -- or, with RAW, in
    their own dtype (a bf16 tile held across rows takes half the registers)."""
    widx, wmask = _param_index(g, j, Cg, G, W_MODE)
    w = tl.full(widx.shape, 1.0, ACC)
    b = tl.zeros(widx.shape, ACC)
    if HAS_W:
        w = tl.load(W_ptr + widx, mask=wmask, other=0.0)
        if not RAW:
            w = w.to(ACC)
    if HAS_B:
        b = tl.load(B_ptr + widx, mask=wmask, other=0.0)
        if not RAW:
            b = b.to(ACC)
    return w, b


@triton.jit
def _load(P_ptr, offs, mask, FILL: tl.constexpr = True):
    """P at offs, 0 outside mask -- or, without FILL, undefined there: the caller drops
    those lanes, and the loads skip the fill that would serialise them."""
    if FILL:
        return tl.load(P_ptr + offs, mask=mask, other=0.0)
    else:
        return tl.load(P_ptr + offs, mask=mask)


@triton.jit
def _load_x(X_ptr, R_ptr, offs, mask, ACC: tl.constexpr, HAS_RES: tl.constexpr,
            FILL: tl.constexpr = True):
    """x at offs, in x's dtype; with HAS_RES, h = x + residual rounded to x's dtype, as
    torch's add rounds it."""
    x = _load(X_ptr, offs, mask, FILL)
    if HAS_RES:
        x = (x.to(ACC) + _load(R_ptr, offs, mask, FILL).to(ACC)).to(x.dtype)
    return x


@triton.jit
def _load_h(X_ptr, R_ptr, H_ptr, offs, mask, ACC: tl.constexpr, HAS_RES: tl.constexpr,
            FILL: tl.constexpr = True):
    """The tile of x (or h, also stored to H) in ACC (see _load for FILL)."""
    x = _load_x(X_ptr, R_ptr, offs, mask, ACC, HAS_RES, FILL)
    if HAS_RES:
        tl.store(H_ptr + offs, x, mask=mask)
    return x.to(ACC)


@triton.jit
def _walk_tile(X_ptr, R_ptr, H_ptr, t, t1, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
               ACC: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_G: tl.constexpr,
               BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr, EVEN: tl.constexpr, I32: tl.constexpr,
               VEC: tl.constexpr):
    """(x or h, mask) of tile t of a statistics walk that ends before tile t1, in ACC, loaded
    without a fill value (a fill is a write to the same registers ahead of each predicated
    load, which serialises them): the caller drops the lanes outside the mask.  With EVEN
    the caller keeps t < t1 and the mask stays a constant."""
    offs, mask, g, j = tile_offsets(t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                                    BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32, VEC)
    if not EVEN:
        mask = mask & ((tl.zeros([1, 1, 1], tl.int32) + t) < t1)
    return _load_h(X_ptr, R_ptr, H_ptr, offs, mask, ACC, HAS_RES, False), mask


@triton.jit
def _affine(xhat, w, b, X_ptr, CAST_XHAT: tl.constexpr):
    """xhat * w + b, with xhat first rounded to X's dtype under CAST_XHAT."""
    if CAST_XHAT:
        xhat = xhat.to(X_ptr.dtype.element_ty).to(xhat.dtype)
    return xhat * w + b


@triton.jit
def _epilogue(y, R_ptr, Mask_ptr, offs, mask, slope_hi, slope_lo, X_ptr, ACT: tl.constexpr,
              ADD_Y: tl.constexpr, MASK: tl.constexpr, ACC: tl.constexpr):
    """act(y [+ residual]) with torch's roundings: y, then y + residual, in x's dtype;
    with MASK the sign of z is stored for the backward."""
    if ACT != 0 or ADD_Y:
        y = y.to(X_ptr.dtype.element_ty).to(ACC)
        if ADD_Y:
            r = tl.load(R_ptr + offs, mask=mask, other=0.0).to(ACC)
            y = (y + r).to(X_ptr.dtype.element_ty).to(ACC)
        if MASK:
            tl.store(Mask_ptr + offs, y > 0, mask=mask)
        y = act(y, slope_hi, slope_lo, ACT)
    return y


@triton.jit
def _y_tile(Src_ptr, X_ptr, W_ptr, B_ptr, R_ptr, Mask_ptr, t, n, g0, G, Cg, S, sN, sG, sJ, sS,
            nSB, ysN, ysG, mean3, rstd3, slope_hi, slope_lo, Y_STRIDED: tl.constexpr,
            W_MODE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, CAST_XHAT: tl.constexpr,
            ACT: tl.constexpr, ADD_Y: tl.constexpr, MASK: tl.constexpr, ACC: tl.constexpr,
            BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
            EVEN: tl.constexpr, I32: tl.constexpr,
            VEC: tl.constexpr):
    """(offsets in Y, mask, y) of tile t of a walked row, x read from Src (X, or H)."""
    offs, mask, g, j = tile_offsets(t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                                    BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32, VEC)
    xt = _load(Src_ptr, offs, mask, False).to(ACC)   # lanes outside mask are never stored
    w, b = _load_params(W_ptr, B_ptr, g, j, Cg, G, W_MODE, HAS_W, HAS_B, ACC)
    y = _affine((xt - mean3) * rstd3, w, b, X_ptr, CAST_XHAT)
    y = _epilogue(y, R_ptr, Mask_ptr, offs, mask, slope_hi, slope_lo, X_ptr, ACT, ADD_Y, MASK, ACC)
    return out_offsets(offs, n, g, sN, sG, ysN, ysG, Y_STRIDED), mask, y


@triton.jit
def _merge_partials(Part_ptr, r, rmask, n_part, ACC: tl.constexpr, BLOCK_PART: tl.constexpr):
    """(count, mean, M2) of rows r from their n_part Chan partials: exact parallel formula.

    The means are averaged shifted by the first partial's mean m0: with |mean| >> std,
    sum c_i * m_i rounds at the magnitude of count * mean (2 ulps of the mean at -3e3 over
    300 elements), while the shifted terms c_i * (m_i - m0) are small and exact enough to
    leave the mean correctly rounded, as the walks' pivots do."""
    i = part_index(BLOCK_PART)
    pm = by_row(rmask) & (i < n_part)
    base = Part_ptr + (by_row(r) * n_part + i) * 3
    c_i = tl.load(base, mask=pm, other=0.0).to(ACC)
    m_i = tl.load(base + 1, mask=pm, other=0.0).to(ACC)
    q_i = tl.load(base + 2, mask=pm, other=0.0).to(ACC)
    cnt = sum_parts(c_i)
    m0 = sum_parts(tl.where(i == 0, m_i, 0.0))
    shifted = tl.where(pm, m_i - by_row(m0), 0.0)
    mean = m0 + div(sum_parts(c_i * shifted), tl.maximum(cnt, 1.0))
    d = tl.where(pm, m_i - by_row(mean), 0.0)
    return cnt, mean, sum_parts(q_i) + sum_parts(c_i * d * d)


@triton.jit
def row_norm_fwd(
    X_ptr,     # shape (N, G, Cg, S), strided
    Y_ptr,     # shape (N, G, Cg, S), same strides as X; rows at (ysN, ysG) if Y_STRIDED
    W_ptr,     # shape (G * Cg,), (Cg,) or (G,) by W_MODE
    B_ptr,     # shape like W
    Mean_ptr,  # shape (2, n_stats = N * G) saved mean, then 1 / sqrt(var + eps), fp32 (fp64
               # for fp64 input): one allocation a call, not two (host time, issue 24); in
               # PHASE 3 shape (G,) the given mean (stat_sN == 0) or (N * G,)
    Rstd_ptr,  # shape like Mean_ptr's in PHASE 3: the given variance; unused otherwise
    Part_ptr,  # shape (N * G, n_part, 3) Chan partials (count, mean, M2); PHASE 1/2 only
    RM_ptr,    # shape (G,) running_mean read when UPDATE_RUNNING
    RV_ptr,    # shape (G,) running_var read when UPDATE_RUNNING
    RMo_ptr,   # shape (G,) updated running_mean (RM_ptr itself for an in-place update)
    RVo_ptr,   # shape (G,) updated running_var
    NBT_ptr,   # shape () num_batches_tracked, already incremented; read when CUMULATIVE
    R_ptr,     # shape (N, G, Cg, S), same strides as X: the residual, read when HAS_RES/ADD_Y
    H_ptr,     # shape (N, G, Cg, S), same strides as X: h = x + residual, written when HAS_RES
    Scale_ptr,  # shape (N * G,) fp32 row scales written (DYNAMIC), or (1,) given; QUANT only
    Mask_ptr,  # shape (N, G, Cg, S), same strides as X, bool: z > 0, written when MASK
    G, Cg, S, sN, sG, sJ, sS,
    n_rb, nGB, nSB, T, chunk, SPLIT, n_part, ysN, ysG, stat_sN, n_stats, eps_hi, eps_lo, mom_hi,
    mom_lo,
    slope_hi, slope_lo,
    PHASE: tl.constexpr, CENTER: tl.constexpr, HAS_W: tl.constexpr,
    HAS_B: tl.constexpr, W_MODE: tl.constexpr, UPDATE_RUNNING: tl.constexpr,
    CUMULATIVE: tl.constexpr, RESIDENT: tl.constexpr, HAS_RES: tl.constexpr,
    CAST_XHAT: tl.constexpr, QUANT: tl.constexpr, DYNAMIC: tl.constexpr,
    Y_STRIDED: tl.constexpr, ACT: tl.constexpr, ADD_Y: tl.constexpr, MASK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_PART: tl.constexpr, EVEN: tl.constexpr, STAT_ROWS: tl.constexpr, I32: tl.constexpr,
    VEC: tl.constexpr,
):
    """y = act((x - mean) * rstd * w + b [+ residual]), statistics over each (n, g) row.

    The variance is never E[x^2] - E[x]^2.  A resident tile is reduced with two
    passes on-chip (shifted by the row's first element); a walk over several
    tiles keeps per-lane Welford accumulators and merges the lanes once with
    Chan's formula, in ACC precision."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    p = tl.program_id(1)
    t0, t1 = _chunk(T, chunk, PHASE)
    # LayerNorm/RMSNorm: every row block of this program shares one j range, so w
    # and b are loaded once, held in their own dtype -- up to 8192 elements: past
    # that, x, w and b together pass the 128 registers a thread has at 16 warps and
    # spill (16384 spilled even with bf16 w and b, perf/compile_check.py).
    if RESIDENT and W_MODE == 1 and BLOCK_G * BLOCK_J <= 8192:
        w_res, b_res = _load_params(W_ptr, B_ptr, 0, _tile_j(t0, nSB, BLOCK_J)[None, :, None], Cg,
                                    G, W_MODE, HAS_W, HAS_B, ACC, True)
    for rb in range(pid, n_rb, nprog):
        n, g0, rmask, r, rs = row_block(rb, nGB, G, stat_sN, BLOCK_G)
        # Tiles of at most 4096 elements: past that the loads held across the reductions
        # spilled (BatchNorm NCHW [8, 1024] fp32 with an activation, 16 warps, triton 3.9).
        EARLY: tl.constexpr = BLOCK_G * BLOCK_J * BLOCK_S <= 4096
        # A resident row's w and b are loaded beside x, not after the statistics: one DRAM
        # round trip for both -- by row (a value a row), or by channel of a row's j block
        # (W_MODE 0: a value per channel a thread holds; GroupNorm 2x1280x16x16 bf16 NCHW,
        # [64, 256] tiles: 4.6 -> 4.0 us, ../shared/tools/sass_model.py, triton 3.6).  Not by
        # element: a tile of parameters held across the reductions spilled (LayerNorm
        # 16384 fp32); nor across a merge pass's partials (BatchNorm NHWC [16, 256] fp32
        # tiles; perf/compile_check.py).  (Triton 3.9's schedule still sinks the by-channel
        # loads past the first reduction: 2 round trips there either way.)
        EARLY_W: tl.constexpr = (RESIDENT and (PHASE == 0 or PHASE == 3)
                                 and ((W_MODE == 2 and EARLY) or W_MODE == 0))
        if UPDATE_RUNNING and PHASE == 0 and EARLY:
            # Read with the row's first loads, not after its statistics: one DRAM round trip
            # less.  (Not in a merge pass, PHASE 2, as w and b below.)
            rm = tl.load(RM_ptr + rs, mask=rmask, other=0.0)
            rv = tl.load(RV_ptr + rs, mask=rmask, other=0.0)
        if RESIDENT:
            offs, mask, g, j = tile_offsets(t0, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                                            BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32, VEC)
            x = _load_h(X_ptr, R_ptr, H_ptr, offs, mask, ACC, HAS_RES)
            if EARLY_W:
                w, b = _load_params(W_ptr, B_ptr, g, j, Cg, G, W_MODE, HAS_W, HAS_B, ACC)
        if PHASE == 3:
            mean = tl.load(Mean_ptr + rs, mask=rmask, other=0.0).to(ACC)
            var = tl.load(Rstd_ptr + rs, mask=rmask, other=0.0).to(ACC)
            rstd = rsqrt(var + wide(var, eps_hi, eps_lo))
        elif PHASE == 2:
            # Merged by statistics row: a row, or STAT_ROWS rows' partials, whose stores
            # (PHASE 1, r * SPLIT + p) lie side by side, n_part = STAT_ROWS * SPLIT of them.
            cnt, mean, m2 = _merge_partials(Part_ptr, stat_row(r, STAT_ROWS), rmask, n_part, ACC,
                                            BLOCK_PART)
        else:
            # Shift by each row's first element (see tile_moments).
            rows = (g0 + tl.arange(0, BLOCK_G)).to(tl.int64)
            pmask = rmask & ((rows * 0 + T) > 0)  # an empty row (empty rank) has no element
            first = n.to(tl.int64) * sN + rows * sG
            pivot = _load_x(X_ptr, R_ptr, first, pmask, ACC, HAS_RES).to(ACC)
            # Elements a row has in this program's tiles: known from the geometry.
            cnt = tl.zeros_like(pivot) + (tiles_count(t1, nSB, Cg, S, BLOCK_J, BLOCK_S)
                                          - tiles_count(t0, nSB, Cg, S, BLOCK_J, BLOCK_S)).to(ACC)
            if RESIDENT:
                cnt, mean, m2 = tile_moments(x, mask, pivot, cnt, CENTER)
            else:
                # Per-lane shifted sums (tiles.shifted_moments): two FMAs an element, no
                # division, no count per lane.
                pivot3 = per_row(pivot)
                s1 = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
                s2 = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
                # Two tiles a step, both loaded before either is added: twice the bytes
                # in flight of a tile at a time, which alone left the walk latency-bound.
                # With EVEN every tile's mask is a constant true (dropped by the compiler),
                # so the pairs stop inside the chunk and an odd last tile is peeled;
                # otherwise the second tile of the last pair is masked off past the chunk.
                if EVEN:
                    stop = t1 - 1
                else:
                    stop = t1
                for t in range(t0, stop, 2):
                    xa, ma = _walk_tile(X_ptr, R_ptr, H_ptr, t, t1, n, g0, G, Cg, S, sN, sG, sJ,
                                        sS, nSB, ACC, HAS_RES, BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32,
                                        VEC)
                    xb, mb = _walk_tile(X_ptr, R_ptr, H_ptr, t + 1, t1, n, g0, G, Cg, S, sN, sG,
                                        sJ, sS, nSB, ACC, HAS_RES, BLOCK_G, BLOCK_J, BLOCK_S, EVEN,
                                        I32, VEC)
                    s1, s2 = add_shifted(s1, s2, xa, pivot3, ma, CENTER)
                    s1, s2 = add_shifted(s1, s2, xb, pivot3, mb, CENTER)
                if EVEN and (t1 - t0) % 2 == 1:
                    xa, ma = _walk_tile(X_ptr, R_ptr, H_ptr, t1 - 1, t1, n, g0, G, Cg, S, sN, sG,
                                        sJ, sS, nSB, ACC, HAS_RES, BLOCK_G, BLOCK_J, BLOCK_S, EVEN,
                                        I32, VEC)
                    s1, s2 = add_shifted(s1, s2, xa, pivot3, ma, CENTER)
                cnt, mean, m2 = shifted_moments(s1, s2, cnt, pivot, CENTER)
        if PHASE == 1:
            base = Part_ptr + (r * n_part + p) * 3
            tl.store(base, cnt, mask=rmask)
            tl.store(base + 1, mean, mask=rmask)
            tl.store(base + 2, m2, mask=rmask)
        else:
            if PHASE != 3:
                var = div(m2, tl.maximum(cnt, 1.0))
                rstd = rsqrt(var + wide(var, eps_hi, eps_lo))
                if p == 0:
                    # One store a statistics row: by the first of its STAT_ROWS rows.
                    srs = stat_row(rs, STAT_ROWS)
                    smask = rmask & ((g0 + tl.arange(0, BLOCK_G)) % STAT_ROWS == 0)
                    tl.store(Mean_ptr + srs, mean, mask=smask)
                    tl.store(Mean_ptr + (srs + n_stats), rstd, mask=smask)
                    if UPDATE_RUNNING:
                        if PHASE != 0 or not EARLY:
                            rm = None
                            rv = None
                        _update_running(RM_ptr, RV_ptr, RMo_ptr, RVo_ptr, NBT_ptr, rm, rv, rs,
                                        rmask, mean, cnt, m2, mom_hi, mom_lo, CUMULATIVE)
            mean3 = per_row(mean)
            rstd3 = per_row(rstd)
            if RESIDENT:
                if W_MODE == 1 and BLOCK_G * BLOCK_J <= 8192:
                    w, b = w_res.to(ACC), b_res.to(ACC)
                elif not EARLY_W:
                    w, b = _load_params(W_ptr, B_ptr, g, j, Cg, G, W_MODE, HAS_W, HAS_B, ACC)
                y = _affine((x - mean3) * rstd3, w, b, X_ptr, CAST_XHAT)
                y = _epilogue(y, R_ptr, Mask_ptr, offs, mask, slope_hi, slope_lo, X_ptr, ACT, ADD_Y,
                              MASK, ACC)
                if QUANT != 0:
                    y = quantize(y, row_scale(tile_amax(y, mask), Scale_ptr, rs, rmask,
                                                QUANT, DYNAMIC), QUANT)
                yoffs = out_offsets(offs, n, g, sN, sG, ysN, ysG, Y_STRIDED)
                tl.store(Y_ptr + yoffs, y.to(Y_ptr.dtype.element_ty), mask=mask)
            else:
                if HAS_RES:
                    # h of this row was written by the first walk, by other threads of
                    # this program: a barrier makes it visible before it is read back.
                    tl.debug_barrier()
                if QUANT != 0:
                    amax = tl.zeros([BLOCK_G], ACC)
                    if DYNAMIC:   # a walk for the row's amax, storing nothing
                        for t in range(t0, t1):
                            offs, mask, y = _y_tile(
                                H_ptr if HAS_RES else X_ptr, X_ptr, W_ptr, B_ptr, R_ptr, Mask_ptr,
                                t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB, ysN, ysG, mean3, rstd3,
                                slope_hi, slope_lo, Y_STRIDED, W_MODE, HAS_W, HAS_B, CAST_XHAT, 0,
                                False, False, ACC, BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32,
                                VEC)
                            amax = tl.maximum(amax, tile_amax(y, mask))
                    scale3 = row_scale(amax, Scale_ptr, rs, rmask, QUANT, DYNAMIC)
                for t in range(t0, t1):
                    offs, mask, y = _y_tile(H_ptr if HAS_RES else X_ptr, X_ptr, W_ptr, B_ptr,
                                            R_ptr, Mask_ptr, t, n, g0, G, Cg, S, sN, sG, sJ, sS,
                                            nSB, ysN, ysG, mean3, rstd3, slope_hi, slope_lo,
                                            Y_STRIDED, W_MODE, HAS_W, HAS_B, CAST_XHAT, ACT,
                                            ADD_Y, MASK, ACC, BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32,
                                            VEC)
                    if QUANT != 0:
                        y = quantize(y, scale3, QUANT)
                    tl.store(Y_ptr + offs, y.to(Y_ptr.dtype.element_ty), mask=mask)
