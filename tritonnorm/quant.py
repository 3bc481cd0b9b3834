"""LayerNorm/RMSNorm with quantized output: int8 or fp8 (e4m3) values and their scale,
the input of a quantized GEMM.  Inference only.

The norm's fp32 result y is divided by the scale, clamped to the format's range
(int8: +-127 after rounding half to even, as torch.round; fp8 e4m3: +-448, then
cast) and stored in the one kernel pass that computes y: y itself never reaches
memory.  ``scale=None`` makes a dynamic scale per row, amax(|y|) / qmax (fp32,
shape ``[*, 1]``: a 1 per normalised dim, so ``q * scale`` broadcasts); a given
scale is a static per-tensor one.  A residual fuses
h = x + residual in front, as add_rms_norm does, and h is returned too.  With no
autograd node to build, the eager call is one launch, straight to dispatch; traced
calls run the same numbers in torch ops (``_composite``).
"""
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks
from .dispatch import row_forward
from .front import add, flat, rms_eps, rows, torch_path
from .paths import tracing
from .spec import LAYER, RMS

QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
# Rows whose every value is 0 get this amax: a finite scale, and q = 0.
MIN_AMAX = 1e-12


def fp8_unsupported(device: torch.device) -> Optional[str]:
    """Why fp8 output cannot run on ``device``, or None.  Triton converts to e4m3
    in hardware from compute capability 8.9 (Ada, Hopper) on."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return f"fp8 (e4m3) output needs compute capability 8.9 or later; {name} has less"
    return None


def _check(x, weight, bias, residual, dtype, scale):
    if dtype not in QMAX:
        raise TypeError(f"dtype must be torch.int8 or torch.float8_e4m3fn, got {dtype}")
    if dtype == torch.float8_e4m3fn:
        why = fp8_unsupported(x.device)
        if why:
            raise RuntimeError(why)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, weight, bias, residual)):
        raise RuntimeError(
            "rms_norm_quant/layer_norm_quant are inference only: no gradient flows through "
            "a quantized output. Call them under torch.no_grad() or torch.inference_mode().")
    checks.residual(x, residual)
    if scale is not None:
        if not isinstance(scale, Tensor):
            scale = torch.tensor(float(scale), device=x.device)
        if scale.numel() != 1:
            raise ValueError("a given scale is per tensor: one element, got shape "
                             f"{list(scale.shape)}")
        scale = scale.reshape(1).to(torch.float32)
    return scale


def _scale_shape(x: Tensor, k: int):
    """x's shape with its k normalised dims as 1s: the scale broadcasts against q."""
    return (*x.shape[:x.dim() - k], *(1,) * k)


def quantize(y: Tensor, dtype: torch.dtype, scale: Optional[Tensor], k: int):
    """(q, scale) of an fp32 y whose rows are its trailing ``k`` dims, in torch ops."""
    rows = y.reshape(-1, math.prod(y.shape[y.dim() - k:]))
    if scale is None:
        amax = rows.abs().amax(dim=1, keepdim=True)
        scale = amax.clamp_min(MIN_AMAX) / QMAX[dtype]
        out_scale = scale.reshape(_scale_shape(y, k))
    else:
        out_scale = scale
    v = (rows / scale).clamp(-QMAX[dtype], QMAX[dtype])
    if dtype == torch.int8:
        v = torch.round(v)
    return v.to(dtype).reshape(y.shape), out_scale


def _composite(spec, x, k, normalized_shape, weight, bias, eps, residual, dtype, scale):
    """torch ops, for traced calls and torch's fallback: the kernels' numbers."""
    h = None
    if residual is not None:
        h = x = add(x, residual)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = None if weight is None else weight.to(acc)
    if spec is LAYER:
        y = F.layer_norm(x.to(acc), normalized_shape, w, None if bias is None else bias.to(acc), eps)
    else:
        y = F.rms_norm(x.to(acc), normalized_shape, w, eps)
    q, s = quantize(y.float(), dtype, scale, k)
    return (q, s) if h is None else (q, s, h)


def _norm_quant(spec, x, normalized_shape, weight, bias, eps, residual, dtype, scale):
    scale = _check(x, weight, bias, residual, dtype, scale)
    eps = checks.number(eps)
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if spec is RMS:
        eps = rms_eps(x, eps)
    if torch_path(x) or tracing(x):
        return _composite(spec, x, len(ns), ns, weight, bias, eps, residual, dtype, scale)
    xv, view = rows(spec, x, normalized_shape, weight, bias)
    checks.devices(x, weight, bias, residual)
    r = None if residual is None else residual.to(x.dtype).contiguous()
    h = None if r is None else torch.empty_like(xv)
    out_scale = scale if scale is not None else torch.empty(view.rows, dtype=torch.float32,
                                                            device=x.device)
    q, _ = row_forward(xv, view, spec, flat(weight), flat(bias), eps, residual=r, h=h,
                       quant=(dtype, out_scale, scale is None))
    if scale is None:
        out_scale = out_scale.reshape(_scale_shape(x, len(ns)))
    return (q, out_scale) if h is None else (q, out_scale, h)


def rms_norm_quant(x: Tensor, normalized_shape: Union[int, Sequence[int]],
                   weight: Optional[Tensor] = None, eps: Optional[float] = None, *,
                   residual: Optional[Tensor] = None, dtype: torch.dtype = torch.int8,
                   scale: Optional[Union[Tensor, float]] = None):
    """(q, scale), or (q, scale, h) with a residual: rms_norm quantized to ``dtype``
    (torch.int8, rounded half to even and clamped to +-127, or torch.float8_e4m3fn), y / scale
    with ``scale`` one float32 per row (amax(|y|) / qmax; x's shape with the normalised
    dims as 1s) or the one given.
    Inference only: a RuntimeError where a gradient is asked for."""
    return _norm_quant(RMS, x, normalized_shape, weight, None, eps, residual, dtype, scale)


def layer_norm_quant(x: Tensor, normalized_shape: Union[int, Sequence[int]],
                     weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                     eps: float = 1e-5, *, residual: Optional[Tensor] = None,
                     dtype: torch.dtype = torch.int8,
                     scale: Optional[Union[Tensor, float]] = None):
    """(q, scale), or (q, scale, h) with a residual: layer_norm quantized to ``dtype``, as
    rms_norm_quant."""
    return _norm_quant(LAYER, x, normalized_shape, weight, bias, eps, residual, dtype, scale)
