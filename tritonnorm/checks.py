"""Argument checks of the functional API, with torch's exception types and words.

torch.nn.functional is the spec: where it raises, these raise the same type with
its message; where it runs (mixed precision included), these let the call through.
"""
import numbers
from typing import Optional

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def number(value):
    """A float argument (eps, momentum) as a Python number: a 0-d tensor, which torch's
    argument parser also reads, by its value now.  The host memos and launch plans key on
    these values, and a tensor -- hashed by identity -- would keep the value it had when
    it was remembered after an in-place change."""
    return value.item() if isinstance(value, Tensor) else value


def float_input(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise NotImplementedError(f'"{name}" not implemented for \'{x.dtype}\'')


def size(name: str, t: Optional[Tensor], c: int) -> None:
    if t is not None and t.numel() != c:
        raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")


def vector(name: str, t: Optional[Tensor], c: int, x: Tensor) -> None:
    if t is not None and (t.dim() != 1 or t.numel() != c):
        raise RuntimeError(
            f"Expected {name} to be a vector of size equal to the number of channels in "
            f"input, but got {name} of shape {list(t.shape)} and input of shape {list(x.shape)}")


def integer(fn: str, name: str, position: int, value) -> None:
    """An int argument, as torch's argument parser checks it."""
    if type(value) is not int and (not isinstance(value, numbers.Integral)
                                   or isinstance(value, bool)):
        raise TypeError(f"{fn}(): argument '{name}' (position {position}) must be int, "
                        f"not {type(value).__name__}")


def normalized_shape(fn: str, shape) -> tuple:
    """normalized_shape as a tuple of ints (an int is a 1-tuple)."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        return (int(shape),)
    shape = tuple(shape)
    for i, d in enumerate(shape):
        if not isinstance(d, numbers.Integral) or isinstance(d, bool):
            raise TypeError(f"{fn}(): argument 'normalized_shape' (position 2) must be tuple of "
                            f"ints, but found element of type {type(d).__name__} at pos {i}")
    return shape


def param_dtypes(x: Tensor, *params: Optional[Tensor]) -> None:
    """torch's rule for LayerNorm, GroupNorm, BatchNorm and InstanceNorm: the affine
    parameters and running statistics have the input's dtype, or are all fp32 beside
    an fp16/bf16 input (mixed-precision training); the result has the input's dtype.
    RMSNorm takes any mix, as torch's does."""
    d = x.dtype
    for p in params:
        if p is not None and p.dtype != d:
            break
    else:
        return   # the common case: one dtype
    ps = [p for p in params if p is not None]
    if d in _HALF and all(p.dtype == torch.float32 for p in ps):
        return
    where = "CPU" if x.is_cpu else "CUDA"
    if x.dtype == torch.float64:
        raise RuntimeError(f"mixed dtype ({where}): all inputs must share same datatype.")
    raise RuntimeError(f"mixed dtype ({where}): expect parameter to have scalar type of Float")


def batch_norm_eps(eps: float, training: bool) -> None:
    if training and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if not eps >= 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def normalized(fn: str, x: Tensor, shape, weight: Optional[Tensor], bias: Optional[Tensor]):
    """LayerNorm/RMSNorm: normalized_shape checked against the input and parameters."""
    if type(shape) is not tuple or not all(type(d) is int for d in shape):
        shape = normalized_shape(fn, shape)
    k, xs = len(shape), x.shape
    if k == 0:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., "
                           "containing at least one element, but got normalized_shape = []")
    if len(xs) < k or xs[len(xs) - k:] != shape:
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size{list(x.shape)}")
    for pname, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != shape:
            raise RuntimeError(
                f"Expected {pname} to be of same shape as normalized_shape, but got {pname} "
                f"of shape {list(p.shape)} and normalized_shape = {list(shape)}")
    return shape


def devices(x: Tensor, *others: Optional[Tensor]) -> None:
    # Cheaper than comparing torch.device objects: a GPU's index (an int), or -1, which
    # for a tensor our kernels take (use_triton) means the CPU, under the interpreter.
    where = x.get_device()
    for t in others:
        if t is not None and (t.get_device() != where if where >= 0 else not t.is_cpu):
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two "
                f"devices, {x.device} and {t.device}!")


def residual(x: Tensor, r: Optional[Tensor]) -> None:
    """A fused residual has the input's shape (no broadcasting)."""
    if r is not None and r.shape != x.shape:
        raise RuntimeError(f"residual of shape {list(r.shape)} must have the input's "
                           f"shape {list(x.shape)}")
