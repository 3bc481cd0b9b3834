"""torch.library ops around the row-norm kernels, so torch.compile sees them.

``tritonnorm::norm_fwd`` and ``tritonnorm::norm_bwd`` are custom ops with fake
(meta) implementations; autograd is registered on norm_fwd, whose backward calls
norm_bwd.  Both are functional: torch allows autograd only on ops that mutate
nothing, so norm_fwd returns the updated running statistics (computed in the
same kernel) and ``row_norm`` copies them into the buffers -- an in-place
buffer update that torch.compile traces like BatchNorm's own.  Specs and views
travel as plain ints: spec index, memory-format index and the view's 8 numbers.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import composite
from .dispatch import acc_dtype, row_backward, row_forward
from .spec import BATCH, GROUP, INSTANCE, LAYER, RMS, RMS_CAST, RowView, match_layout, out_like

SPECS = [LAYER, RMS, GROUP, INSTANCE, BATCH, RMS_CAST]
FORMATS = [torch.contiguous_format, torch.channels_last, torch.channels_last_3d]


def _view(geom: List[int], fmt: int) -> RowView:
    return RowView(*geom, FORMATS[fmt])


@torch.library.custom_op("tritonnorm::norm_fwd", mutates_args=())
def norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], geom: List[int],
             fmt: int, spec: int, eps: float, stat_mean: Optional[Tensor],
             stat_var: Optional[Tensor], running_mean: Optional[Tensor],
             running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor],
             momentum: Optional[float]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, rstd, new_running_mean, new_running_var).  mean/rstd are empty
    when stat_mean/stat_var (constant statistics: a mean and a variance, eps
    added in the kernel) are given; the new running stats are empty unless
    running_mean/running_var are."""
    running = None
    new_rm, new_rv = x.new_empty(0), x.new_empty(0)
    if running_mean is not None:
        new_rm, new_rv = torch.empty_like(running_mean), torch.empty_like(running_var)
        running = (running_mean, running_var, momentum, num_batches_tracked, new_rm, new_rv)
    y, mean, rstd = row_forward(x, _view(geom, fmt), SPECS[spec], weight, bias, eps,
                                stat_mean, stat_var, running)
    if stat_mean is not None:
        mean = x.new_empty(0, dtype=acc_dtype(x))
        rstd = x.new_empty(0, dtype=acc_dtype(x))
    return y, mean, rstd, new_rm, new_rv


@norm_fwd.register_fake
def _(x, weight, bias, geom, fmt, spec, eps, stat_mean, stat_var, running_mean, running_var,
      num_batches_tracked, momentum):
    rows = 0 if stat_mean is not None else geom[0] * geom[1]
    y = out_like(x, _view(geom, fmt), SPECS[spec])
    stats = [x.new_empty(rows, dtype=acc_dtype(x)) for _ in range(2)]
    if running_mean is None:
        return y, *stats, x.new_empty(0), x.new_empty(0)
    return y, *stats, torch.empty_like(running_mean), torch.empty_like(running_var)


@torch.library.custom_op("tritonnorm::norm_bwd", mutates_args=())
def norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
             geom: List[int], fmt: int, spec: int, fixed: bool, need_dw: bool,
             need_db: bool, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db); dw/db are empty when not asked for.  With ``fixed``, rstd
    holds the given variance."""
    dx, dw, db = row_backward(x, dy, _view(geom, fmt), SPECS[spec], weight, mean, rstd,
                              need_dw, need_db, fixed, eps=eps)
    return dx, x.new_empty(0) if dw is None else dw, x.new_empty(0) if db is None else db


@norm_bwd.register_fake
def _(dy, x, weight, mean, rstd, geom, fmt, spec, fixed, need_dw, need_db, eps):
    dx = out_like(x, _view(geom, fmt), SPECS[spec])
    pdtype = weight.dtype if weight is not None else x.dtype
    cw = weight.numel() if weight is not None else 0
    dw = x.new_empty(cw if need_dw else 0, dtype=pdtype)
    db = x.new_empty(cw if need_db else 0, dtype=pdtype)
    return dx, dw, db


def _setup_context(ctx, inputs, output):
    x, weight, bias, geom, fmt, spec, _, stat_mean, stat_var = inputs[:9]
    _, mean, rstd, _, _ = output
    ctx.mark_non_differentiable(*output[1:])
    # The statistics outputs never get a gradient: no zero tensors materialised for them.
    ctx.set_materialize_grads(False)
    fixed = stat_mean is not None
    ctx.save_for_backward(x, weight, stat_mean if fixed else mean, stat_var if fixed else rstd)
    ctx.geom, ctx.fmt, ctx.spec, ctx.fixed, ctx.eps = geom, fmt, spec, fixed, inputs[6]
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None


def _backward(ctx, dy, *_):
    x, weight, mean, rstd = ctx.saved_tensors
    if dy is None:  # y took no part in the loss
        return (None,) * 13
    need_dw = ctx.has_weight and ctx.needs_input_grad[1]
    need_db = ctx.has_bias and ctx.needs_input_grad[2]
    dy = match_layout(dy, _view(ctx.geom, ctx.fmt))
    dx, dw, db = norm_bwd(dy, x, weight, mean, rstd, ctx.geom, ctx.fmt, ctx.spec, ctx.fixed,
                          need_dw, need_db, ctx.eps)
    return (dx if ctx.needs_input_grad[0] else None, dw if need_dw else None,
            db if need_db else None) + (None,) * 10


norm_fwd.register_autograd(_backward, setup_context=_setup_context)


class EagerNorm(torch.autograd.Function):
    """The eager path: the same launcher as the custom ops (dispatch.row_forward /
    row_backward), without their dispatch cost, and with the running statistics
    updated in place by the kernel -- no copy.  ``call`` = (view, spec, eps, stats,
    running, with_stats) travels as one argument, and the statistics are outputs
    only when asked for: autograd's apply pays per argument and per output."""

    @staticmethod
    def forward(ctx, x, weight, bias, call):
        view, spec, eps, stats, running, with_stats = call
        mean, var = stats if stats is not None else (None, None)
        y, mean, rstd = row_forward(x, view, spec, weight, bias, eps, mean, var, running)
        ctx.save_for_backward(x, weight)
        # The statistics are this call's own tensors, which nobody else can modify: no
        # version check needed, so they ride on ctx.
        ctx.state = (call, mean, rstd, bias)   # bias: for its shape and dtype only
        if not with_stats:
            return y
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(mean, rstd)
        return y, mean, rstd

    @staticmethod
    def backward(ctx, dy, *_):
        if dy is None:  # y took no part in the loss
            return None, None, None, None
        x, weight = ctx.saved_tensors
        call, mean, rstd, bias = ctx.state
        view, spec, eps, stats = call[:4]
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():   # create_graph=True: gradients that are differentiable
            return composite.backward(x, weight, bias, dy, view, spec, eps, stats, need) + (None,)
        need_dw = weight is not None and need[1]
        need_db = bias is not None and need[2]
        dx, dw, db = row_backward(x, match_layout(dy, view), view, spec, weight, mean, rstd,
                                  need_dw, need_db, stats is not None, eps=eps)
        return dx if need[0] else None, dw, db, None


def _fast_apply():
    """EagerNorm.apply less its Python preamble (inspect-free on our forward, but it
    still unwraps every argument): the C apply, after unwrapping the tensors the
    way torch does.  Falls back to EagerNorm.apply where torch lacks the pieces."""
    try:
        c_apply = super(torch.autograd.Function, EagerNorm).apply
        unwrap = torch._C._functorch.unwrap_if_dead
    except AttributeError:
        return EagerNorm.apply

    def apply(x, weight, bias, call):   # row_norm has ruled out functorch transforms
        return c_apply(unwrap(x), weight if weight is None else unwrap(weight),
                       bias if bias is None else unwrap(bias), call)
    return apply


_apply = _fast_apply()


def eager(x: Tensor) -> bool:
    """True outside tracing: no torch.compile/export, no fake or proxy dispatch mode."""
    return (not torch.compiler.is_compiling()
            and torch.utils._python_dispatch._get_current_dispatch_mode() is None
            and type(x) in (torch.Tensor, torch.nn.Parameter))


def row_norm(x, weight, bias, view: RowView, spec, eps, stats=None, running=None,
             with_stats=False):
    """Apply the row norm; returns y, or (y, mean, rstd) ``with_stats``.

    ``stats`` (mean, var) are constants to apply (running statistics in eval);
    ``running`` = (running_mean, running_var, momentum, num_batches_tracked)
    are updated with the batch statistics (momentum None: cumulative average).
    Eager calls take EagerNorm; traced ones the custom ops, whose running-stat
    update is functional plus a traced copy_."""
    if eager(x):
        if composite.transforming():
            # torch.func transforms and forward-mode AD: torch ops, differentiated by torch.
            y, mean, rstd = composite.row_norm(x, weight, bias, view, spec, eps, stats, running)
            return (y, mean, rstd) if with_stats else y
        if torch.is_grad_enabled() and (x.requires_grad
                                        or (weight is not None and weight.requires_grad)
                                        or (bias is not None and bias.requires_grad)):
            return _apply(x, weight, bias, (view, spec, eps, stats, running, with_stats))
        # Nothing to differentiate (inference): no autograd node, the kernel alone.
        mean, var = stats if stats is not None else (None, None)
        y, mean, rstd = row_forward(x, view, spec, weight, bias, eps, mean, var, running)
        return (y, mean, rstd) if with_stats else y
    geom = [view.N, view.G, view.Cg, view.S, view.sN, view.sG, view.sJ, view.sS]
    stat_mean, stat_var = stats if stats is not None else (None, None)
    rm, rv, momentum, nbt = running if running is not None else (None, None, None, None)
    y, mean, rstd, new_rm, new_rv = norm_fwd(
        x, weight, bias, geom, FORMATS.index(view.memory_format), SPECS.index(spec), float(eps),
        stat_mean, stat_var, rm, rv, nbt, None if momentum is None else float(momentum))
    if rm is not None:
        with torch.no_grad():
            rm.copy_(new_rm)
            rv.copy_(new_rv)
    return (y, mean, rstd) if with_stats else y
