"""The eager path: autograd Functions around the kernels, and the no-grad launch.

Calls outside any trace come here (paths.row_norm, and the fused add's front end):
with something to differentiate, one autograd node per call (``EagerNorm``,
``AddNorm``) whose forward and backward launch through dispatch; with nothing to
differentiate, the launch alone, no node.  Gradients of gradients
(``create_graph=True``) of a row norm recompute it in torch ops (composite.py).
"""
import torch

from . import composite
from .dispatch import Epilogue, mean_rstd, row_backward, row_forward, run_plain, sign_mask
from .spec import RowView, match_layout


class EagerNorm(torch.autograd.Function):
    """A row norm's autograd node: the same launcher as the custom ops
    (dispatch.row_forward / row_backward), without their dispatch cost, and with the
    running statistics updated in place by the kernel -- no copy.  ``call`` = (view,
    spec, eps, stats, running, with_stats, act, plan) (see run) travels as one argument,
    and the statistics are outputs only when asked for: autograd's apply pays per argument
    and per output."""

    @staticmethod
    def forward(ctx, x, weight, bias, post, call):
        with_stats, act = call[5], call[6]
        mask = None if post is None else sign_mask(x, post, act)
        y, saved = _forward(x, weight, bias, post, call, mask)
        # With an activation the backward recomputes z: from the bias and the residual, or
        # the residual's part from the sign mask (relu, leaky_relu).  Without one, x and
        # the weight alone (each tensor saved costs host time).
        if act is None:
            ctx.save_for_backward(x, weight)
        else:
            ctx.save_for_backward(x, weight, bias, post if mask is None else None)
        # The statistics (and the mask) are this call's own tensors, which nobody else can
        # modify: no version check needed, so they ride on ctx.
        ctx.state = (call, saved, bias, mask, post is not None)   # bias: its shape, dtype
        if not with_stats:
            return y
        # One statistics output (mean_rstd splits it outside): a view as an output costs
        # autograd's engine more than the split does.
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(saved)
        return y, saved

    @staticmethod
    def backward(ctx, dy, *_):
        if dy is None:  # y took no part in the loss
            return None, None, None, None, None
        saved = ctx.saved_tensors
        x, weight = saved[:2]
        post = saved[3] if len(saved) > 2 else None
        call, saved, bias, mask, has_post = ctx.state
        view, spec, eps, stats = call[:4]
        act = call[6]
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():   # create_graph=True: gradients that are differentiable
            if has_post and post is None:
                raise RuntimeError("tritonnorm: no double backward through a relu/leaky_relu "
                                   "residual epilogue (its residual is not saved)")
            grads = composite.backward(x, weight, bias, dy, view, spec, eps, stats, need,
                                       act, post)
            return grads[:3] + ((grads[3] if has_post else None), None)
        need_dw = weight is not None and need[1]
        need_db = bias is not None and need[2]
        dy = match_layout(dy, view)
        epi = Epilogue.of(act, x, bias, has_post, post, mask)
        dx, dw, db = row_backward(x, dy, view, spec, weight, saved,
                                  need_dw, need_db, stats is not None, eps=eps, epi=epi)
        dpost = None
        if has_post and need[3]:
            dpost = dy if epi is None else epi.dr
        return dx if need[0] else None, dw, db, dpost, None


def _fast_apply():
    """EagerNorm.apply less its Python preamble (inspect-free on our forward, but it
    still unwraps every argument): the C apply, after unwrapping the tensors the
    way torch does.  Falls back to EagerNorm.apply where torch lacks the pieces."""
    try:
        c_apply = super(torch.autograd.Function, EagerNorm).apply
        unwrap = torch._C._functorch.unwrap_if_dead
    except AttributeError:
        return EagerNorm.apply

    def apply(x, weight, bias, post, call):   # paths.row_norm has ruled out transforms
        return c_apply(unwrap(x), weight if weight is None else unwrap(weight),
                       bias if bias is None else unwrap(bias),
                       post if post is None else unwrap(post), call)
    return apply


_apply = _fast_apply()


def row_norm(x, weight, bias, view: RowView, spec, eps, stats=None, running=None,
             with_stats=False, act=None, post=None):
    """paths.row_norm outside tracing and transforms: EagerNorm where a gradient is
    recorded, else the kernel alone (inference: no autograd node)."""
    return run(x, weight, bias, post, (view, spec, eps, stats, running, with_stats, act, None))


def run(x, weight, bias, post, call):
    """row_norm with its arguments as EagerNorm takes them: ``call`` = (view, spec, eps,
    stats, running, with_stats, act, plan), which a steady-state caller memoises (front):
    ``plan``, a dispatch.plain_launch of the call or None, skips row_forward's planning."""
    if torch.is_grad_enabled() and (x.requires_grad
                                    or (weight is not None and weight.requires_grad)
                                    or (bias is not None and bias.requires_grad)
                                    or (post is not None and post.requires_grad)):
        if not call[5]:
            return _apply(x, weight, bias, post, call)
        y, saved = _apply(x, weight, bias, post, call)
        return (y, *mean_rstd(saved))
    y, saved = _forward(x, weight, bias, post, call)
    return (y, *mean_rstd(saved)) if call[5] else y


def _forward(x, weight, bias, post, call, mask=None):
    """(y, statistics) of ``call``: its memoised plain launch, or row_forward."""
    view, spec, eps, stats, running, _, act, plan = call
    if plan is not None:
        return run_plain(plan, x, weight, bias)
    mean, var = stats if stats is not None else (None, None)
    return row_forward(x, view, spec, weight, bias, eps, mean, var, running, act=act,
                       post=post, mask=mask)


class AddNorm(torch.autograd.Function):
    """(y, h) of the fused add + norm; ``call`` = (view, spec, eps, act): y = act(norm(h))."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, call):
        view, spec, eps, act = call
        h = torch.empty_like(x)
        y, stats = row_forward(x, view, spec, weight, bias, eps, residual=residual, h=h,
                               act=act)
        ctx.set_materialize_grads(False)
        # h is an output: modifying it in place is caught.  The bias recomputes z for act.
        ctx.save_for_backward(h, weight, bias if act is not None else None)
        ctx.state = (call, stats, bias is not None)
        return y, h

    @staticmethod
    def backward(ctx, dy, dh):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "tritonnorm: add_layer_norm/add_rms_norm have no double backward; for "
                "gradients of gradients compute h = x + residual and call layer_norm/rms_norm")
        h, weight, bias = ctx.saved_tensors
        (view, spec, eps, act), stats, has_bias = ctx.state
        need = ctx.needs_input_grad
        if dy is None:   # only h reached the loss: both inputs get its gradient
            return dh if need[0] else None, dh if need[1] else None, None, None, None
        need_dw = weight is not None and need[2]
        need_db = has_bias and need[3]
        dres = None if dh is None else match_layout(dh, view)
        dx, dw, db = row_backward(h, match_layout(dy, view), view, spec, weight, stats,
                                  need_dw, need_db, eps=eps, dres=dres,
                                  epi=Epilogue.of(act, h, bias, False))
        return dx if need[0] else None, dx if need[1] else None, dw, db, None


def add_norm(x, residual, weight, bias, view: RowView, spec, eps, act=None):
    """(y, h) of the fused h = x + residual, y = act(norm(h)) (fused.py's kernel path):
    AddNorm where a gradient is recorded, else the kernel alone."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, residual, weight, bias)):
        return AddNorm.apply(x, residual, weight, bias, (view, spec, eps, act))
    h = torch.empty_like(x)
    y, _ = row_forward(x, view, spec, weight, bias, eps, residual=residual, h=h, act=act)
    return y, h
