"""torch.nn.functional-compatible entry points.

Each function takes torch's signature and defaults.  Inputs that Triton cannot
run on (a CPU tensor without the interpreter), empty inputs and calls recorded by
torch.jit.trace (TorchScript cannot call Triton) go to torch.nn.functional unchanged.
"""
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks, config
from ._runtime import use_triton
from .activation import Act, compose, parse
from .fused import add_layer_norm, add_rms_norm
from .ops import row_norm
from .quant import layer_norm_quant, rms_norm_quant
from .spec import (BATCH, GROUP, INSTANCE, LAYER, RMS, RMS_CAST, batch_layout, channel_layout,
                   match_layout, row_layout)

__all__ = ["add_layer_norm", "add_rms_norm", "batch_norm", "group_norm", "instance_norm",
           "layer_norm", "layer_norm_quant", "rms_norm", "rms_norm_quant"]

# Ops that CUDA autocast runs in fp32 (torch's autocast op reference).
_AUTOCAST_FP32 = {"layer_norm", "group_norm"}


def _autocast(name: str, *tensors):
    """Cast like torch's CUDA autocast would for op ``name``."""
    x = tensors[0]
    if name in _AUTOCAST_FP32 and x.is_cuda and torch.is_autocast_enabled("cuda"):
        return tuple(t.float() if t is not None and t.is_floating_point() else t for t in tensors)
    return tensors


# Checked call signatures -> their views (LayerNorm/RMSNorm, GroupNorm).
_VIEWS = config.memo()


def _jit_tracing() -> bool:
    # torch._C._is_tracing is the cheap call, but dynamo cannot trace it: ask it only
    # outside torch.compile (where is_compiling() folds to a constant).
    return not torch.compiler.is_compiling() and torch._C._is_tracing()


def _torch_path(x: Tensor) -> bool:
    """Calls that torch.nn.functional serves: see the module docstring."""
    return _jit_tracing() or not use_triton(x) or x.numel() == 0


# Per row norm: torch's names for it (in its dtype error, in its argument errors) and
# whether torch's parameter-dtype rule applies (RMSNorm takes any mix).
_ROW_NORMS = {LAYER: ("LayerNormKernelImpl", "layer_norm", True),
              RMS: ("rms_norm", "rms_norm", False), RMS_CAST: ("rms_norm", "rms_norm", False)}


def _rows(spec, x: Tensor, normalized_shape, weight, bias, strided: bool = False):
    """(x made contiguous, its RowView) after the checks of checks.normalized; with
    ``strided``, x itself where its rows can be read in place (spec.row_layout).  The
    checks and the view are memoised on what they read, so a steady-state call pays a
    dict lookup, not the checks."""
    # Only ints in the key: (3.0,) == (3,) as a dict key, yet torch refuses the float.
    t = type(normalized_shape)
    hashable = t is int or (t is tuple and (
        type(normalized_shape[0]) is int if len(normalized_shape) == 1
        else all(type(d) is int for d in normalized_shape)))
    hit = None
    if hashable:
        key = (spec, x.shape, x.stride() if strided else None, x.dtype, normalized_shape,
               _meta(weight), _meta(bias))
        hit = _VIEWS.get(key)
    if hit is None:
        impl, fn, dtype_rule = _ROW_NORMS[spec]
        checks.float_input(impl, x)
        if dtype_rule:
            checks.param_dtypes(x, weight, bias)
        k = math.prod(checks.normalized(fn, x, normalized_shape, weight, bias))
        xv, view = row_layout(x, k, strided)
        if hashable:
            config.remember(_VIEWS, key, (view, xv is x))
        return xv, view
    view, as_is = hit   # as_is holds for x's strides, keyed only when strided
    return (x if as_is and strided else x.contiguous()), view


def _meta(p: Optional[Tensor]):
    return None if p is None else (p.shape, p.dtype)


def _group_view(x: Tensor, num_groups: int, weight, bias):
    """(view, dense) of a GroupNorm call after its checks, memoised like _rows;
    ``dense``: x is addressed as it is (else it is made contiguous first)."""
    checks.integer("group_norm", "num_groups", 2, num_groups)   # before the key: 2.0 == 2
    key = (GROUP, x.shape, x.stride(), x.dtype, num_groups, _meta(weight), _meta(bias))
    hit = _VIEWS.get(key)
    if hit is not None:
        return hit
    if x.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {x.dim()}")
    c = x.shape[1]
    if num_groups <= 0 or c % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {list(x.shape)} and num_groups={num_groups}")
    checks.vector("weight", weight, c, x)
    checks.vector("bias", bias, c, x)
    checks.float_input("GroupNormKernelImpl", x)
    checks.param_dtypes(x, weight, bias)
    xv, view = channel_layout(x, num_groups)
    return config.remember(_VIEWS, key, (view, xv is x))


def _flat(p: Optional[Tensor]) -> Optional[Tensor]:
    """A parameter as the dense vector the kernels index (a copy only if strided)."""
    if p is None or (p.dim() == 1 and p.is_contiguous()):
        return p
    return p.reshape(-1).contiguous()


def layer_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5, *, activation: Optional[str] = None,
               negative_slope: float = 0.01, approximate: str = "none") -> Tensor:
    """torch's layer_norm; ``activation`` (see tritonnorm.activation) is applied to its
    output in the same kernel."""
    act = parse(activation, negative_slope, approximate)
    if _torch_path(input):
        return compose(F.layer_norm(input, normalized_shape, weight, bias, eps), None, act)
    xv, view = _rows(LAYER, input, normalized_shape, weight, bias, strided=True)
    checks.devices(input, weight, bias)
    if input.is_cuda:
        xv, weight, bias = _autocast("layer_norm", xv, weight, bias)
    return row_norm(xv, _flat(weight), _flat(bias), view, LAYER, eps, act=act)   # input's shape


def _epilogue(x: Tensor, view, residual: Optional[Tensor]):
    """(post, outside): the residual as the kernels read it (x's dtype, device and
    strides), or, where it differs from x in dtype or device, ``outside``: the
    epilogue then runs in torch ops after the kernel, with torch's type promotion."""
    if residual is None:
        return None, False
    checks.residual(x, residual)
    if residual.dtype != x.dtype or residual.device != x.device:
        return None, True
    return match_layout(residual, view), False


def _norm_epilogue(x, weight, bias, view, spec, eps, residual, act: Optional[Act], **kw):
    """row_norm with the epilogue act(norm(x) + residual), fused where it can be."""
    if residual is None:
        return row_norm(x, weight, bias, view, spec, eps, act=act, **kw)
    post, outside = _epilogue(x, view, residual)
    if outside:
        out = row_norm(x, weight, bias, view, spec, eps, **kw)
        if kw.get("with_stats"):
            return (compose(out[0], residual, act),) + out[1:]
        return compose(out, residual, act)
    return row_norm(x, weight, bias, view, spec, eps, act=act, post=post, **kw)


def offset_weight(weight: Optional[Tensor], offset: float, normalized_shape, x: Tensor):
    """The weight of y = xhat * (offset + weight) (Gemma's RMSNorm uses offset 1): the
    sum is taken in fp32 (fp64 for fp64), as Gemma takes it, and autograd carries the
    gradient through it to ``weight`` unchanged."""
    if not offset:
        return weight
    acc = torch.float64 if torch.float64 in (x.dtype, getattr(weight, "dtype", None)) else torch.float32
    if weight is None:
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        return torch.full(shape, float(offset), dtype=acc, device=x.device)
    return weight.to(acc) + offset


def rms_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
             weight: Optional[Tensor] = None, eps: Optional[float] = None, *,
             offset: float = 0.0) -> Tensor:
    """torch's rms_norm; ``offset`` scales by (offset + weight) instead of weight."""
    weight = offset_weight(weight, offset, normalized_shape, input)
    if _torch_path(input):
        return F.rms_norm(input, normalized_shape, weight, eps)
    return rms_norm_of(RMS, input, normalized_shape, weight, eps)


def rms_norm_of(spec, input: Tensor, normalized_shape, weight: Optional[Tensor],
                eps: Optional[float]) -> Tensor:
    """rms_norm with the kernels, for RMS or RMS_CAST (tritonnorm.hf)."""
    xv, view = _rows(spec, input, normalized_shape, weight, None, strided=True)
    checks.devices(input, weight)
    return row_norm(xv, _flat(weight), None, view, spec, rms_eps(input, eps))


def rms_eps(x: Tensor, eps: Optional[float]) -> float:
    """rms_norm's eps; None is torch's default, the machine epsilon of the accumulation
    type (fp32 below fp64)."""
    if eps is not None:
        return eps
    return torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).eps


def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               residual: Optional[Tensor] = None, activation: Optional[str] = None,
               negative_slope: float = 0.01, approximate: str = "none") -> Tensor:
    """torch's group_norm; act(group_norm(input) + residual) with the epilogue keywords."""
    act = parse(activation, negative_slope, approximate)
    if _torch_path(input):
        return compose(F.group_norm(input, num_groups, weight, bias, eps), residual, act)
    view, dense = _group_view(input, num_groups, weight, bias)
    checks.devices(input, weight, bias)
    x, weight, bias = _autocast("group_norm", input, weight, bias)
    return _norm_epilogue(x if dense else x.contiguous(), _flat(weight), _flat(bias), view,
                          GROUP, eps, residual, act)


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *,
                  residual: Optional[Tensor] = None, activation: Optional[str] = None,
                  negative_slope: float = 0.01, approximate: str = "none") -> Tensor:
    """torch's instance_norm; act(instance_norm(input) + residual) with the epilogue
    keywords."""
    act = parse(activation, negative_slope, approximate)
    if _jit_tracing() or not use_triton(input):
        return compose(F.instance_norm(input, running_mean, running_var, weight, bias,
                                       use_input_stats, momentum, eps), residual, act)
    if use_input_stats and math.prod(input.shape[2:]) == 1:   # torch's first check
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {input.size()}")
    if input.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
    if input.numel() == 0:
        return compose(_empty_instance_norm(input, weight, bias), residual, act)
    c = input.shape[1]
    checks.vector("weight", weight, c, input)
    checks.vector("bias", bias, c, input)
    checks.float_input("instance_norm", input)
    checks.param_dtypes(input, weight, bias, running_mean, running_var)
    checks.devices(input, weight, bias, running_mean, running_var)
    weight, bias = _flat(weight), _flat(bias)
    xv, view = channel_layout(input, c)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise RuntimeError(
                "Expected running_mean and running_var to be defined when use_input_stats is false")
        checks.vector("running_mean", running_mean, c, input)
        checks.vector("running_var", running_var, c, input)
        stats = (running_mean.detach().contiguous(), running_var.detach().contiguous())
        return _norm_epilogue(xv, weight, bias, view, INSTANCE, eps, residual, act, stats=stats)
    y, mean, rstd = _norm_epilogue(xv, weight, bias, view, INSTANCE, eps, residual, act,
                                   with_stats=True)
    if running_mean is not None or running_var is not None:
        _update_running(running_mean, running_var, mean, rstd, view.S, c, momentum, eps)
    return y


def _empty_instance_norm(x, weight, bias):
    """An empty batch gives an empty output (torch raises IndexError here), with
    zero gradients for the affine parameters."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = x * 1
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


@torch.no_grad()
def _update_running(running_mean, running_var, mean, rstd, s, c, momentum, eps):
    """torch.instance_norm's update: the momentum average of the per-instance
    statistics averaged over the batch, with the unbiased variance."""
    if running_mean is not None:
        batch_mean = mean.view(-1, c).mean(0)
        running_mean.mul_(1 - momentum).add_(batch_mean.to(running_mean.dtype), alpha=momentum)
    if running_var is not None:
        var = (rstd.pow(-2) - eps).clamp_min(0) * (s / (s - 1))
        running_var.mul_(1 - momentum).add_(var.view(-1, c).mean(0).to(running_var.dtype),
                                            alpha=momentum)


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *,
               residual: Optional[Tensor] = None, activation: Optional[str] = None,
               negative_slope: float = 0.01, approximate: str = "none") -> Tensor:
    """torch's batch_norm; act(batch_norm(input) + residual) with the epilogue keywords."""
    return batch_norm_tracked(input, running_mean, running_var, weight, bias, training,
                              momentum, eps, None, parse(activation, negative_slope, approximate),
                              residual)


def batch_norm_tracked(input, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked: Optional[Tensor] = None, act: Optional[Act] = None,
                       residual: Optional[Tensor] = None) -> Tensor:
    """batch_norm, where momentum=None with ``num_batches_tracked`` (already
    incremented) means the cumulative average 1 / num_batches_tracked, computed
    on the device: no host sync; then act(y + residual)."""
    if momentum is None and num_batches_tracked is None:   # torch's argument parser
        raise TypeError("batch_norm(): argument 'momentum' (position 7) must be float, not NoneType")
    if _jit_tracing() or not use_triton(input) or input.numel() == 0:
        if momentum is None:
            momentum = 1.0 / float(num_batches_tracked)
        return compose(F.batch_norm(input, running_mean, running_var, weight, bias, training,
                                    momentum, eps), residual, act)
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise RuntimeError(f"{missing} must be defined in evaluation mode")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    c = input.shape[1] if input.dim() > 1 else 0
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        checks.size(name, t, c)
    if input.dim() < 2:
        raise RuntimeError(f"batch_norm expects input of shape (N, C, *), got {input.dim()}-d input")
    if training and input.numel() // c == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.size()}")
    checks.batch_norm_eps(eps, training)
    checks.float_input("batch_norm", input)
    checks.param_dtypes(input, weight, bias, running_mean, running_var)
    checks.devices(input, weight, bias, running_mean, running_var)
    weight, bias = _flat(weight), _flat(bias)
    xv, view = batch_layout(input)
    if not training:
        stats = (running_mean.detach().contiguous(), running_var.detach().contiguous())
        return _norm_epilogue(xv, weight, bias, view, BATCH, eps, residual, act, stats=stats)
    if running_mean is None:
        return _norm_epilogue(xv, weight, bias, view, BATCH, eps, residual, act)
    # The kernel updates the statistics in place; strided buffers go through a
    # contiguous copy and back, so torch's in-place contract holds for them too.
    rm, rv = running_mean.contiguous(), running_var.contiguous()
    y = _norm_epilogue(xv, weight, bias, view, BATCH, eps, residual, act,
                       running=(rm, rv, momentum, num_batches_tracked))
    with torch.no_grad():
        for buf, new in ((running_mean, rm), (running_var, rv)):
            if new is not buf:
                buf.copy_(new)
    return y
