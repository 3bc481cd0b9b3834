"""torch.nn.functional-compatible entry points.

Each function takes torch's signature and defaults.  Inputs that Triton cannot
run on (a CPU tensor without the interpreter) and empty inputs go to
torch.nn.functional unchanged.
"""
import math
import numbers
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._runtime import use_triton
from .ops import row_norm
from .spec import BATCH, GROUP, INSTANCE, LAYER, RMS, batch_layout, channel_layout, row_layout

__all__ = ["batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm"]

# Ops that CUDA autocast runs in fp32 (torch's autocast op reference).
_AUTOCAST_FP32 = {"layer_norm", "group_norm"}


def _autocast(name: str, *tensors):
    """Cast like torch's CUDA autocast would for op ``name``."""
    x = tensors[0]
    if name in _AUTOCAST_FP32 and x.is_cuda and torch.is_autocast_enabled("cuda"):
        return tuple(t.float() if t is not None and t.is_floating_point() else t for t in tensors)
    return tensors


def _check_dtype(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise NotImplementedError(f'"{name}" not implemented for \'{x.dtype}\'')


def _check_size(name: str, t: Optional[Tensor], c: int) -> None:
    if t is not None and t.numel() != c:
        raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")


def _check_vector(name: str, t: Optional[Tensor], c: int, x: Tensor) -> None:
    if t is not None and (t.dim() != 1 or t.numel() != c):
        raise RuntimeError(
            f"Expected {name} to be a vector of size equal to the number of channels in "
            f"input, but got {name} of shape {list(t.shape)} and input of shape {list(x.shape)}")


def _normalized(name: str, x: Tensor, normalized_shape, weight, bias):
    if type(normalized_shape) is not tuple:
        shape = ((normalized_shape,) if isinstance(normalized_shape, numbers.Integral)
                 else tuple(normalized_shape))
    else:
        shape = normalized_shape   # what the modules pass: no conversion
    k, xs = len(shape), x.shape
    if k == 0 or len(xs) < k or xs[len(xs) - k:] != shape:
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size{list(x.shape)}")
    for pname, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != shape:
            raise RuntimeError(
                f"Expected {pname} to be of same shape as normalized_shape, but got {pname} "
                f"of shape {list(p.shape)} and normalized_shape = {list(shape)}")
    _check_dtype(name, x)
    return shape


_ROW_VIEWS: dict = {}


def _rows(name: str, x: Tensor, normalized_shape, weight, bias):
    """(x made contiguous, its RowView) after _normalized's checks.  The checks and
    the view are memoised on what they read, so a steady-state call pays a dict
    lookup, not the checks."""
    hashable = type(normalized_shape) in (tuple, int)
    view = None
    if hashable:
        key = (name, x.shape, x.dtype, normalized_shape, None if weight is None else weight.shape,
               None if bias is None else bias.shape)
        view = _ROW_VIEWS.get(key)
    if view is None:
        x, view = row_layout(x, math.prod(_normalized(name, x, normalized_shape, weight, bias)))
        if hashable:
            if len(_ROW_VIEWS) > 4096:  # a bound for shape-churning workloads
                _ROW_VIEWS.clear()
            _ROW_VIEWS[key] = view
        return x, view
    return x.contiguous(), view


def _flat(p: Optional[Tensor]) -> Optional[Tensor]:
    """A parameter as the dense vector the kernels index (a copy only if strided)."""
    if p is None or (p.dim() == 1 and p.is_contiguous()):
        return p
    return p.reshape(-1).contiguous()


def _check_devices(x: Tensor, *others: Optional[Tensor]) -> None:
    # Cheaper than comparing torch.device objects: a GPU's index (an int), or -1, which
    # for a tensor our kernels take (use_triton) means the CPU, under the interpreter.
    where = x.get_device()
    for t in others:
        if t is not None and (t.get_device() != where if where >= 0 else not t.is_cpu):
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two "
                f"devices, {x.device} and {t.device}!")


def layer_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5) -> Tensor:
    if not use_triton(input) or input.numel() == 0:
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    xv, view = _rows("LayerNormKernelImpl", input, normalized_shape, weight, bias)
    _check_devices(input, weight, bias)
    xv, weight, bias = _autocast("layer_norm", xv, weight, bias)
    return row_norm(xv, _flat(weight), _flat(bias), view, LAYER, eps)   # input's shape


def rms_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]],
             weight: Optional[Tensor] = None, eps: Optional[float] = None) -> Tensor:
    if not use_triton(input) or input.numel() == 0:
        return F.rms_norm(input, normalized_shape, weight, eps)
    xv, view = _rows("rms_norm", input, normalized_shape, weight, None)
    _check_devices(input, weight)
    if eps is None:
        # torch's default: machine epsilon of the accumulation type (fp32 below fp64).
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    return row_norm(xv, _flat(weight), None, view, RMS, eps)


def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5) -> Tensor:
    if not use_triton(input) or input.numel() == 0:
        return F.group_norm(input, num_groups, weight, bias, eps)
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    c = input.shape[1]
    if num_groups <= 0 or c % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got "
            f"input of shape {list(input.shape)} and num_groups={num_groups}")
    _check_vector("weight", weight, c, input)
    _check_vector("bias", bias, c, input)
    _check_dtype("GroupNormKernelImpl", input)
    _check_devices(input, weight, bias)
    x, weight, bias = _autocast("group_norm", input, weight, bias)
    xv, view = channel_layout(x, num_groups)
    y = row_norm(xv, _flat(weight), _flat(bias), view, GROUP, eps)
    return y


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None,
                  running_var: Optional[Tensor] = None, weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    if not use_triton(input):
        return F.instance_norm(input, running_mean, running_var, weight, bias,
                               use_input_stats, momentum, eps)
    if input.numel() == 0:
        return _empty_instance_norm(input, weight, bias)
    if input.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
    if use_input_stats and math.prod(input.shape[2:]) == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {input.size()}")
    c = input.shape[1]
    _check_vector("weight", weight, c, input)
    _check_vector("bias", bias, c, input)
    _check_dtype("instance_norm", input)
    _check_devices(input, weight, bias, running_mean, running_var)
    weight, bias = _flat(weight), _flat(bias)
    xv, view = channel_layout(input, c)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise RuntimeError(
                "Expected running_mean and running_var to be defined when use_input_stats is false")
        _check_vector("running_mean", running_mean, c, input)
        _check_vector("running_var", running_var, c, input)
        stats = (running_mean.detach().contiguous(), running_var.detach().contiguous())
        y = row_norm(xv, weight, bias, view, INSTANCE, eps, stats)
        return y
    y, mean, rstd = row_norm(xv, weight, bias, view, INSTANCE, eps, with_stats=True)
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
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    return batch_norm_tracked(input, running_mean, running_var, weight, bias, training,
                              momentum, eps)


def batch_norm_tracked(input, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked: Optional[Tensor] = None) -> Tensor:
    """batch_norm, where momentum=None with ``num_batches_tracked`` (already
    incremented) means the cumulative average 1 / num_batches_tracked, computed
    on the device: no host sync."""
    if not use_triton(input) or input.numel() == 0:
        if momentum is None:
            momentum = 1.0 / float(num_batches_tracked) if num_batches_tracked is not None else 0.0
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    c = input.shape[1] if input.dim() > 1 else 0
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        _check_size(name, t, c)
    if input.dim() < 2:
        raise RuntimeError(f"batch_norm expects input of shape (N, C, *), got {input.dim()}-d input")
    if training and input.numel() // c == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.size()}")
    _check_dtype("batch_norm", input)
    _check_devices(input, weight, bias, running_mean, running_var)
    weight, bias = _flat(weight), _flat(bias)
    xv, view = batch_layout(input)
    if not training:
        if running_mean is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        stats = (running_mean.detach().contiguous(), running_var.detach().contiguous())
        y = row_norm(xv, weight, bias, view, BATCH, eps, stats)
        return y
    running = None
    if running_mean is not None:
        if not (running_mean.is_contiguous() and running_var.is_contiguous()):
            raise RuntimeError("running_mean and running_var must be contiguous to be updated in place")
        running = (running_mean, running_var, momentum, num_batches_tracked)
        if momentum is None and num_batches_tracked is None:
            raise ValueError("momentum=None needs num_batches_tracked for the cumulative average")
    y = row_norm(xv, weight, bias, view, BATCH, eps, running=running)
    return y
