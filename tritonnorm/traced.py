"""The traced path: torch.library ops around the row-norm kernels, so torch.compile
and torch.export see them.

``tritonnorm::norm_fwd`` and ``tritonnorm::norm_bwd`` are functional ops; autograd is
registered on the forward, whose backward calls the backward op.  Functional, because
torch allows autograd only on ops that mutate nothing: the forward returns the updated
running statistics (computed in the same kernel) and ``row_norm`` copies them into the
buffers -- an in-place buffer update that torch.compile traces like BatchNorm's own.
Specs and views travel as plain ints: spec index, memory-format index and the view's 8
numbers.  Each op comes in two kinds:

* ``torch.library.triton_op`` (``norm_fwd_triton``, ``norm_bwd_triton``; torch >= 2.6,
  compiled kernels): its implementation launches through ``wrap_triton`` (launch.traceable),
  so a trace records the kernels themselves (``triton_kernel_wrapper_functional`` nodes)
  and Inductor launches them from its generated code, with no Python of ours in the
  compiled step -- and CUDA graphs can capture it.  Its launch plan is chosen while the
  trace runs, from the sizes; symbolic sizes go on to the custom op (``_kernels``);
* ``torch.library.custom_op`` (``norm_fwd``, ``norm_bwd``): opaque to the trace, with
  fake implementations; its plan is chosen when it runs.  It serves symbolic sizes (no
  recompile a size), older torch, and Triton's interpreter, whose kernels a trace cannot
  enter.

Both implementations launch through dispatch, as the eager path does.
"""
import functools
import inspect
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ._runtime import INTERPRET
from .activation import Act
from .dispatch import Epilogue, mean_rstd, row_backward, row_forward, sign_mask
from .launch import traceable
from .plan import acc_dtype
from .spec import BATCH, GROUP, INSTANCE, LAYER, RMS, RMS_CAST, RowView, match_layout, out_like

SPECS = [LAYER, RMS, GROUP, INSTANCE, BATCH, RMS_CAST]
FORMATS = [torch.contiguous_format, torch.channels_last, torch.channels_last_3d]
# Whether static-shape traces take the triton_op kind (see the module docstring).
TRITON_OPS = hasattr(torch.library, "triton_op") and not INTERPRET


def _view(geom: List[int], fmt: int) -> RowView:
    return RowView(*geom, FORMATS[fmt])


def _fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], geom: List[int],
         fmt: int, spec: int, eps: float, stat_mean: Optional[Tensor],
         stat_var: Optional[Tensor], running_mean: Optional[Tensor],
         running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor],
         momentum: Optional[float], post: Optional[Tensor] = None, act: int = 0,
         slope: float = 0.0) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, stats, new_running_mean, new_running_var, mask).  ``stats`` (2 * rows): the
    means, then the rstds (dispatch.row_forward); empty when stat_mean/stat_var
    (constant statistics: a mean and a variance, eps added in the kernel) are given; the
    new running stats are empty unless running_mean/running_var are.
    ``post``/``act``/``slope``: the epilogue y = act(norm(x) + post); ``mask`` (z > 0) is
    empty unless the backward reads it."""
    running = None
    new_rm, new_rv = x.new_empty(0), x.new_empty(0)
    if running_mean is not None:
        new_rm, new_rv = torch.empty_like(running_mean), torch.empty_like(running_var)
        running = (running_mean, running_var, momentum, num_batches_tracked, new_rm, new_rv)
    a = Act(act, slope) if act else None
    mask = sign_mask(x, post, a)
    y, stats = row_forward(x, _view(geom, fmt), SPECS[spec], weight, bias, eps,
                           stat_mean, stat_var, running, act=a, post=post, mask=mask)
    if stat_mean is not None:
        stats = x.new_empty(0, dtype=acc_dtype(x))
    return y, stats, new_rm, new_rv, _mask_out(x, mask)


def _mask_out(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """The mask as an op output: empty where there is none."""
    return x.new_empty(0, dtype=torch.bool) if mask is None else mask


def _fwd_fake(x, weight, bias, geom, fmt, spec, eps, stat_mean, stat_var, running_mean,
              running_var, num_batches_tracked, momentum, post=None, act=0, slope=0.0):
    rows = 0 if stat_mean is not None else geom[0] * geom[1]
    y = out_like(x, _view(geom, fmt), SPECS[spec])
    stats = x.new_empty(2 * rows, dtype=acc_dtype(x))
    mask = _mask_out(x, sign_mask(x, post, Act(act, slope) if act else None))
    if running_mean is None:
        return y, stats, x.new_empty(0), x.new_empty(0), mask
    return y, stats, torch.empty_like(running_mean), torch.empty_like(running_var), mask


def _bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], stats: Tensor, var: Optional[Tensor],
         geom: List[int], fmt: int, spec: int, fixed: bool, need_dw: bool,
         need_db: bool, eps: float, bias: Optional[Tensor] = None,
         post: Optional[Tensor] = None, mask: Optional[Tensor] = None, act: int = 0,
         slope: float = 0.0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dw, db, dpost); dw/db are empty when not asked for, dpost without a post.
    ``stats``: the forward's; with ``fixed``, the given mean, and ``var`` the given
    variance."""
    epi = _epilogue(x, bias, post, mask, act, slope)
    dx, dw, db = row_backward(x, dy, _view(geom, fmt), SPECS[spec], weight,
                              (stats, var) if fixed else stats, need_dw, need_db, fixed,
                              eps=eps, epi=epi)
    dpost = x.new_empty(0) if post is None else (dy if epi is None else epi.dr)
    return dx, x.new_empty(0) if dw is None else dw, x.new_empty(0) if db is None else db, dpost


def _epilogue(x, bias, post, mask, act, slope) -> Optional[Epilogue]:
    """The backward's Epilogue, its residual gradient allocated (none without an
    activation: then the residual's gradient is dy itself)."""
    mask = mask if mask is not None and mask.numel() else None
    return Epilogue.of(Act(act, slope) if act else None, x, bias, post is not None, post, mask)


def _bwd_fake(dy, x, weight, stats, var, geom, fmt, spec, fixed, need_dw, need_db, eps,
              bias=None, post=None, mask=None, act=0, slope=0.0):
    dx = out_like(x, _view(geom, fmt), SPECS[spec])
    pdtype = weight.dtype if weight is not None else x.dtype
    cw = weight.numel() if weight is not None else 0
    dw = x.new_empty(cw if need_dw else 0, dtype=pdtype)
    db = x.new_empty(cw if need_db else 0, dtype=pdtype)
    dpost = x.new_empty(0) if post is None else (
        torch.empty_like(dy) if not act else torch.empty_like(x))
    return dx, dw, db, dpost


def _setup_context(ctx, inputs, output):
    x, weight, bias, geom, fmt, spec, _, stat_mean, stat_var = inputs[:9]
    post, act, slope = inputs[13:16]
    _, stats, _, _, mask = output
    ctx.mark_non_differentiable(*output[1:])
    # The statistics outputs never get a gradient: no zero tensors materialised for them.
    ctx.set_materialize_grads(False)
    fixed = stat_mean is not None
    ctx.save_for_backward(x, weight, stat_mean if fixed else stats, stat_var if fixed else None,
                          bias if act else None, post, mask)
    ctx.geom, ctx.fmt, ctx.spec, ctx.fixed, ctx.eps = geom, fmt, spec, fixed, inputs[6]
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    ctx.has_post, ctx.act, ctx.slope = post is not None, act, slope


def _backward(bwd_op, ctx, dy, *_):
    """The forward op's backward, through ``bwd_op`` (the backward op of its kind)."""
    x, weight, stats, var, bias, post, mask = ctx.saved_tensors
    if dy is None:  # y took no part in the loss
        return (None,) * 16
    need_dw = ctx.has_weight and ctx.needs_input_grad[1]
    need_db = ctx.has_bias and ctx.needs_input_grad[2]
    dy = match_layout(dy, _view(ctx.geom, ctx.fmt))
    dx, dw, db, dpost = bwd_op(dy, x, weight, stats, var, ctx.geom, ctx.fmt, ctx.spec,
                               ctx.fixed, need_dw, need_db, ctx.eps, bias, post, mask,
                               ctx.act, ctx.slope)
    return (dx if ctx.needs_input_grad[0] else None, dw if need_dw else None,
            db if need_db else None) + (None,) * 10 + (
        dpost if ctx.has_post and ctx.needs_input_grad[13] else None, None, None)


def _kernels(fn, opaque):
    """A triton_op's implementation of ``fn``: its launches through wrap_triton
    (launch.traceable) where every size is a plain int, since the launch plan reads them;
    symbolic sizes (a dynamic-shape trace) go to ``opaque``, the custom op, whose plan is
    chosen when it runs -- no recompile a size.  (Dynamo shows a symbolic size as an int
    to the Python it traces, so the choice is made here, below it.)"""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def impl(*args, **kwargs):
        if not _static(signature.bind(*args, **kwargs).arguments["geom"]):
            return opaque(*args, **kwargs)
        with traceable():
            return fn(*args, **kwargs)
    return impl


def _static(geom: List[int]) -> bool:
    """Every size a plain int."""
    return all(type(v) is int for v in geom)


norm_fwd = torch.library.custom_op("tritonnorm::norm_fwd", mutates_args=())(_fwd)
norm_fwd.register_fake(_fwd_fake)
norm_bwd = torch.library.custom_op("tritonnorm::norm_bwd", mutates_args=())(_bwd)
norm_bwd.register_fake(_bwd_fake)
norm_fwd.register_autograd(functools.partial(_backward, norm_bwd), setup_context=_setup_context)
if TRITON_OPS:
    norm_fwd_triton = torch.library.triton_op("tritonnorm::norm_fwd_triton",
                                              _kernels(_fwd, norm_fwd), mutates_args=())
    norm_bwd_triton = torch.library.triton_op("tritonnorm::norm_bwd_triton",
                                              _kernels(_bwd, norm_bwd), mutates_args=())
    norm_fwd_triton.register_autograd(functools.partial(_backward, norm_bwd_triton),
                                      setup_context=_setup_context)


def row_norm(x, weight, bias, view: RowView, spec, eps, stats=None, running=None,
             with_stats=False, act=None, post=None):
    """paths.row_norm while a trace runs: one forward op, of the triton_op kind where
    TRITON_OPS, whose running-statistics update is functional, then a traced in-place copy
    into the buffers."""
    geom = [view.N, view.G, view.Cg, view.S, view.sN, view.sG, view.sJ, view.sS]
    stat_mean, stat_var = stats if stats is not None else (None, None)
    rm, rv, momentum, nbt = running if running is not None else (None, None, None, None)
    op = norm_fwd_triton if TRITON_OPS else norm_fwd
    y, stats, new_rm, new_rv, _ = op(
        x, weight, bias, geom, FORMATS.index(view.memory_format), SPECS.index(spec), float(eps),
        stat_mean, stat_var, rm, rv, nbt, None if momentum is None else float(momentum),
        post, 0 if act is None else act.code, 0.0 if act is None else float(act.slope))
    if rm is not None:
        with torch.no_grad():
            rm.copy_(new_rm)
            rv.copy_(new_rv)
    return (y, *mean_rstd(stats)) if with_stats else y
