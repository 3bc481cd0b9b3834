"""Backward kernel of every norm (the forward and the constexprs: row_norm.py).

dw/db never take a read-modify-write trip through memory: each program keeps
them in registers and stores each parameter's sum once, into a scratch slot no
other program writes, which column_sum (reduce.py) then adds up in a fixed
order -- no atomics, so results are deterministic.  The slot of a program:

* W_MODE 1 (LayerNorm/RMSNorm): its persistent index ``pid``; every row block it
  walks shares the same j range, so sums run across rows in registers;
* W_MODE 2 (BatchNorm; rows of one channel): ``n * SPLIT + p``; each row is one sum --
  or, split (DWB_PARTS), no slot: the merge pass sums dw/db from the partials;
* W_MODE 3 (by channel, as 0, where one j block holds all of a row's channels):
  ``n * SPLIT + p``; the channels' sums are stored once, after the walk;
* W_MODE 0 (GroupNorm/InstanceNorm): ``n * SPLIT + p``; each channel of the row
  block gets its sum when the walk leaves that channel's j block.
"""
import triton
import triton.language as tl

from .activation import act_grad, mask_grad
from .bwd_sums import (_channels, _dwb_from_parts, _given_sums, _param_sums, _part_w, _row_means,
                       _store_dwb, _weighted_param_sums, _weighted_sums)
from .row_norm import _chunk, _load, _load_params, _tile_j
from .tiles import (out_offsets, per_row, row_block, rsqrt, stat_row, sum_js, sum_tile,
                    tile_offsets, wide)


@triton.jit
def _grad_z(dy, x, w, b, offs, mask, X_ptr, DY_ptr, R_ptr, Mask_ptr, mean, rstd, slope_hi,
            slope_lo, CENTER: tl.constexpr, ACT: tl.constexpr, ADD_Y: tl.constexpr,
            MASK: tl.constexpr, ACC: tl.constexpr):
    """dz = dy * act'(z), rounded to dy's dtype as torch's activation backward rounds it:
    the gradient that reaches the norm's output z (and the residual, with ADD_Y).  z is
    recomputed from x, the row statistics, w, b (and the residual), or, with MASK, its
    sign is read back."""
    if ACT == 0:
        return dy
    if MASK:
        d = mask_grad(tl.load(Mask_ptr + offs, mask=mask, other=0) != 0, slope_hi, slope_lo, ACT,
                      ACC)
    else:
        xhat = (x - mean) * rstd if CENTER else x * rstd
        z = (xhat * w + b).to(X_ptr.dtype.element_ty).to(ACC)
        if ADD_Y:
            r = tl.load(R_ptr + offs, mask=mask, other=0.0).to(ACC)
            z = (z + r).to(X_ptr.dtype.element_ty).to(ACC)
        d = act_grad(z, slope_hi, slope_lo, ACT)
    return (dy * d).to(DY_ptr.dtype.element_ty).to(ACC)


@triton.jit
def _tile_xdy(X_ptr, DY_ptr, R_ptr, Mask_ptr, t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB, ysN, ysG,
              w, b, mean, rstd, slope_hi, slope_lo, Y_STRIDED: tl.constexpr, CENTER: tl.constexpr,
              ACT: tl.constexpr, ADD_Y: tl.constexpr, MASK: tl.constexpr, ACC: tl.constexpr,
              BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
              EVEN: tl.constexpr, I32: tl.constexpr,
              VEC: tl.constexpr):
    """Tile t of the rows, whose weight and bias are w and b: its offsets in dy and dx
    (x's, unless Y_STRIDED), mask, g and j, and x and dz (dy through the activation,
    _grad_z) in ACC."""
    offs, mask, g, j = tile_offsets(t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                                    BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32, VEC)
    # 0 outside the tensor: a zero dy takes those lanes out of every sum.  (Loading them
    # unfilled and zeroing after, as the forward's walk does, made the channels_last
    # GroupNorm backward's scalar loads serialise further: sass_model, 75 -> 228 us.)
    x = _load(X_ptr, offs, mask).to(ACC)
    yoffs = out_offsets(offs, n, g, sN, sG, ysN, ysG, Y_STRIDED)
    dy = _load(DY_ptr, yoffs, mask).to(ACC)
    dz = _grad_z(dy, x, w, b, offs, mask, X_ptr, DY_ptr, R_ptr, Mask_ptr, mean, rstd, slope_hi,
                 slope_lo, CENTER, ACT, ADD_Y, MASK, ACC)
    return yoffs, mask, g, j, x, dz


@triton.jit
def _tile(X_ptr, DY_ptr, W_ptr, B_ptr, R_ptr, Mask_ptr, t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
          ysN, ysG, mean, rstd, slope_hi, slope_lo, Y_STRIDED: tl.constexpr, CENTER: tl.constexpr,
          W_MODE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
          ADD_Y: tl.constexpr, MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_G: tl.constexpr,
          BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr, EVEN: tl.constexpr, I32: tl.constexpr,
          VEC: tl.constexpr):
    """_tile_xdy with the tile's weight and bias loaded, and the weight w in ACC."""
    w, b = _tile_params(W_ptr, B_ptr, t, g0, Cg, G, nSB, W_MODE, HAS_W, HAS_B, ACC, BLOCK_G,
                        BLOCK_J)
    offs, mask, g, j, x, dy = _tile_xdy(X_ptr, DY_ptr, R_ptr, Mask_ptr, t, n, g0, G, Cg, S, sN,
                                        sG, sJ, sS, nSB, ysN, ysG, w, b, mean, rstd, slope_hi,
                                        slope_lo, Y_STRIDED, CENTER, ACT, ADD_Y, MASK, ACC,
                                        BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32, VEC)
    return offs, mask, g, j, x, dy, w


@triton.jit
def _tile_params(W_ptr, B_ptr, t, g0, Cg, G, nSB, W_MODE: tl.constexpr, HAS_W: tl.constexpr,
                 HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK_G: tl.constexpr,
                 BLOCK_J: tl.constexpr):
    """w and b (HAS_B: only an activation's backward reads the bias) of tile t, shaped to
    broadcast against it."""
    g = g0 + tl.arange(0, BLOCK_G)[:, None, None]
    j = _tile_j(t, nSB, BLOCK_J)[None, :, None]
    return _load_params(W_ptr, B_ptr, g, j, Cg, G, W_MODE, HAS_W, HAS_B, ACC)


@triton.jit
def _store_dz(DR_ptr, offs, mask, dz, ADD_Y: tl.constexpr):
    """The first walk over a row (the partials pass, PHASE 1, or the sums walk of PHASE 0)
    of a residual epilogue stores dz, the residual's gradient, as it goes: the last walk
    then reads dz back as its dy (with ACT 0), not dy and the residual (or the mask)
    again."""
    if ADD_Y:
        tl.store(DR_ptr + offs, dz.to(DR_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row_stats(Mean_ptr, Rstd_ptr, rb, nGB, G, stat_sN, n_stats, eps_hi, eps_lo,
               PHASE: tl.constexpr, ACC: tl.constexpr, BLOCK_G: tl.constexpr,
               CENTER: tl.constexpr, STAT_ROWS: tl.constexpr):
    """Row block rb (see row_block) and its saved mean (0 without CENTER: RMSNorm's is not
    read) and rstd, shaped for the tile; rows that share statistics (STAT_ROWS) read their
    group's (tiles.stat_row)."""
    n, g0, rmask, r, rs = row_block(rb, nGB, G, stat_sN, BLOCK_G)
    rs = stat_row(rs, STAT_ROWS)
    if CENTER:
        mean = per_row(tl.load(Mean_ptr + rs, mask=rmask, other=0.0).to(ACC))
    else:
        mean = per_row(tl.zeros([BLOCK_G], ACC))
    if PHASE == 3:   # the given variance
        v = tl.load(Rstd_ptr + rs, mask=rmask, other=0.0).to(ACC)
        v = rsqrt(v + wide(v, eps_hi, eps_lo))
    else:   # the saved rstd, n_stats past the mean: offset first, so no 64-bit base is held
            # (Mean_ptr + n_stats spilled 8 bytes in a split merge, triton 3.6, compile_check)
        v = tl.load(Mean_ptr + (rs + n_stats), mask=rmask, other=0.0).to(ACC)
    return n, g0, rmask, r, rs, mean, per_row(v)


@triton.jit
def _dx(x, dy, w, mean, rstd, c1, c2, CENTER: tl.constexpr, DWB_PARTS: tl.constexpr = False):
    """(dx, xhat) of one tile; mean/rstd/c1/c2 per row, shaped for the tile (per_row).  With
    DWB_PARTS, c1 and c2 are unweighted (mean(dy * xhat), mean(dy)) and w, one a row,
    multiplies the whole: w * (dy - xhat * c1 - c2) = wdy - xhat * mean(wdy * xhat) - mean(wdy)."""
    xhat = (x - mean) * rstd if CENTER else x * rstd
    if DWB_PARTS:
        dx = dy - xhat * c1
        if CENTER:
            dx = dx - c2
        return dx * (w * rstd), xhat
    dx = w * dy - xhat * c1
    if CENTER:
        dx = dx - c2
    return dx * rstd, xhat


@triton.jit
def _store_dx(DX_ptr, DH_ptr, DR_ptr, offs, mask, dx, dz, HAS_DRES: tl.constexpr,
              ADD_Y: tl.constexpr):
    """Store dx, plus the gradient of h with HAS_DRES, summed before the one rounding;
    with ADD_Y, dz is the residual's gradient."""
    if HAS_DRES:
        dx += tl.load(DH_ptr + offs, mask=mask, other=0.0).to(dx.dtype)
    tl.store(DX_ptr + offs, dx.to(DX_ptr.dtype.element_ty), mask=mask)
    if ADD_Y:
        tl.store(DR_ptr + offs, dz.to(DR_ptr.dtype.element_ty), mask=mask)


@triton.jit
def row_norm_bwd(
    X_ptr,     # shape (N, G, Cg, S), strided
    DY_ptr,    # shape (N, G, Cg, S), same strides as X; rows at (ysN, ysG) if Y_STRIDED
    DX_ptr,    # shape (N, G, Cg, S), laid out like DY
    W_ptr,     # shape (G * Cg,), (Cg,) or (G,) by W_MODE
    Mean_ptr,  # shape (2, n_stats = N * G): the mean and rstd the forward saved; in PHASE 3 (G,)
               # the given mean (stat_sN == 0) or (N * G,)
    Rstd_ptr,  # shape like Mean_ptr's in PHASE 3: the given variance; unused otherwise
    Part_ptr,  # shape (N * G, n_part, 2) partial (sum w*dy*xhat, sum w*dy); PHASE 1/2 only
    DWB_ptr,   # shape (slots, 2, Cw) per-program (dw, db) sums, every element written once;
               # with DWB_FINAL, shape (Cw,): dw itself
    DB_ptr,    # shape (Cw,): db, written with DWB_FINAL
    DH_ptr,    # shape (N, G, Cg, S), laid out like DY: gradient of h, read when HAS_DRES
    B_ptr,     # shape like W: the bias, read to recompute z when ACT (and not MASK)
    R_ptr,     # shape (N, G, Cg, S), laid out like X: the residual, read likewise with ADD_Y
    Mask_ptr,  # shape (N, G, Cg, S), laid out like X, bool: z > 0, read when MASK
    DR_ptr,    # shape (N, G, Cg, S), laid out like X: the residual's gradient dz (ADD_Y)
    G, Cg, S, sN, sG, sJ, sS,
    n_rb, nGB, nSB, T, chunk, SPLIT, n_part, ysN, ysG, stat_sN, n_stats, Cw, M, eps_hi, eps_lo,
    slope_hi, slope_lo,
    PHASE: tl.constexpr, CENTER: tl.constexpr, HAS_W: tl.constexpr,
    NEED_DWB: tl.constexpr, W_MODE: tl.constexpr, RESIDENT: tl.constexpr,
    TILE_OUTER: tl.constexpr, HAS_DRES: tl.constexpr, Y_STRIDED: tl.constexpr,
    HAS_B: tl.constexpr, ACT: tl.constexpr, ADD_Y: tl.constexpr, MASK: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_PART: tl.constexpr, EVEN: tl.constexpr, DWB_FINAL: tl.constexpr,
    DWB_PARTS: tl.constexpr, STAT_ROWS: tl.constexpr, OWN_G: tl.constexpr, I32: tl.constexpr,
    DWB_NP: tl.constexpr, VEC: tl.constexpr,
):
    """Gradients of y = xhat * w + b over rows of M = Cg * S elements.

    With xhat = (x - mean) * rstd (CENTER) or x * rstd (RMS), and wdy = w * dy:

        dx = rstd * (wdy - mean(wdy) - xhat * mean(wdy * xhat))     (CENTER)
        dx = rstd * (wdy - xhat * mean(wdy * xhat))                  (RMS)
        dw[c] = sum over (n, s) of dy * xhat,   db[c] = sum of dy

    The two row means come from the resident tile or a first walk over the row
    (PHASE 0), from n_part partials (PHASE 2), or are 0 when the statistics are
    constants (PHASE 3: dx = rstd * wdy).  STAT_ROWS rows sharing statistics (row_norm.py)
    read them at stat_row and merge all their rows' partials: the two means then run over
    the group, M = STAT_ROWS * S elements.  DWB_PARTS (split rows that each own a parameter:
    BatchNorm's, InstanceNorm's, a channels_last GroupNorm's walked a row a channel): the
    partials are unweighted, sum dz*xhat and sum dz, so summed over a parameter's rows --
    the merged sums of its one row (DWB_NP 0), or its rows' N * SPLIT partials (a
    [BLOCK_G, DWB_NP] tile) -- they are its dw and db, stored by the merge pass with no
    column sum after; the row sums are those times w (STAT_ROWS rows: each row's partials
    weighted by its w as the group's are merged, _weighted_sums).  OWN_G (rows unsplit, one
    j block of parameters a row, W_MODE 2 or 3, and one program a block of G: nprog = nGB):
    a program's row blocks are one g block of every sample, so its dw/db sums over all of
    them, in registers, are final -- stored once, in a fixed order, with no column sum after.
    PARAMS_FIRST (a resident row of PHASE 0 whose parameters are by row or by channel): each
    parameter's sums (sum dz*xhat, sum dz) are reduced first, and the row sums are their
    total weighted by w, since sum w*dz*xhat = sum_c w_c * sum_(s in c) dz*xhat.
    TILE_OUTER (LayerNorm/RMSNorm rows longer than a tile, row sums given) swaps the loops,
    tiles outside and rows inside, so a tile's dw/db sum over all of the program's rows stays
    in registers.

    Fused residual (HAS_DRES): the forward read h = x + residual and also returned
    h, so x and residual both get dx + dh, dh being the gradient that reached h
    directly; X is h here.

    Activation epilogue (ACT): the forward returned act(z), z = xhat * w + b [+ residual]
    (ADD_Y), so every dy above is dz = dy * act'(z) (_grad_z), and dz is also the
    residual's gradient, stored beside dx -- or, where rows are split, by the partials
    pass, whose dz the merge pass then takes as its dy (_store_dz)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    p = tl.program_id(1)
    t0, t1 = _chunk(T, chunk, PHASE)
    # A resident row's dw/db sums for its own parameters (by row or by channel) are taken
    # first; its row sums are those weighted by w, not two more tile reductions.
    PARAMS_FIRST: tl.constexpr = (RESIDENT and PHASE == 0 and NEED_DWB and not DWB_PARTS
                                  and (W_MODE == 2 or W_MODE == 3))
    if TILE_OUTER:
        for t in range(t0, t1):
            jr = _tile_j(t, nSB, BLOCK_J)
            w, b = _tile_params(W_ptr, B_ptr, t, 0, Cg, G, nSB, W_MODE, HAS_W, HAS_B, ACC,
                                BLOCK_G, BLOCK_J)
            lw = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
            lb = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
            for rb in range(pid, n_rb, nprog):
                n, g0, rmask, r, rs, mean, rstd = _row_stats(
                    Mean_ptr, Rstd_ptr, rb, nGB, G, stat_sN, n_stats, eps_hi, eps_lo, PHASE, ACC,
                    BLOCK_G, CENTER, STAT_ROWS)
                a1, a2 = _given_sums(Part_ptr, stat_row(r, STAT_ROWS), rmask, n_part, PHASE, ACC,
                                     BLOCK_G, BLOCK_PART)
                offs, mask, g, j, x, dy = _tile_xdy(
                    X_ptr, DY_ptr, R_ptr, Mask_ptr, t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB, ysN,
                    ysG, w, b, mean, rstd, slope_hi, slope_lo, Y_STRIDED, CENTER, ACT, ADD_Y,
                    MASK, ACC, BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32, VEC)
                c1, c2 = _row_means(a1, a2, M)
                dx, xhat = _dx(x, dy, w, mean, rstd, c1, c2, CENTER)
                _store_dx(DX_ptr, DH_ptr, DR_ptr, offs, mask, dx, dy, HAS_DRES, ADD_Y)
                lw += dy * xhat
                lb += dy
            if NEED_DWB:
                _store_dwb(DWB_ptr, DB_ptr, pid, Cw, jr, jr < Cg,
                           tl.sum(tl.sum(lw, axis=2), axis=0),
                           tl.sum(tl.sum(lb, axis=2), axis=0), DWB_FINAL)
    else:
        if RESIDENT and W_MODE == 1:
            jr = _tile_j(t0, nSB, BLOCK_J)
            w, b = _tile_params(W_ptr, B_ptr, t0, 0, Cg, G, nSB, W_MODE, HAS_W, HAS_B, ACC,
                                BLOCK_G, BLOCK_J)
            rw = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
            rbias = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
        if OWN_G and NEED_DWB:
            tl.static_assert(W_MODE == 2 or W_MODE == 3, "OWN_G: a row's parameters in one block")
            if W_MODE == 2:
                ow = tl.zeros([BLOCK_G], ACC)
                ob = tl.zeros([BLOCK_G], ACC)
            else:
                ow = tl.zeros([BLOCK_G, BLOCK_J], ACC)
                ob = tl.zeros([BLOCK_G, BLOCK_J], ACC)
        for rb in range(pid, n_rb, nprog):
            n, g0, rmask, r, rs, mean, rstd = _row_stats(Mean_ptr, Rstd_ptr, rb, nGB, G, stat_sN,
                                                         n_stats, eps_hi, eps_lo, PHASE, ACC,
                                                         BLOCK_G, CENTER, STAT_ROWS)
            if RESIDENT:
                if W_MODE == 1:   # w was loaded once for all of the program's rows
                    offs, mask, g, j, x, dy = _tile_xdy(
                        X_ptr, DY_ptr, R_ptr, Mask_ptr, t0, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB,
                        ysN, ysG, w, b, mean, rstd, slope_hi, slope_lo, Y_STRIDED, CENTER, ACT,
                        ADD_Y, MASK, ACC, BLOCK_G, BLOCK_J, BLOCK_S, EVEN, I32, VEC)
                else:
                    offs, mask, g, j, x, dy, w = _tile(
                        X_ptr, DY_ptr, W_ptr, B_ptr, R_ptr, Mask_ptr, t0, n, g0, G, Cg, S, sN, sG,
                        sJ, sS, nSB, ysN, ysG, mean, rstd, slope_hi, slope_lo, Y_STRIDED, CENTER,
                        W_MODE, HAS_W, HAS_B, ACT, ADD_Y, MASK, ACC, BLOCK_G, BLOCK_J, BLOCK_S,
                        EVEN, I32, VEC)
                xhat = (x - mean) * rstd if CENTER else x * rstd
            if PHASE == 2 or PHASE == 3:
                # A statistics row's partials: its own, or its STAT_ROWS rows', side by side.
                if DWB_PARTS and DWB_FINAL and DWB_NP > 0:
                    # Ahead of the merge's loads, so ptxas issues both in one round trip
                    # (after them: GroupNorm 2x320x64x64 bf16 NHWC merge pass, 7 round trips,
                    # 11.1 us against 8.1, triton 3.6, ../shared/tools/sass_model.py).
                    _dwb_from_parts(DWB_ptr, DB_ptr, Part_ptr, 0.0, 0.0, n, g0, G, rmask, p,
                                    n_rb, nGB, SPLIT, Cw, ACC, BLOCK_G, DWB_NP)
                if DWB_PARTS and STAT_ROWS > 1:
                    a1, a2 = _weighted_sums(Part_ptr, W_ptr, stat_row(r, STAT_ROWS), g0, rmask,
                                            n_part, SPLIT, HAS_W, ACC, BLOCK_G, BLOCK_PART,
                                            STAT_ROWS)
                else:
                    a1, a2 = _given_sums(Part_ptr, stat_row(r, STAT_ROWS), rmask, n_part, PHASE,
                                         ACC, BLOCK_G, BLOCK_PART)
                if DWB_PARTS and DWB_FINAL and DWB_NP == 0:
                    _dwb_from_parts(DWB_ptr, DB_ptr, Part_ptr, a1, a2, n, g0, G, rmask, p, n_rb,
                                    nGB, SPLIT, Cw, ACC, BLOCK_G, DWB_NP)
            elif RESIDENT:
                if PARAMS_FIRST:
                    pw, pb = _param_sums(dy, xhat, W_MODE)
                    a1, a2 = _weighted_param_sums(w, pw, pb, W_MODE)
                else:
                    a1 = sum_tile(_part_w(w, DWB_PARTS) * dy * xhat)
                    a2 = sum_tile(_part_w(w, DWB_PARTS) * dy)
                if PHASE == 1:
                    _store_dz(DR_ptr, offs, mask, dy, ADD_Y)
            else:
                l1 = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
                l2 = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
                for t in range(t0, t1):
                    offs, mask, g, j, xt, dy, w = _tile(
                        X_ptr, DY_ptr, W_ptr, B_ptr, R_ptr, Mask_ptr, t, n, g0, G, Cg, S, sN, sG,
                        sJ, sS, nSB, ysN, ysG, mean, rstd, slope_hi, slope_lo, Y_STRIDED, CENTER,
                        W_MODE, HAS_W, HAS_B, ACT, ADD_Y, MASK, ACC, BLOCK_G, BLOCK_J, BLOCK_S,
                        EVEN, I32, VEC)
                    l1 += _part_w(w, DWB_PARTS) * dy * ((xt - mean) * rstd if CENTER else xt * rstd)
                    l2 += _part_w(w, DWB_PARTS) * dy
                    _store_dz(DR_ptr, offs, mask, dy, ADD_Y)
                a1 = sum_js(l1)
                a2 = sum_js(l2)
            if PHASE == 1:
                base = Part_ptr + (r * n_part + p) * 2
                tl.store(base, a1, mask=rmask)
                tl.store(base + 1, a2, mask=rmask)
            else:
                c1, c2 = _row_means(a1, a2, M)
                if RESIDENT:
                    dx, xhat = _dx(x, dy, w, mean, rstd, c1, c2, CENTER,
                                   DWB_PARTS and STAT_ROWS == 1)
                    _store_dx(DX_ptr, DH_ptr, DR_ptr, offs, mask, dx, dy, HAS_DRES, ADD_Y)
                    if NEED_DWB:
                        if W_MODE == 1:
                            rw += dy * xhat
                            rbias += dy
                        else:
                            if not PARAMS_FIRST:
                                pw, pb = _param_sums(dy, xhat, W_MODE)
                            if OWN_G:
                                ow += pw
                                ob += pb
                            elif W_MODE == 2:
                                _store_dwb(DWB_ptr, DB_ptr, n * SPLIT + p, Cw,
                                           g0 + tl.arange(0, BLOCK_G), rmask, pw, pb, DWB_FINAL)
                            else:
                                cidx, cmask = _channels(g0, t0 // nSB, Cg, G, BLOCK_G, BLOCK_J)
                                _store_dwb(DWB_ptr, DB_ptr, n * SPLIT + p, Cw, cidx, cmask, pw,
                                           pb, DWB_FINAL)
                else:
                    lw = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
                    lb = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
                    if PHASE == 0 and ADD_Y:
                        # dz of this row was stored by the sums walk, by other threads of
                        # this program: a barrier makes it visible before it is read back.
                        tl.debug_barrier()
                    for t in range(t0, t1):
                        offs, mask, g, j, xt, dy, w = _tile(
                            X_ptr, DR_ptr if PHASE == 0 and ADD_Y else DY_ptr, W_ptr, B_ptr, R_ptr,
                            Mask_ptr, t, n, g0, G, Cg, S, sN, sG, sJ, sS, nSB, ysN, ysG, mean,
                            rstd, slope_hi, slope_lo, Y_STRIDED, CENTER, W_MODE, HAS_W, HAS_B,
                            0 if PHASE == 0 and ADD_Y else ACT, ADD_Y, MASK, ACC, BLOCK_G,
                            BLOCK_J, BLOCK_S, EVEN, I32, VEC)
                        dx, xhat = _dx(xt, dy, w, mean, rstd, c1, c2, CENTER,
                                       DWB_PARTS and STAT_ROWS == 1)
                        _store_dx(DX_ptr, DH_ptr, DR_ptr, offs, mask, dx, dy, HAS_DRES,
                                  ADD_Y and PHASE != 0)
                        if NEED_DWB:
                            lw += dy * xhat
                            lb += dy
                            if W_MODE == 0:
                                # Leaving this j block (or the chunk): its channels are done.
                                sb = t - (t // nSB) * nSB
                                if (sb == nSB - 1) | (t == t1 - 1):
                                    cidx, cmask = _channels(g0, t // nSB, Cg, G, BLOCK_G, BLOCK_J)
                                    _store_dwb(DWB_ptr, DB_ptr, n * SPLIT + p, Cw, cidx, cmask,
                                               tl.sum(lw, axis=2), tl.sum(lb, axis=2), DWB_FINAL)
                                    lw = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
                                    lb = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], ACC)
                    if NEED_DWB and (W_MODE == 2 or W_MODE == 3):
                        if W_MODE == 2:   # per row
                            pw = sum_js(lw)
                            pb = sum_js(lb)
                        else:             # every tile's channels are j block 0's
                            pw = tl.sum(lw, axis=2)
                            pb = tl.sum(lb, axis=2)
                        if OWN_G:
                            ow += pw
                            ob += pb
                        elif W_MODE == 2:
                            _store_dwb(DWB_ptr, DB_ptr, n * SPLIT + p, Cw,
                                       g0 + tl.arange(0, BLOCK_G), rmask, pw, pb, DWB_FINAL)
                        else:
                            cidx, cmask = _channels(g0, 0, Cg, G, BLOCK_G, BLOCK_J)
                            _store_dwb(DWB_ptr, DB_ptr, n * SPLIT + p, Cw, cidx, cmask, pw, pb,
                                       DWB_FINAL)
                if NEED_DWB and W_MODE == 0 and SPLIT > 1:
                    # Channels outside this program's chunk get their zero from it.
                    for jb in range(0, T // nSB):
                        if (jb < t0 // nSB) | (jb > (t1 - 1) // nSB):
                            cidx, cmask = _channels(g0, jb, Cg, G, BLOCK_G, BLOCK_J)
                            zero = tl.zeros([BLOCK_G, BLOCK_J], ACC)
                            _store_dwb(DWB_ptr, DB_ptr, n * SPLIT + p, Cw, cidx, cmask, zero,
                                       zero, DWB_FINAL)
        if OWN_G and NEED_DWB:
            # This program's g block (row blocks pid, pid + nGB, ...: one of every sample);
            # the rows are unsplit (the host's rule), p == 0 guards it all the same.
            first = (tl.arange(0, BLOCK_G) * 0 + p) == 0
            if W_MODE == 2:
                rows = pid * BLOCK_G + tl.arange(0, BLOCK_G)
                _store_dwb(DWB_ptr, DB_ptr, 0, Cw, rows, (rows < G) & first, ow, ob, DWB_FINAL)
            else:
                cidx, cmask = _channels(pid * BLOCK_G, 0, Cg, G, BLOCK_G, BLOCK_J)
                _store_dwb(DWB_ptr, DB_ptr, 0, Cw, cidx, cmask & first[:, None], ow, ob,
                           DWB_FINAL)
        if RESIDENT and W_MODE == 1 and NEED_DWB:
            _store_dwb(DWB_ptr, DB_ptr, pid, Cw, jr, jr < Cg, tl.sum(tl.sum(rw, axis=2), axis=0),
                       tl.sum(tl.sum(rbias, axis=2), axis=0), DWB_FINAL)
