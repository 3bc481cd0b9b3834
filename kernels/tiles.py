"""Tile addressing and statistics helpers shared by every kernel family.

Every norm sees its input as a strided 4-d view ``[N, G, Cg, S]``:

* ``N``  -- samples (1 for LayerNorm/RMSNorm, whose rows become groups),
* ``G``  -- reduction groups per sample (the rows that get their own mean/rstd),
* ``Cg`` -- channels per group (the ``j`` axis),
* ``S``  -- spatial positions (the ``s`` axis).

One row is one ``(n, g)`` pair and reduces over its ``Cg * S`` elements.  A
program works on ``BLOCK_G`` rows of one sample at a time, walking the row in
``[BLOCK_G, BLOCK_J, BLOCK_S]`` tiles numbered ``t = jb * nSB + sb``.  A split
reduction hands each of ``SPLIT`` programs a contiguous range of ``t``.
"""
import triton
import triton.language as tl

# tl.reshape(..., can_reorder=True) lets the compiler keep a tile's layout when it flattens
# axes for a sum (sum_tile).  Triton 3.9 deprecates the flag (3.10 removes it), so it is
# asked for only before 3.9; 3.9 without it still gains (sum_tile's numbers).
TRITON_VERSION = tuple(int(v) for v in triton.__version__.split(".")[:2])
_REORDER = tl.constexpr(TRITON_VERSION < (3, 9))

# A split merge loads [rows, partials] tiles from (row, partial)-ordered scratch, contiguous
# along neither axis, so each triton picks the layout.  As [rows, partials], triton 3.9
# gave every thread 16 of the 32 rows, whose statistics' IEEE divisions then ran 16 times
# a thread (82 MUFU, 160 registers): the BatchNorm 32x256x56x56 bf16 NHWC merge pass took
# 92.4 us under 3.9, 26.4 under 3.6.  As [partials, rows], 3.9 gives a row a lane (26.4)
# and 3.6 does what 3.9 did (90.2).  So each triton gets the orientation it lays out well
# (../shared/tools/sass_model.py).
_ROWS_LAST = tl.constexpr(TRITON_VERSION >= (3, 9))


@triton.jit
def part_index(BLOCK_PART: tl.constexpr):
    """The partial index of a split merge's [rows, partials] tile (see _ROWS_LAST)."""
    if _ROWS_LAST:
        return tl.arange(0, BLOCK_PART)[:, None]
    else:
        return tl.arange(0, BLOCK_PART)[None, :]


@triton.jit
def by_row(v):
    """A per-row vector on a split merge's tile (see part_index)."""
    if _ROWS_LAST:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def sum_parts(v):
    """Sum a split merge's tile over its partials -> per row."""
    if _ROWS_LAST:
        return tl.sum(v, axis=0)
    else:
        return tl.sum(v, axis=1)


@triton.jit
def row_block(rb, nGB, G, stat_sN, BLOCK_G: tl.constexpr):
    """Row block ``rb``: its sample n, first group g0, row mask, the rows' index
    into per-row buffers (r = n * G + g) and into the statistics (rs)."""
    n = rb // nGB
    g0 = (rb - n * nGB) * BLOCK_G
    rows = g0 + tl.arange(0, BLOCK_G)
    r = n.to(tl.int64) * G + rows
    rs = n.to(tl.int64) * stat_sN + rows
    return n, g0, rows < G, r, rs


@triton.jit
def stat_row(r, STAT_ROWS: tl.constexpr):
    """The index of rows r's statistics (and merged partials): r, or, where STAT_ROWS
    consecutive rows share them (a channels_last GroupNorm walked a row a channel, the Cg
    channels of a group: tritonnorm/spec.py, kernel_view), r // STAT_ROWS -- a division by
    a constant, once a row block."""
    if STAT_ROWS == 1:
        return r
    else:
        return r // STAT_ROWS


@triton.jit
def per_row(v):
    """A per-row vector ``v`` [BLOCK_G] as a [BLOCK_G, BLOCK_J, BLOCK_S] tile broadcasts
    it: [BLOCK_G, 1, 1], or a scalar for a one-row block (the value itself: a sum of one
    element).  Why the scalar: triton 3.6 lays the [1, 1, 1] broadcast of a reduction's
    result out so that every thread holds the whole tile, then converts that through
    shared memory (about 2,050 shared stores a thread per 4,096-element tile,
    ../shared/tools/sass_model.py); a scalar broadcasts in registers."""
    if v.shape[0] == 1:
        return tl.sum(v, axis=0)
    else:
        return v[:, None, None]


@triton.jit
def tile_offsets(t, n, g0, G, Cg, S,
                 sN, sG, sJ, sS, nSB,
                 BLOCK_G: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr,
                 EVEN: tl.constexpr = False, I32: tl.constexpr = False, VEC: tl.constexpr = 1):
    """Element offsets (int64, or int32 with I32), the in-bounds mask, and the g / j index
    tensors of tile ``t`` of the rows ``g0 .. g0 + BLOCK_G`` of sample ``n``.

    EVEN: the blocks divide G, Cg and S, so every tile is whole and the mask is a constant
    true, which the compiler drops: loads and stores go unpredicated, with no fill, and
    ptxas can issue a tile's loads together.

    I32: every offset a tile can form fits in int32 (the host checks, config.offsets_i32),
    and the tile's elements load one by one (runs of S that start off a 16-byte boundary):
    an offset then takes one register, not two (config.offsets_i32 says where it pays).

    VEC: Cg and the strides sN, sG, sS are multiples of VEC (the host checks, config.vector):
    written as (v // VEC) * VEC, which is v, the compiler can prove it, so runs of VEC
    elements along a contiguous j axis are aligned and masked alike, and each run loads as
    one vector.  Triton's own hint is divisibility by 16 only: a channels_last GroupNorm of
    40 channels a group (80 bytes bf16) loaded each element apart."""
    if VEC > 1:
        Cg = Cg // VEC * VEC
        sN = sN // VEC * VEC
        sG = sG // VEC * VEC
        sS = sS // VEC * VEC
    jb = t // nSB
    sb = t - jb * nSB
    g = g0 + tl.arange(0, BLOCK_G)[:, None, None]
    j = jb * BLOCK_J + tl.arange(0, BLOCK_J)[None, :, None]
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)[None, None, :]
    if EVEN:
        mask = tl.zeros([BLOCK_G, BLOCK_J, BLOCK_S], tl.int32) == 0   # folds to a constant
    else:
        mask = (g < G) & (j < Cg) & (s < S)
    if I32:
        offs = n * sN + g * sG + j * sJ + s * sS
    else:
        # int64 arithmetic throughout: numel may pass 2**31.
        offs = (n.to(tl.int64) * sN + g.to(tl.int64) * sG
                + j.to(tl.int64) * sJ + s.to(tl.int64) * sS)
    return offs, mask, g, j


@triton.jit
def out_offsets(offs, n, g, sN, sG, ysN, ysG, Y_STRIDED: tl.constexpr):
    """Offsets in the outputs (y, dy, dx) of the elements at ``offs`` in x: the same,
    unless x's rows are strided (LayerNorm/RMSNorm over the last dims of a view) and the
    outputs dense, with rows at (ysN, ysG) instead of (sN, sG)."""
    if Y_STRIDED:
        return offs + n.to(tl.int64) * (ysN - sN) + g.to(tl.int64) * (ysG - sG)
    else:
        return offs


@triton.jit
def sum_js(v):
    """Sum a [BLOCK_G, BLOCK_J, BLOCK_S] tile over its j and s axes -> [BLOCK_G]."""
    return tl.sum(tl.sum(v, axis=2), axis=1)


@triton.jit
def sum_tile(v):
    """sum_js for a resident tile, reduced once a row block: where both j and s are blocked
    (BatchNorm NCHW: samples x positions), one reduction over the flattened j*s axis, in
    any order (a sum does not care), not s then j -- that reduced a thread's values once
    per j it held and went through shared memory twice (BatchNorm 32x2048x7x7 bf16 forward,
    triton 3.6: 39 -> 25 us; 3.9, in order: 37 -> 31; ../shared/tools/sass_model.py).  Not
    in a walk's final sum: the reshape's layout reaches back into the loop and cost more
    there than it saved."""
    if v.shape[1] > 1 and v.shape[2] > 1:
        flat = tl.reshape(v, [v.shape[0], v.shape[1] * v.shape[2]], can_reorder=_REORDER)
        return tl.sum(flat, axis=1)
    else:
        return sum_js(v)


@triton.jit
def div(a, b):
    """a / b correctly rounded.  Triton's fp32 `/` is an approximate division
    (up to 2 ulp on a GPU, so even n / n can miss 1.0); statistics use the
    IEEE one.  fp64 division is already correctly rounded."""
    if a.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def wide(like, hi, lo):
    """A float argument sent as hi + lo fp32 parts (a GPU passes Python floats as fp32),
    in like's dtype: fp64 gets ~48 significant bits back, fp32 its correctly rounded value.
    eps = 1e-5 as fp32 alone is off by 2.5e-8 relative, which the backward of a nearly
    constant group amplifies past fp64 tolerances."""
    return (tl.zeros_like(like) + hi) + lo


@triton.jit
def rsqrt(v):
    """1 / sqrt(v), each step correctly rounded (not the approximate rsqrt)."""
    if v.dtype == tl.float64:
        return 1.0 / tl.sqrt(v)
    else:
        return tl.div_rn(tl.full(v.shape, 1.0, v.dtype), tl.sqrt_rn(v))


@triton.jit
def tile_moments(x, mask, pivot, cnt, CENTER: tl.constexpr):
    """(count, mean, M2) of one tile per row, two passes over the on-chip tile; cnt, the
    elements a row has in it, is given (tiles_count), not summed from the mask.

    The sums run over x - pivot (a value of the row): with |mean| >> std the
    shifted values are small, so the mean comes out correctly rounded.
    Without CENTER (RMSNorm) the mean stays 0 and M2 is the plain sum of
    squares: no cancellation can occur, so no shift is needed."""
    if CENTER:
        xs = tl.where(mask, x - pivot[:, None, None], 0.0)
        mean_s = div(sum_tile(xs), tl.maximum(cnt, 1.0))
        d = tl.where(mask, xs - mean_s[:, None, None], 0.0)
        m2 = sum_tile(d * d)
        mean = pivot + mean_s
    else:
        mean = cnt * 0.0
        m2 = sum_tile(x * x)
    return cnt, mean, m2


@triton.jit
def tiles_count(t, nSB, Cg, S, BLOCK_J: tl.constexpr, BLOCK_S: tl.constexpr):
    """Elements each row has in tiles [0, t) (the same for every row of the tensor): the
    j blocks before t // nSB whole, then t % nSB s blocks of the next; only the last block
    of each axis is partial.  A walk over [t0, t1) holds tiles_count(t1) - tiles_count(t0),
    taken once, not a division a tile."""
    t = tl.zeros([], tl.int32) + t   # t, nSB may come as Python ints (0, or a unit size)
    q32 = t // nSB                   # int32: an int64 division is a long subroutine
    rem = (t - q32 * nSB).to(tl.int64)
    q = q32.to(tl.int64)
    j_before = tl.minimum(q * BLOCK_J, Cg)
    j_next = tl.maximum(tl.minimum(Cg - q * BLOCK_J, BLOCK_J), 0)
    return j_before * S + j_next * tl.minimum(rem * BLOCK_S, S)


@triton.jit
def add_shifted(s1, s2, x, pivot3, mask, CENTER: tl.constexpr):
    """Add one tile to per-lane shifted sums, s1 += x - pivot and s2 += (x - pivot)^2, over
    the lanes in mask (x may be undefined outside it).  Without CENTER, s2 is the sum of
    squares."""
    if CENTER:
        d = tl.where(mask, x - pivot3, 0.0)
        return s1 + d, s2 + d * d
    else:
        x = tl.where(mask, x, 0.0)
        return s1, s2 + x * x


@triton.jit
def shifted_moments(s1, s2, c, pivot, CENTER: tl.constexpr):
    """Per-row (count, mean, M2) of a walk's per-lane shifted sums over c elements a row.

    With d = x - pivot (pivot a value of the row),  M2 = sum d^2 - (sum d)^2 / n,  whose
    rounding error is about eps * n * (var + (mean - pivot)^2): the shift by a value of the
    row keeps (mean - pivot)^2 of the order of the variance, so M2 keeps its precision where
    the unshifted E[x^2] - E[x]^2 would cancel (|mean| >> std).  The sums need no division
    and no count per lane, so the walk is two FMAs an element."""
    if CENTER:
        a = sum_js(s1)
        ms = div(a, tl.maximum(c, 1.0))
        return c, pivot + ms, tl.maximum(sum_js(s2) - a * ms, 0.0)
    else:
        return c, c * 0.0, sum_js(s2)
