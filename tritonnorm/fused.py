"""Residual add fused into LayerNorm/RMSNorm: ``h = x + residual``, ``y = norm(h)``.

One kernel forward reads x and residual and writes y and h (4 passes over a row's
bytes, against 5 for the add then the norm), and one kernel backward (plus the
dw/db reduction) reads h, dy and the gradient of h and writes the gradient that x
and residual share.  Eager calls run the kernels; traced calls (torch.compile,
export), torch.func transforms, forward-mode AD and autocast run ``x + residual``
then tritonnorm's norm, which torch differentiates.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import checks, composite
from .activation import Act, compose, parse
from .dispatch import Epilogue, row_backward, row_forward
from .spec import LAYER, RMS, match_layout


class AddNorm(torch.autograd.Function):
    """(y, h) of the fused add + norm; ``call`` = (view, spec, eps, act): y = act(norm(h))."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, call):
        view, spec, eps, act = call
        h = torch.empty_like(x)
        y, mean, rstd = row_forward(x, view, spec, weight, bias, eps, residual=residual, h=h,
                                    act=act)
        ctx.set_materialize_grads(False)
        # h is an output: modifying it in place is caught.  The bias recomputes z for act.
        ctx.save_for_backward(h, weight, bias if act is not None else None)
        ctx.state = (call, mean, rstd, bias is not None)
        return y, h

    @staticmethod
    def backward(ctx, dy, dh):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "tritonnorm: add_layer_norm/add_rms_norm have no double backward; for "
                "gradients of gradients compute h = x + residual and call layer_norm/rms_norm")
        h, weight, bias = ctx.saved_tensors
        (view, spec, eps, act), mean, rstd, has_bias = ctx.state
        need = ctx.needs_input_grad
        if dy is None:   # only h reached the loss: both inputs get its gradient
            return dh if need[0] else None, dh if need[1] else None, None, None, None
        need_dw = weight is not None and need[2]
        need_db = has_bias and need[3]
        dres = None if dh is None else match_layout(dh, view)
        dx, dw, db = row_backward(h, match_layout(dy, view), view, spec, weight, mean, rstd,
                                  need_dw, need_db, eps=eps, dres=dres,
                                  epi=Epilogue.of(act, h, bias, False))
        return dx if need[0] else None, dx if need[1] else None, dw, db, None


def add(x: Tensor, residual: Tensor) -> Tensor:
    """h = x + residual in x's dtype, in torch ops: what the kernels' HAS_RES reads."""
    return (x + residual).to(x.dtype)


def _unfused(norm, x, residual, act, *args):
    h = add(x, residual)
    return compose(norm(h, *args), None, act), h


def _add_norm(spec, x: Tensor, residual: Tensor, normalized_shape, weight, bias, eps,
              act: Optional[Act] = None):
    from . import functional as TF
    from .ops import eager
    checks.residual(x, residual)
    norm = TF.layer_norm if spec is LAYER else TF.rms_norm
    args = (normalized_shape, weight, bias, eps) if spec is LAYER else (normalized_shape, weight, eps)
    if (TF._torch_path(x) or not eager(x) or composite.transforming()
            or (x.is_cuda and torch.is_autocast_enabled("cuda"))):
        return _unfused(norm, x, residual, act, *args)
    xv, view = TF._rows(spec, x, normalized_shape, weight, bias)
    checks.devices(x, weight, bias, residual)
    r = residual.to(x.dtype).contiguous()   # xv is contiguous too: one set of strides
    weight, bias = TF._flat(weight), TF._flat(bias)
    if spec is RMS:
        eps = TF.rms_eps(x, eps)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (xv, r, weight, bias)):
        return AddNorm.apply(xv, r, weight, bias, (view, spec, eps, act))
    h = torch.empty_like(xv)
    y, _, _ = row_forward(xv, view, spec, weight, bias, eps, residual=r, h=h, act=act)
    return y, h


def add_layer_norm(x: Tensor, residual: Tensor, normalized_shape: Union[int, Sequence[int]],
                   weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   eps: float = 1e-5, *, activation: Optional[str] = None,
                   negative_slope: float = 0.01, approximate: str = "none") -> Tuple[Tensor, Tensor]:
    """(act(layer_norm(h)), h) with h = x + residual, both in x's dtype."""
    return _add_norm(LAYER, x, residual, normalized_shape, weight, bias, eps,
                     parse(activation, negative_slope, approximate))


def add_rms_norm(x: Tensor, residual: Tensor, normalized_shape: Union[int, Sequence[int]],
                 weight: Optional[Tensor] = None, eps: Optional[float] = None, *,
                 offset: float = 0.0) -> Tuple[Tensor, Tensor]:
    """(rms_norm(h, weight=offset + weight), h) with h = x + residual, in x's dtype."""
    from .functional import offset_weight
    return _add_norm(RMS, x, residual, normalized_shape,
                     offset_weight(weight, offset, normalized_shape, x), None, eps)
