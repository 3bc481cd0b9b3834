"""Residual add fused into LayerNorm/RMSNorm: ``h = x + residual``, ``y = norm(h)``.

One kernel forward reads x and residual and writes y and h (4 passes over a row's
bytes, against 5 for the add then the norm), and one kernel backward (plus the
dw/db reduction) reads h, dy and the gradient of h and writes the gradient that x
and residual share (eager.AddNorm).  Eager calls run the kernels; traced calls
(torch.compile, export), torch.func transforms, forward-mode AD and autocast run
``x + residual`` then tritonnorm's norm (front.norm_rows), which torch differentiates.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import checks
from .activation import Act, compose, parse
from .composite import transforming
from .eager import add_norm
from .front import add, flat, norm_rows, offset_weight, rms_eps, rows, torch_path
from .paths import tracing
from .spec import LAYER, RMS


def _add_norm(spec, x: Tensor, residual: Tensor, normalized_shape, weight, bias, eps,
              act: Optional[Act] = None):
    checks.residual(x, residual)
    eps = checks.number(eps)
    if (torch_path(x) or tracing(x) or transforming()
            or (x.is_cuda and torch.is_autocast_enabled("cuda"))):
        h = add(x, residual)
        return compose(norm_rows(spec, h, normalized_shape, weight, bias, eps), None, act), h
    xv, view = rows(spec, x, normalized_shape, weight, bias)
    checks.devices(x, weight, bias, residual)
    r = residual.to(x.dtype).contiguous()   # xv is contiguous too: one set of strides
    if spec is RMS:
        eps = rms_eps(x, eps)
    return add_norm(xv, r, flat(weight), flat(bias), view, spec, eps, act)


def add_layer_norm(x: Tensor, residual: Tensor, normalized_shape: Union[int, Sequence[int]],
                   weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   eps: float = 1e-5, *, activation: Optional[str] = None,
                   negative_slope: float = 0.01, approximate: str = "none") -> Tuple[Tensor, Tensor]:
    """(act(layer_norm(h)), h) with h = x + residual, both in x's dtype: a transformer's
    pre-norm residual stream in one kernel each way.  x and residual ``(*, *normalized_shape)``
    of one shape (a RuntimeError otherwise; the residual is cast to x's dtype); h is rounded
    to x's dtype before the norm reads it, as torch's add rounds it.  Traced calls, torch.func
    transforms, forward-mode AD and CUDA autocast run the add then the norm."""
    return _add_norm(LAYER, x, residual, normalized_shape, weight, bias, eps,
                     parse(activation, negative_slope, approximate))


def add_rms_norm(x: Tensor, residual: Tensor, normalized_shape: Union[int, Sequence[int]],
                 weight: Optional[Tensor] = None, eps: Optional[float] = None, *,
                 offset: float = 0.0) -> Tuple[Tensor, Tensor]:
    """(rms_norm(h, weight=offset + weight), h) with h = x + residual, in x's dtype: as
    add_layer_norm, with RMSNorm (``offset``: Gemma's 1 + weight, summed in float32)."""
    return _add_norm(RMS, x, residual, normalized_shape,
                     offset_weight(weight, offset, normalized_shape, x), None, eps)
