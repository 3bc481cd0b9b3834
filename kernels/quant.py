"""Quantized output of the forward (QUANT): a row's absolute maximum, its scale, and the
rounding to int8 or fp8 e4m3 (tritonnorm/quant.py is the host side)."""
import triton
import triton.language as tl

from .tiles import div, per_row


@triton.jit
def tile_amax(y, mask):
    """[BLOCK_G] max |y| of each row of a tile."""
    return tl.max(tl.max(tl.where(mask, tl.abs(y), 0.0), axis=2), axis=1)


@triton.jit
def qmax(QUANT: tl.constexpr):
    """The largest value of the output format: int8 127, fp8 e4m3 448 (quant.QMAX)."""
    return 127.0 if QUANT == 1 else 448.0


@triton.jit
def row_scale(amax, Scale_ptr, rs, rmask, QUANT: tl.constexpr, DYNAMIC: tl.constexpr):
    """The scale of each row, shaped for the tile (tiles.per_row): amax / qmax in fp32,
    stored (DYNAMIC; rows with no value above 1e-12 get 1e-12 / qmax, so they quantize to
    0), or the given one."""
    if DYNAMIC:
        a = tl.maximum(amax.to(tl.float32), 1e-12)
        scale = div(a, tl.zeros_like(a) + qmax(QUANT))
        tl.store(Scale_ptr + rs, scale, mask=rmask)
    else:
        scale = tl.load(Scale_ptr + rs * 0).to(tl.float32)
    return per_row(scale)


@triton.jit
def quantize(y, scale3, QUANT: tl.constexpr):
    """y / scale clamped to +-qmax; int8 rounded half to even (as torch.round): adding
    and taking away 1.5 * 2^23 shifts the fraction out of an fp32 of magnitude < 2^22."""
    top = qmax(QUANT)
    v = div(y.to(tl.float32), scale3 + tl.zeros_like(y).to(tl.float32))
    v = tl.minimum(tl.maximum(v, -top), top)
    if QUANT == 1:
        v = (v + 12582912.0) - 12582912.0
    return v
