"""Activation epilogues of the norm kernels: y = act(norm(x) [+ residual]).

``ACT`` (constexpr, tritonnorm/activation.py keeps the table): 0 none, 1 relu,
2 silu, 3 gelu (erf), 4 gelu (tanh approximation), 5 leaky_relu with the slope
sent as hi + lo fp32 parts (tiles.wide).
Each follows the formula of torch's CUDA kernel, in the accumulation dtype.
"""
import triton
import triton.language as tl

from .tiles import wide


@triton.jit
def _tanh_gelu_inner(z):
    """sqrt(2 / pi) * (z + 0.044715 z^3): the tanh form's argument."""
    return 0.7978845608028654 * (z + 0.044715 * z * z * z)


@triton.jit
def _tanh(u):
    """tanh(u) = 1 - 2 / (exp(2u) + 1): +-1 at the ends, exp's overflow included."""
    return 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def act(z, slope_hi, slope_lo, ACT: tl.constexpr):
    """act(z) elementwise."""
    if ACT == 1:
        return tl.where(z > 0, z, 0.0)
    elif ACT == 2:
        return z * _sigmoid(z)
    elif ACT == 3:
        return 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == 4:
        return 0.5 * z * (1.0 + _tanh(_tanh_gelu_inner(z)))
    elif ACT == 5:
        return tl.where(z > 0, z, z * wide(z, slope_hi, slope_lo))
    else:
        return z


@triton.jit
def act_grad(z, slope_hi, slope_lo, ACT: tl.constexpr):
    """d act / dz at z (relu's and leaky_relu's at 0: torch's, the left side)."""
    if ACT == 1:
        return tl.where(z > 0, 1.0, 0.0).to(z.dtype)
    elif ACT == 2:
        s = _sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    elif ACT == 3:
        cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
        return cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327   # 1 / sqrt(2 pi)
    elif ACT == 4:
        t = _tanh(_tanh_gelu_inner(z))
        dt = (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)
        return 0.5 * (1.0 + t) + 0.5 * z * dt
    elif ACT == 5:
        return tl.where(z > 0, 1.0, wide(z, slope_hi, slope_lo))
    else:
        return tl.full(z.shape, 1.0, z.dtype)


@triton.jit
def mask_grad(pos, slope_hi, slope_lo, ACT: tl.constexpr, ACC: tl.constexpr):
    """relu's / leaky_relu's derivative from the saved sign mask (z > 0)."""
    one = tl.full(pos.shape, 1.0, ACC)
    if ACT == 5:
        return tl.where(pos, one, wide(one, slope_hi, slope_lo))
    else:
        return tl.where(pos, one, 0.0)
