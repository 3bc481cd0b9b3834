"""The front end that the functional API, the fused add (fused.py) and the quantized
output (quant.py) share: from a call's arguments to a path.

* Which calls torch.nn.functional serves (``torch_path``): a tensor Triton cannot run
  on (a CPU tensor without the interpreter), an empty input, a complex input (torch
  computes rms_norm of one and raises its own error for the others), a call recorded
  by torch.jit.trace (TorchScript cannot call Triton).
* The checks of a row norm's or a GroupNorm's arguments and the [N, G, Cg, S] view
  they give, memoised per call signature (``rows``, ``group_view``), so a steady-state
  call pays a dict lookup, not the checks.
* The small helpers every front end needs: dense parameter vectors (``flat``), the
  Gemma offset weight, RMSNorm's eps default, x + residual, CUDA autocast's casts.
* ``norm_rows``: LayerNorm / RMSNorm (either casting order) from checked arguments
  to ``paths.row_norm``.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks, config, dispatch, eager, paths
from ._runtime import use_triton
from .activation import compose
from .paths import row_norm
from .spec import GROUP, LAYER, RMS, RMS_CAST, channel_format, channel_layout, row_layout

# Ops that CUDA autocast runs in fp32 (torch's autocast op reference).
_AUTOCAST_FP32 = {"layer_norm", "group_norm"}


def autocast(name: str, *tensors):
    """Cast like torch's CUDA autocast would for op ``name``."""
    x = tensors[0]
    if name in _AUTOCAST_FP32 and x.is_cuda and torch.is_autocast_enabled("cuda"):
        return tuple(t.float() if t is not None and t.is_floating_point() else t for t in tensors)
    return tensors


def jit_tracing() -> bool:
    """True while torch.jit.trace records: the call then goes to torch's own op."""
    # torch._C._is_tracing is the cheap call, but dynamo cannot trace it: ask it only
    # outside torch.compile (where is_compiling() folds to a constant).
    return not torch.compiler.is_compiling() and torch._C._is_tracing()


def torch_path(x: Tensor) -> bool:
    """Calls that torch.nn.functional serves: see the module docstring."""
    return jit_tracing() or not use_triton(x) or x.numel() == 0 or x.is_complex()


# Checked call signatures -> their views (LayerNorm/RMSNorm, GroupNorm).
_VIEWS = config.memo()
# Steady-state eager calls (norm_rows): signature -> eager.run's ``call``.
_READY = config.memo()

# Per row norm: torch's names for it (in its dtype error, in its argument errors) and
# whether torch's parameter-dtype rule applies (RMSNorm takes any mix).
_ROW_NORMS = {LAYER: ("LayerNormKernelImpl", "layer_norm", True),
              RMS: ("rms_norm", "rms_norm", False), RMS_CAST: ("rms_norm", "rms_norm", False)}


def untraced(x: Tensor) -> bool:
    """Not in a trace (paths.tracing): only then may a memo key hold x's sizes.  In a trace
    they may be symbolic: a dict lookup on them makes dynamo guard on each size -- a
    recompile for every new batch or sequence length -- and torch.export cannot hash them
    at all.  A trace runs the checks each time it traces, which is once."""
    return not paths.tracing(x)


def _meta(p: Optional[Tensor]):
    return None if p is None else (p.shape, p.dtype)


def rows(spec, x: Tensor, normalized_shape, weight, bias, strided: bool = False):
    """(x made contiguous, its RowView) after the checks of checks.normalized; with
    ``strided``, x itself where its rows can be read in place (spec.row_layout).  The
    checks and the view are memoised on what they read, so a steady-state call pays a
    dict lookup, not the checks -- except in a trace (``untraced``)."""
    hashable = _int_shape(normalized_shape) and untraced(x)   # only ints in the key
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


def group_view(x: Tensor, num_groups: int, weight, bias):
    """(view, dense) of a GroupNorm call after its checks, memoised like ``rows``;
    ``dense``: x is addressed as it is (else it is made contiguous first)."""
    checks.integer("group_norm", "num_groups", 2, num_groups)   # before the key: 2.0 == 2
    key = None
    if untraced(x):
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
    if key is None:
        return view, xv is x
    return config.remember(_VIEWS, key, (view, xv is x))


def flat(p: Optional[Tensor]) -> Optional[Tensor]:
    """A parameter as the dense vector the kernels index (a copy only if strided)."""
    if p is None or (p.dim() == 1 and p.is_contiguous()):
        return p
    return p.reshape(-1).contiguous()


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


def rms_eps(x: Tensor, eps: Optional[float]) -> float:
    """rms_norm's eps; None is torch's default, the machine epsilon of the accumulation
    type (fp32 below fp64)."""
    if eps is not None:
        return eps
    return torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).eps


def add(x: Tensor, residual: Tensor) -> Tensor:
    """h = x + residual in x's dtype, in torch ops: what the kernels' HAS_RES reads."""
    return (x + residual).to(x.dtype)


def _int_shape(normalized_shape) -> bool:
    """normalized_shape is an int or a tuple of ints, as a memo key may hold it: (3.0,) ==
    (3,) as a dict key, yet torch refuses the float."""
    t = type(normalized_shape)
    return t is int or (t is tuple and (
        type(normalized_shape[0]) is int if len(normalized_shape) == 1
        else all(type(d) is int for d in normalized_shape)))


def steady_key(x: Tensor, rest: tuple):
    """The memo key of a steady-state eager call (``ready``): x's shape, strides, dtype and
    device, and ``rest`` -- or None where the call is not a plain eager one
    (paths.plain_eager) or CUDA autocast may cast it."""
    if not paths.plain_eager(x) or (x.is_cuda and torch.is_autocast_enabled("cuda")):
        return None
    return (x.shape, x.stride(), x.dtype, x.get_device(), rest)


def placed(p: Optional[Tensor]):
    """What a steady-state key holds of a tensor argument: shape, strides, dtype, device --
    all that its checks and its use as it is (``flat``) read.  The device is get_device(),
    which is -1 for the CPU and for meta alike: is_meta tells them apart."""
    return None if p is None else (p.shape, p.stride(), p.dtype, p.get_device(), p.is_meta)


def recall(key):
    """The eager call ``ready`` remembered for ``key`` (None: none, or no key)."""
    return None if key is None else _READY.get(key)


def ready(key, x: Tensor, view, spec, weight, bias, eps, act):
    """Remember the eager call of a checked signature (``key``, steady_key's, or None for
    nothing to remember) whose x, weight and bias go to the kernels as they are, and run
    it: ``key`` then finds the call (_READY), its checks passed and its launch planned
    (dispatch.plain_launch)."""
    plan = dispatch.plain_launch(x, view, spec, weight is not None, bias is not None, eps, act)
    call = (view, spec, eps, None, None, False, act, plan)
    if key is not None:
        config.remember(_READY, key, call)
    return eager.run(x, weight, bias, None, call)


def norm_rows(spec, x: Tensor, normalized_shape, weight: Optional[Tensor],
              bias: Optional[Tensor], eps: Optional[float], act=None) -> Tensor:
    """layer_norm (LAYER), rms_norm (RMS) or the cast-first rms_norm of Llama-style
    classes (RMS_CAST; tritonnorm.hf, which serves torch's path itself) of ``x``, then
    ``act`` (activation.Act) in the same kernel: torch's op where torch_path(x), else
    the checked view down ``paths.row_norm``.  ``eps`` None is RMSNorm's default.

    A steady-state eager call -- a signature seen before, checked then, that needed no
    copy, cast or reshape of x or its parameters -- is one memo lookup and eager.run
    (``ready``; issue 24)."""
    key = None
    if type(eps) is not float:
        eps = checks.number(eps)
    if _int_shape(normalized_shape):
        key = steady_key(x, (spec, normalized_shape, eps, act,   # placed(), inlined: hot
                             None if weight is None else (weight.shape, weight.stride(),
                                                          weight.dtype, weight.get_device(),
                                                          weight.is_meta),
                             None if bias is None else (bias.shape, bias.stride(), bias.dtype,
                                                        bias.get_device(), bias.is_meta)))
        call = recall(key)
        if call is not None:
            return eager.run(x, weight, bias, None, call)
    if torch_path(x):
        y = (F.layer_norm(x, normalized_shape, weight, bias, eps) if spec is LAYER
             else F.rms_norm(x, normalized_shape, weight, eps))
        return compose(y, None, act)
    xv, view = rows(spec, x, normalized_shape, weight, bias, strided=True)
    checks.devices(x, weight, bias)
    if spec is LAYER:
        if x.is_cuda:
            xv, weight, bias = autocast("layer_norm", xv, weight, bias)
    else:
        eps = rms_eps(x, eps)
    w, b = flat(weight), flat(bias)
    if xv is x and w is weight and b is bias and paths.plain_eager(x):
        return ready(key, x, view, spec, w, b, eps, act)
    y = row_norm(xv, w, b, view, spec, eps, act=act)
    if spec is not LAYER and xv is not x:
        y = _like(x, y)
    return y


def _like(x: Tensor, y: Tensor) -> Tensor:
    """rms_norm's output in x's memory format, as torch's (an elementwise composition)
    keeps it: a channels_last x made contiguous for the kernels gets its layout back.
    (layer_norm's output is contiguous in torch too: left so.)"""
    fmt = channel_format(x)
    return y if fmt in (None, torch.contiguous_format) else y.contiguous(memory_format=fmt)
