"""Forward and backward kernels of the norms that reduce inside one sample.

LayerNorm, RMSNorm, GroupNorm and InstanceNorm are one kernel pair; the
reduction spec on the host picks the view ``[N, G, Cg, S]`` (see tiles.py) and
the constexprs below carry the rest:

* ``CENTER``  -- subtract the mean (everything but RMSNorm),
* ``W_MODE``  -- how the affine parameters are indexed: 0 by channel
  ``g * Cg + j`` (GroupNorm/InstanceNorm), 1 by element ``j`` (LayerNorm/RMSNorm),
  2 by row ``g`` (BatchNorm, whose rows are channels),
* ``UPDATE_RUNNING`` -- fold the batch statistics into running_mean/var
  (BatchNorm), in place or into new tensors, with momentum, or 1 / num_batches_tracked read on the
  device when ``CUMULATIVE`` (momentum=None): no host sync,
* ``PHASE``   -- 0: one program owns whole rows; 1 and 2: a row is split over
  ``SPLIT`` programs (axis 1 of the grid); phase 1 writes per-program partials
  and phase 2 merges ``n_part`` of them (SPLIT, or the partials of every rank
  for SyncBatchNorm) and finishes the row chunk it owns; 3: the
  statistics are given (running statistics) and only the elementwise pass runs.

Statistics of row (n, g) live at ``n * stat_sN + g``: ``stat_sN = G`` for
per-row statistics, 0 for per-group constants shared by every sample.

Programs are persistent over row blocks: program ``pid`` takes row blocks
``pid, pid + nprog, ...`` so the host can bound the number of programs.
"""
import triton
import triton.language as tl

from .tiles import chan_merge, div, rsqrt, row_block, sum_js, tile_moments, tile_offsets


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
def _update_running(RM_ptr, RV_ptr, RMo_ptr, RVo_ptr, NBT_ptr, rs, rmask, mean, cnt, m2,
                    mom_hi, mom_lo, CUMULATIVE: tl.constexpr):
    """running = (1 - f) * running + f * batch, with the unbiased variance.

    Float arguments arrive as fp32, so momentum comes as hi + lo fp32 parts
    whose sum restores it to ~48 bits for fp64 statistics."""
    if CUMULATIVE:
        f = div(tl.zeros_like(mean) + 1.0, tl.load(NBT_ptr).to(mean.dtype))
    else:
        f = (tl.zeros_like(mean) + mom_hi) + mom_lo
    var = div(m2, tl.maximum(cnt - 1.0, 1.0))
    rm = tl.load(RM_ptr + rs, mask=rmask, other=0.0).to(mean.dtype)
    rv = tl.load(RV_ptr + rs, mask=rmask, other=0.0).to(mean.dtype)
    tl.store(RMo_ptr + rs, f * mean + (1.0 - f) * rm, mask=rmask)
    tl.store(RVo_ptr + rs, f * var + (1.0 - f) * rv, mask=rmask)


@triton.jit
def _chunk(T, chunk, PHASE: tl.constexpr):
    """The tile range [t0, t1) this program walks along its row."""
    if PHASE == 1 or PHASE == 2:
        t0 = tl.program_id(1) * chunk
        t1 = tl.minimum(t0 + chunk, T)
    else:
        t0 = 0
        t1 = T
    return t0, t1


@triton.jit
def row_norm_fwd(
    X_ptr,     # shape (N, G, Cg, S), strided
    Y_ptr,     # shape (N, G, Cg, S), same strides as X
    W_ptr,     # shape (G * Cg,), (Cg,) or (G,) by W_MODE
    B_ptr,     # shape like W
    Mean_ptr,  # shape (N * G,) saved mean, fp32 (fp64 for fp64 input); (G,) if stat_sN == 0
    Rstd_ptr,  # shape (N * G,) saved 1 / sqrt(var + eps)
    Part_ptr,  # shape (N * G, n_part, 3) Chan partials (count, mean, M2); PHASE 1/2 only
    RM_ptr,    # shape (G,) running_mean read when UPDATE_RUNNING
    RV_ptr,    # shape (G,) running_var read when UPDATE_RUNNING
    RMo_ptr,   # shape (G,) updated running_mean (RM_ptr itself for an in-place update)
    RVo_ptr,   # shape (G,) updated running_var
    NBT_ptr,   # shape () num_batches_tracked, already incremented; read when CUMULATIVE
    G, Cg, S, sN, sG, sJ, sS,
    n_rb, nGB, nSB, T, chunk, SPLIT, n_part, stat_sN, eps, mom_hi, mom_lo,
    PHASE: tl.constexpr, CENTER: tl.constexpr, HAS_W: tl.constexpr,
    HAS_B: tl.constexpr, W_MODE: tl.constexpr, UPDATE_RUNNING: tl.constexpr,
    CUMULATIVE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_PART: tl.constexpr,
):
    """y = (x - mean) * rstd * w + b, statistics over each (n, g) row.

    The variance is never E[x^2] - E[x]^2: each tile is reduced with two passes
    on-chip and tiles are combined with Chan's merge, in ACC precision."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    p = tl.program_id(1)
    t0, t1 = _chunk(T, chunk, PHASE)
    for rb in range(pid, n_rb, nprog):
        n, g0, rmask, r, rs = row_block(rb, nGB, G, stat_sN, BLOCK_G)
        if PHASE == 3:
            mean = tl.load(Mean_ptr + rs, mask=rmask, other=0.0).to(ACC)
            rstd = tl.load(Rstd_ptr + rs, mask=rmask, other=0.0).to(ACC)
        elif PHASE == 2:
            # Merge the n_part partials of these rows with the exact parallel formula.
            i = tl.arange(0, BLOCK_PART)[None, :]
            pm = rmask[:, None] & (i < n_part)
            base = Part_ptr + (r[:, None] * n_part + i) * 3
            c_i = tl.load(base, mask=pm, other=0.0).to(ACC)
            m_i = tl.load(base + 1, mask=pm, other=0.0).to(ACC)
            q_i = tl.load(base + 2, mask=pm, other=0.0).to(ACC)
            cnt = tl.sum(c_i, axis=1)
            mean = div(tl.sum(c_i * m_i, axis=1), tl.maximum(cnt, 1.0))
            d = tl.where(pm, m_i - mean[:, None], 0.0)
            m2 = tl.sum(q_i, axis=1) + tl.sum(c_i * d * d, axis=1)
        else:
            cnt = tl.zeros([BLOCK_G], ACC)
            mean = tl.zeros([BLOCK_G], ACC)
            m2 = tl.zeros([BLOCK_G], ACC)
            # Shift by each row's first element (see tile_moments).
            rows = (g0 + tl.arange(0, BLOCK_G)).to(tl.int64)
            pmask = rmask & ((rows * 0 + T) > 0)  # an empty row (empty rank) has no element
            pivot = tl.load(X_ptr + n.to(tl.int64) * sN + rows * sG, mask=pmask, other=0.0).to(ACC)
            for t in range(t0, t1):
                offs, mask, g, j = tile_offsets(t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                                                BLOCK_G, BLOCK_J, BLOCK_S)
                x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(ACC)
                bc, bm, bq = tile_moments(x, mask, pivot, CENTER)
                cnt, mean, m2 = chan_merge(cnt, mean, m2, bc, bm, bq)
        if PHASE == 1:
            base = Part_ptr + (r * n_part + p) * 3
            tl.store(base, cnt, mask=rmask)
            tl.store(base + 1, mean, mask=rmask)
            tl.store(base + 2, m2, mask=rmask)
        else:
            if PHASE != 3:
                rstd = rsqrt(div(m2, tl.maximum(cnt, 1.0)) + eps)
                if p == 0:
                    tl.store(Mean_ptr + rs, mean, mask=rmask)
                    tl.store(Rstd_ptr + rs, rstd, mask=rmask)
                    if UPDATE_RUNNING:
                        _update_running(RM_ptr, RV_ptr, RMo_ptr, RVo_ptr, NBT_ptr, rs, rmask,
                                        mean, cnt, m2, mom_hi, mom_lo, CUMULATIVE)
            for t in range(t0, t1):
                offs, mask, g, j = tile_offsets(t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                                                BLOCK_G, BLOCK_J, BLOCK_S)
                x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(ACC)
                y = (x - mean[:, None, None]) * rstd[:, None, None]
                widx, wmask = _param_index(g, j, Cg, G, W_MODE)
                if HAS_W:
                    y = y * tl.load(W_ptr + widx, mask=wmask, other=0.0).to(ACC)
                if HAS_B:
                    y = y + tl.load(B_ptr + widx, mask=wmask, other=0.0).to(ACC)
                tl.store(Y_ptr + offs, y.to(Y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def row_norm_bwd(
    X_ptr,     # shape (N, G, Cg, S), strided
    DY_ptr,    # shape (N, G, Cg, S), same strides as X
    DX_ptr,    # shape (N, G, Cg, S), same strides as X
    W_ptr,     # shape (G * Cg,), (Cg,) or (G,) by W_MODE
    Mean_ptr,  # shape (N * G,) saved by the forward; (G,) if stat_sN == 0
    Rstd_ptr,  # shape (N * G,)
    Part_ptr,  # shape (N * G, n_part, 2) partial (sum w*dy*xhat, sum w*dy); PHASE 1/2 only
    DWB_ptr,   # shape (nprog * SPLIT, 2, Cw) zeroed per-program partials of (dw, db)
    G, Cg, S, sN, sG, sJ, sS,
    n_rb, nGB, nSB, T, chunk, SPLIT, n_part, stat_sN, Cw, M,
    PHASE: tl.constexpr, CENTER: tl.constexpr, HAS_W: tl.constexpr,
    NEED_DWB: tl.constexpr, W_MODE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_PART: tl.constexpr,
):
    """Gradients of y = xhat * w + b over rows of M = Cg * S elements.

    With xhat = (x - mean) * rstd (CENTER) or x * rstd (RMS), and wdy = w * dy:

        dx = rstd * (wdy - mean(wdy) - xhat * mean(wdy * xhat))     (CENTER)
        dx = rstd * (wdy - xhat * mean(wdy * xhat))                  (RMS)
        dw[c] = sum over (n, s) of dy * xhat,   db[c] = sum of dy

    The two row means come from a first walk over the row (PHASE 0), from
    n_part partials (PHASE 2), or are 0 when the statistics are constants
    (PHASE 3: dx = rstd * wdy).  dw/db are accumulated per program into DWB,
    which that program alone reads and writes, and summed by a second kernel:
    no atomics, so the result is deterministic."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    p = tl.program_id(1)
    t0, t1 = _chunk(T, chunk, PHASE)
    dwb = DWB_ptr + (pid * SPLIT + p).to(tl.int64) * 2 * Cw
    for rb in range(pid, n_rb, nprog):
        n, g0, rmask, r, rs = row_block(rb, nGB, G, stat_sN, BLOCK_G)
        mean = tl.load(Mean_ptr + rs, mask=rmask, other=0.0).to(ACC)[:, None, None]
        rstd = tl.load(Rstd_ptr + rs, mask=rmask, other=0.0).to(ACC)[:, None, None]
        if PHASE == 3:
            # Constant statistics: nothing flows back through them.
            a1 = tl.zeros([BLOCK_G], ACC)
            a2 = tl.zeros([BLOCK_G], ACC)
        elif PHASE == 2:
            i = tl.arange(0, BLOCK_PART)[None, :]
            pm = rmask[:, None] & (i < n_part)
            base = Part_ptr + (r[:, None] * n_part + i) * 2
            a1 = tl.sum(tl.load(base, mask=pm, other=0.0).to(ACC), axis=1)
            a2 = tl.sum(tl.load(base + 1, mask=pm, other=0.0).to(ACC), axis=1)
        else:
            a1 = tl.zeros([BLOCK_G], ACC)
            a2 = tl.zeros([BLOCK_G], ACC)
            for t in range(t0, t1):
                offs, mask, g, j = tile_offsets(t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                                                BLOCK_G, BLOCK_J, BLOCK_S)
                x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(ACC)
                wdy = tl.load(DY_ptr + offs, mask=mask, other=0.0).to(ACC)
                if HAS_W:
                    widx, wmask = _param_index(g, j, Cg, G, W_MODE)
                    wdy = wdy * tl.load(W_ptr + widx, mask=wmask, other=0.0).to(ACC)
                xhat = (x - mean) * rstd if CENTER else x * rstd
                a1 += sum_js(wdy * xhat)
                a2 += sum_js(wdy)
        if PHASE == 1:
            base = Part_ptr + (r * n_part + p) * 2
            tl.store(base, a1, mask=rmask)
            tl.store(base + 1, a2, mask=rmask)
        else:
            c1 = div(a1, tl.zeros_like(a1) + M)[:, None, None]
            c2 = div(a2, tl.zeros_like(a2) + M)[:, None, None]
            for t in range(t0, t1):
                offs, mask, g, j = tile_offsets(t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                                                BLOCK_G, BLOCK_J, BLOCK_S)
                x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(ACC)
                dy = tl.load(DY_ptr + offs, mask=mask, other=0.0).to(ACC)
                widx, wmask = _param_index(g, j, Cg, G, W_MODE)
                wdy = dy
                if HAS_W:
                    wdy = dy * tl.load(W_ptr + widx, mask=wmask, other=0.0).to(ACC)
                xhat = (x - mean) * rstd if CENTER else x * rstd
                dx = wdy - xhat * c1
                if CENTER:
                    dx = dx - c2
                tl.store(DX_ptr + offs, (dx * rstd).to(DX_ptr.dtype.element_ty), mask=mask)
                if NEED_DWB:
                    _accumulate_dwb(dwb, Cw, dy * xhat, dy, widx, wmask, W_MODE)


@triton.jit
def _accumulate_dwb(dwb, Cw, dyx, dy, widx, wmask, W_MODE: tl.constexpr):
    """Add one tile's dw/db contribution into this program's own partial row."""
    pw = tl.sum(dyx, axis=2, keep_dims=True)
    pb = tl.sum(dy, axis=2, keep_dims=True)
    if W_MODE == 1:
        # LayerNorm/RMSNorm: every row of the tile shares the parameter index j.
        pw = tl.sum(pw, axis=0, keep_dims=True)
        pb = tl.sum(pb, axis=0, keep_dims=True)
    elif W_MODE == 2:
        # BatchNorm: one parameter per row.
        pw = tl.sum(pw, axis=1, keep_dims=True)
        pb = tl.sum(pb, axis=1, keep_dims=True)
    tl.store(dwb + widx, tl.load(dwb + widx, mask=wmask, other=0.0) + pw, mask=wmask)
    tl.store(dwb + Cw + widx, tl.load(dwb + Cw + widx, mask=wmask, other=0.0) + pb, mask=wmask)
