"""autograd.Function wrapping the row-norm kernels."""
import torch
from torch.autograd.function import once_differentiable

from .dispatch import row_backward, row_forward
from .spec import ReductionSpec, RowView, match_layout


class RowNormFunction(torch.autograd.Function):
    """y = norm(x) * weight + bias over the rows of a [N, G, Cg, S] view.

    ``stats`` (mean, rstd), when given, are constants applied instead of batch
    statistics (running statistics in eval).  ``running`` is passed to
    row_forward to update running statistics in place (BatchNorm training)."""

    @staticmethod
    def forward(ctx, x, weight, bias, view: RowView, spec: ReductionSpec, eps: float, stats,
                running):
        mean, rstd = stats if stats is not None else (None, None)
        y, mean, rstd = row_forward(x, view, spec, weight, bias, eps, mean, rstd, running)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.view, ctx.spec, ctx.fixed = view, spec, stats is not None
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(mean, rstd)
        return y, mean, rstd

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _drstd):
        x, weight, mean, rstd = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx, dw, db = row_backward(
            x, match_layout(dy, ctx.view), ctx.view, ctx.spec, weight, mean, rstd,
            need_dw, need_db and ctx.has_bias, ctx.fixed)
        return (dx if need_dx else None), dw, db, None, None, None, None, None


def row_norm(x, weight, bias, view, spec, eps, stats=None, running=None):
    """Apply the row norm; returns (y, mean, rstd)."""
    return RowNormFunction.apply(x, weight, bias, view, spec, eps, stats, running)
