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

from . import checks, config, eager
from ._runtime import use_triton
from .activation import Act, compose, outside, parse
from .front import (autocast, flat, group_view, jit_tracing, norm_rows, offset_weight,
                    placed, ready, recall, steady_key, torch_path)
from .fused import add_layer_norm, add_rms_norm
from .paths import row_norm
from .quant import layer_norm_quant, rms_norm_quant
from .spec import (BATCH, GROUP, INSTANCE, LAYER, RMS, batch_layout, channel_format, channel_layout,
                   match_layout)

__all__ = ["add_layer_norm", "add_rms_norm", "batch_norm", "group_norm", "instance_norm",
           "layer_norm", "layer_norm_quant", "rms_norm", "rms_norm_quant"]


# What the public norms' docstrings share (appended by ``_documented``).
_EPILOGUE_DOC = """
    Beyond torch, keyword-only: ``residual`` (any shape that broadcasts; x's shape, dtype and
    device is added in the kernel) and ``activation`` (None, "relu", "silu", "gelu" with
    ``approximate``, "leaky_relu" with ``negative_slope``; a ValueError for another) give
    act(norm(input) + residual).
"""
_DTYPES_DOC = """
    Dtypes: float32, float16, bfloat16, float64 input (float16/bfloat16 input with float32
    parameters too); the result has the input's dtype and memory format, statistics are
    accumulated in float32 (float64 for float64).  A tensor where the kernels do not run
    (a CPU tensor without TRITON_INTERPRET=1), an empty or complex input, and torch.jit.trace
    take torch's op.  Bad input raises torch's exception type and message.
"""


def _documented(*parts):
    """Append the shared docstring ``parts`` to a public norm's own."""
    def apply(fn):
        fn.__doc__ = fn.__doc__.rstrip() + "\n" + "".join(parts)
        return fn
    return apply


@_documented(_DTYPES_DOC)
def layer_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5, *, activation: Optional[str] = None,
               negative_slope: float = 0.01, approximate: str = "none") -> Tensor:
    """torch.nn.functional.layer_norm: input ``(*, *normalized_shape)`` normalised over its
    trailing ``normalized_shape`` dims (biased variance), times ``weight``, plus ``bias``
    (each of shape normalized_shape).  Beyond torch: ``activation``, applied to the output in
    the same kernel (see group_norm).
"""
    return norm_rows(LAYER, input, normalized_shape, weight, bias, eps,
                     parse(activation, negative_slope, approximate))


def _epilogue(x: Tensor, view, residual: Optional[Tensor]):
    """(post, outside): the residual as the kernels read it (x's strides), or, where it
    differs from x in shape, dtype or device, ``outside`` (activation.outside): the
    epilogue then runs in torch ops after the kernel."""
    if residual is None:
        return None, False
    if outside(x, residual):
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


def _torch_group_norm(x: Tensor, num_groups, weight, bias, eps) -> Tensor:
    """F.group_norm, around a crash of torch's CPU kernel: torch 2.13's CPU GroupNorm
    backward of a channels_last input segfaults where the input does not require grad
    (plain torch does too; README's Quickstart hit it without the interpreter).  A strided
    CPU input is normalised as a contiguous copy, and the output given the input's memory
    format back, as torch's own output has it."""
    if not x.is_cpu or x.is_contiguous() or x.dim() < 3:
        return F.group_norm(x, num_groups, weight, bias, eps)
    fmt = channel_format(x) or torch.contiguous_format
    return F.group_norm(x.contiguous(), num_groups, weight, bias, eps).contiguous(memory_format=fmt)


@_documented(_DTYPES_DOC)
def rms_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
             weight: Optional[Tensor] = None, eps: Optional[float] = None, *,
             offset: float = 0.0) -> Tensor:
    """torch.nn.functional.rms_norm: input ``(*, *normalized_shape)`` divided by the root mean
    square of its trailing dims (plus ``eps``; None is the machine epsilon of the accumulation
    type, as torch's), times ``weight``.  Beyond torch: ``offset`` scales by (offset + weight),
    summed in float32 (Gemma: offset=1.0).
"""
    return norm_rows(RMS, input, normalized_shape,
                     offset_weight(weight, offset, normalized_shape, input), None, eps)


@_documented(_EPILOGUE_DOC, _DTYPES_DOC)
def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *,
               residual: Optional[Tensor] = None, activation: Optional[str] = None,
               negative_slope: float = 0.01, approximate: str = "none") -> Tensor:
    """torch.nn.functional.group_norm: input ``(N, C, *)`` normalised over each of
    ``num_groups`` groups of C / num_groups channels and all positions, per sample, then the
    per-channel ``weight`` and ``bias`` (shape (C,)); C must divide by num_groups (a
    RuntimeError otherwise).  A steady-state eager call without a residual is one memo
    lookup (front.ready).

"""
    act = parse(activation, negative_slope, approximate)
    eps = checks.number(eps)
    key = None
    if residual is None and type(num_groups) is int:   # 2.0 == 2 as a key; torch refuses it
        key = steady_key(input, (GROUP, num_groups, eps, act, placed(weight), placed(bias)))
        call = recall(key)
        if call is not None:
            return eager.run(input, weight, bias, None, call)
    if torch_path(input):
        return compose(_torch_group_norm(input, num_groups, weight, bias, eps), residual, act)
    view, dense = group_view(input, num_groups, weight, bias)
    checks.devices(input, weight, bias)
    x, weight, bias = autocast("group_norm", input, weight, bias)
    w, b = flat(weight), flat(bias)
    if key is not None and dense and x is input and w is weight and b is bias:
        return ready(key, x, view, GROUP, w, b, eps, act)
    return _norm_epilogue(x if dense else x.contiguous(), w, b, view, GROUP, eps, residual, act)


@_documented(_EPILOGUE_DOC, _DTYPES_DOC)
def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5, *,
                  residual: Optional[Tensor] = None, activation: Optional[str] = None,
                  negative_slope: float = 0.01, approximate: str = "none") -> Tensor:
    """torch.nn.functional.instance_norm: input ``(N, C, *)``, each channel of each sample
    normalised over its positions (the batch statistics when ``use_input_stats``, else the
    running ones); running_mean/running_var (C,) updated in place with ``momentum``.

"""
    act = parse(activation, negative_slope, approximate)
    eps, momentum = checks.number(eps), checks.number(momentum)
    if jit_tracing() or not use_triton(input):
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
    weight, bias = flat(weight), flat(bias)
    xv, view = channel_layout(input, c)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise RuntimeError(
                "Expected running_mean and running_var to be defined when use_input_stats is false")
        checks.vector("running_mean", running_mean, c, input)
        checks.vector("running_var", running_var, c, input)
        stats = (running_mean.detach().contiguous(), running_var.detach().contiguous())
        return _norm_epilogue(xv, weight, bias, view, INSTANCE, eps, residual, act, stats=stats)
    if running_mean is None and running_var is None:
        return _norm_epilogue(xv, weight, bias, view, INSTANCE, eps, residual, act)
    y, mean, rstd = _norm_epilogue(xv, weight, bias, view, INSTANCE, eps, residual, act,
                                   with_stats=True)
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


@_documented(_EPILOGUE_DOC, _DTYPES_DOC)
def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *,
               residual: Optional[Tensor] = None, activation: Optional[str] = None,
               negative_slope: float = 0.01, approximate: str = "none") -> Tensor:
    """torch.nn.functional.batch_norm: input ``(N, C, *)``, each channel normalised over the
    batch and positions in ``training`` (running_mean/running_var (C,) updated in the kernel
    with ``momentum`` and the unbiased variance), by the running statistics otherwise.

"""
    return batch_norm_tracked(input, running_mean, running_var, weight, bias, training,
                              momentum, eps, None, parse(activation, negative_slope, approximate),
                              residual)


# Steady-state eager BatchNorm calls (batch_norm_tracked): signature -> view.
_BN_READY = config.memo()


def batch_norm_tracked(input, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked: Optional[Tensor] = None, act: Optional[Act] = None,
                       residual: Optional[Tensor] = None) -> Tensor:
    """batch_norm, where momentum=None with ``num_batches_tracked`` (already
    incremented) means the cumulative average 1 / num_batches_tracked, computed
    on the device: no host sync; then act(y + residual).

    A steady-state eager call -- a signature seen before and checked then, x and the
    parameters used as they are -- skips the checks: one memo lookup (issue 24)."""
    if momentum is None and num_batches_tracked is None:   # torch's argument parser
        raise TypeError("batch_norm(): argument 'momentum' (position 7) must be float, not NoneType")
    eps, momentum = checks.number(eps), checks.number(momentum)
    key = steady_key(input, (bool(training), eps, placed(weight), placed(bias),
                             placed(running_mean), placed(running_var)))
    if key is not None:
        view = _BN_READY.get(key)
        if view is not None:
            return _batch_norm(input, view, running_mean, running_var, weight, bias, training,
                               momentum, eps, num_batches_tracked, act, residual)
    if jit_tracing() or not use_triton(input) or input.numel() == 0:
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
    if input.dim() < 2:   # torch's IndexError, from reading the channel dim it lacks
        input.size(1) if input.dim() == 1 else input.size()[1]
    if training and input.numel() // c == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.size()}")
    checks.batch_norm_eps(eps, training)
    checks.float_input("batch_norm", input)
    checks.param_dtypes(input, weight, bias, running_mean, running_var)
    checks.devices(input, weight, bias, running_mean, running_var)
    xv, view = batch_layout(input)
    if key is not None and xv is input and flat(weight) is weight and flat(bias) is bias:
        config.remember(_BN_READY, key, view)
    return _batch_norm(xv, view, running_mean, running_var, weight, bias, training, momentum,
                       eps, num_batches_tracked, act, residual)


def _constant(t: Tensor) -> Tensor:
    """A running statistic as constant statistics: dense, and out of autograd."""
    return (t.detach() if t.requires_grad else t).contiguous()


def _batch_norm(xv, view, running_mean, running_var, weight, bias, training, momentum, eps,
                num_batches_tracked, act, residual) -> Tensor:
    """batch_norm_tracked of checked arguments: x as the kernels address it (``view``)."""
    weight, bias = flat(weight), flat(bias)
    if not training:
        stats = (_constant(running_mean), _constant(running_var))
        return _norm_epilogue(xv, weight, bias, view, BATCH, eps, residual, act, stats=stats)
    if running_mean is None:
        return _norm_epilogue(xv, weight, bias, view, BATCH, eps, residual, act)
    # The kernel updates the statistics in place; strided buffers go through a
    # contiguous copy and back, so torch's in-place contract holds for them too.
    rm, rv = running_mean.contiguous(), running_var.contiguous()
    y = _norm_epilogue(xv, weight, bias, view, BATCH, eps, residual, act,
                       running=(rm, rv, momentum, num_batches_tracked))
    if rm is not running_mean or rv is not running_var:
        with torch.no_grad():
            for buf, new in ((running_mean, rm), (running_var, rv)):
                if new is not buf:
                    buf.copy_(new)
    return y
