"""The backward's row sums and dw/db (row_norm_bwd.py): row sums merged from partials
(plain, or weighted by each row's w where STAT_ROWS rows share statistics), dw/db summed
from unweighted partials (DWB_PARTS) and stored to a program's scratch slot or, with one
program a parameter, to dw and db themselves."""
import triton
import triton.language as tl

from .tiles import by_row, div, part_index, per_row, sum_parts, sum_tile


@triton.jit
def _store_dwb(DWB_ptr, DB_ptr, slot, Cw, idx, mask, pw, pb, DWB_FINAL: tl.constexpr):
    """A program's dw/db sums over its rows: to its slot of the scratch, or, with DWB_FINAL
    (the scratch would have one slot: every parameter is summed by one program), straight
    to dw and db in their dtype, with no column sum after."""
    if DWB_FINAL:
        tl.store(DWB_ptr + idx, pw.to(DWB_ptr.dtype.element_ty), mask=mask)
        tl.store(DB_ptr + idx, pb.to(DB_ptr.dtype.element_ty), mask=mask)
    else:
        base = DWB_ptr + slot.to(tl.int64) * 2 * Cw
        tl.store(base + idx, pw, mask=mask)
        tl.store(base + Cw + idx, pb, mask=mask)


@triton.jit
def _channels(g0, jb, Cg, G, BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr):
    """[BLOCK_G, BLOCK_J] channel indices g * Cg + j of j block jb, and their mask."""
    g = g0 + tl.arange(0, BLOCK_G)[:, None]
    j = jb * BLOCK_J + tl.arange(0, BLOCK_J)[None, :]
    return g * Cg + j, (g < G) & (j < Cg)


@triton.jit
def _given_sums(Part_ptr, r, rmask, n_part, PHASE: tl.constexpr, ACC: tl.constexpr,
                BLOCK_G: tl.constexpr, BLOCK_PART: tl.constexpr):
    """Row sums (sum w*dy*xhat, sum w*dy) from n_part partials (PHASE 2), or 0
    for constant statistics (PHASE 3), through which nothing flows back."""
    if PHASE == 2:
        i = tl.arange(0, BLOCK_PART)[None, :]
        pm = rmask[:, None] & (i < n_part)
        base = Part_ptr + (r[:, None] * n_part + i) * 2
        a1 = tl.sum(tl.load(base, mask=pm, other=0.0).to(ACC), axis=1)
        a2 = tl.sum(tl.load(base + 1, mask=pm, other=0.0).to(ACC), axis=1)
    else:
        a1 = tl.zeros([BLOCK_G], ACC)
        a2 = tl.zeros([BLOCK_G], ACC)
    return a1, a2


@triton.jit
def _part_w(w, DWB_PARTS: tl.constexpr):
    """The weight of a partials pass's row sums: w, or 1 with DWB_PARTS, whose partials
    are sum dz*xhat and sum dz -- dw and db of a row's parameter once merged."""
    if DWB_PARTS:
        return 1.0
    else:
        return w


@triton.jit
def _param_sums(dz, xhat, W_MODE: tl.constexpr):
    """A resident tile's sums (sum dz*xhat, sum dz) for its own parameters: a row's
    (W_MODE 2, [BLOCK_G]) or each of its channels' (W_MODE 3, [BLOCK_G, BLOCK_J])."""
    if W_MODE == 2:
        return sum_tile(dz * xhat), sum_tile(dz)
    else:
        return tl.sum(dz * xhat, axis=2), tl.sum(dz, axis=2)


@triton.jit
def _weighted_param_sums(w, pw, pb, W_MODE: tl.constexpr):
    """The row sums (sum w*dz*xhat, sum w*dz) from _param_sums' pw and pb and the tile's w
    ([BLOCK_G, 1, 1] or [BLOCK_G, BLOCK_J, 1]): each parameter's sums times its weight,
    added up -- where the tile reductions would run twice more over every element.  (A
    GroupNorm NCHW backward of [64, 256] tiles, 16 warps: 58 -> 48 shuffles, 2 DRAM round
    trips -> 1 and its 24-byte spill gone, 5.4 -> 4.6 us; ../shared/tools/sass_model.py,
    triton 3.6.)"""
    if W_MODE == 2:
        wr = tl.sum(tl.sum(w, axis=2), axis=1)
        return wr * pw, wr * pb
    else:
        wc = tl.sum(w, axis=2)
        return tl.sum(wc * pw, axis=1), tl.sum(wc * pb, axis=1)


@triton.jit
def _weighted_sums(Part_ptr, W_ptr, sr, g0, rmask, n_part, SPLIT, HAS_W: tl.constexpr,
                   ACC: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_PART: tl.constexpr,
                   STAT_ROWS: tl.constexpr):
    """DWB_PARTS where STAT_ROWS rows share statistics (a channels_last GroupNorm walked a row
    a channel): the group's n_part = STAT_ROWS * SPLIT partials are its channels' unweighted
    sums, so each is weighted by its channel's w as they are merged -> (sum w*dz*xhat,
    sum w*dz) of the group, as _given_sums gives them without DWB_PARTS.  Partial i of the
    group belongs to its row i // SPLIT (PHASE 1 stores row r's at r * SPLIT + p)."""
    i = part_index(BLOCK_PART)   # laid out as the forward's merge (tiles._ROWS_LAST)
    pm = by_row(rmask) & (i < n_part)
    base = Part_ptr + (by_row(sr) * n_part + i) * 2
    s1 = tl.load(base, mask=pm, other=0.0).to(ACC)
    s2 = tl.load(base + 1, mask=pm, other=0.0).to(ACC)
    if HAS_W:
        first = (g0 + tl.arange(0, BLOCK_G)) // STAT_ROWS * STAT_ROWS
        w = tl.load(W_ptr + (by_row(first) + i // SPLIT), mask=pm, other=0.0).to(ACC)
        s1 = s1 * w
        s2 = s2 * w
    return sum_parts(s1), sum_parts(s2)


@triton.jit
def _dwb_from_parts(DWB_ptr, DB_ptr, Part_ptr, a1, a2, n, g0, G, rmask, p, n_rb, nGB, SPLIT,
                    Cw, ACC: tl.constexpr, BLOCK_G: tl.constexpr, DWB_NP: tl.constexpr):
    """DWB_PARTS: a row's unweighted partials (sum dz*xhat, sum dz) are dw and db of its one
    parameter once summed.  With one sample and rows of their own statistics (BatchNorm's
    channels; DWB_NP 0) those are the merged sums a1, a2 themselves; otherwise (N samples,
    or STAT_ROWS rows merged into their group's sums) parameter g's are the N * SPLIT
    partials of rows n * G + g, loaded as one [BLOCK_G, DWB_NP] tile and summed in a fixed
    order.  Stored once, by the row block's first split program (of sample 0)."""
    # A predicated store, not a branch on p: ptxas split the partials' loads around the
    # branch and issued them one round trip each (BatchNorm 32x256x56x56 bf16 NHWC merge
    # pass: 31 DRAM round trips, 75 us against 42; ../shared/tools/sass_model.py).
    if DWB_NP == 0:
        first = (tl.arange(0, BLOCK_G) * 0 + p) == 0
        dw = a1
        db = a2
    else:
        first = (tl.arange(0, BLOCK_G) * 0 + (p + n)) == 0   # p == 0 and n == 0
        q = tl.arange(0, DWB_NP)
        nq = q // SPLIT
        rows = nq.to(tl.int64)[None, :] * G + (g0 + tl.arange(0, BLOCK_G))[:, None]
        pm = (rmask & first)[:, None] & (q < (n_rb // nGB) * SPLIT)[None, :]
        base = Part_ptr + (rows * SPLIT + (q - nq * SPLIT)[None, :]) * 2
        dw = tl.sum(tl.load(base, mask=pm, other=0.0).to(ACC), axis=1)
        db = tl.sum(tl.load(base + 1, mask=pm, other=0.0).to(ACC), axis=1)
    _store_dwb(DWB_ptr, DB_ptr, 0, Cw, g0 + tl.arange(0, BLOCK_G), rmask & first, dw, db, True)


@triton.jit
def _row_means(a1, a2, M):
    """mean(w*dy*xhat) and mean(w*dy) of rows of M elements, shaped for the tile.  Divided
    once on the tile's layout, where a thread holds the rows of one vector at most: in the
    merged sums' layout triton 3.9 gave a thread all 32 rows, 64 IEEE divisions (BatchNorm
    32x256x56x56 bf16 NHWC merge pass, 4 warps: 2960 -> 2277 instructions,
    ../shared/tools/sass_model.py)."""
    c1 = per_row(a1)
    c2 = per_row(a2)
    return div(c1, tl.zeros_like(c1) + M), div(c2, tl.zeros_like(c2) + M)
