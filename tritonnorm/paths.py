"""Which path a row-norm call takes, decided once per call:

* traced (torch.compile, torch.export, a fake or proxy dispatch mode): the
  torch.library ops of traced.py, which Inductor and export see;
* a torch.func transform or forward-mode AD: every norm in torch ops (composite.py),
  which torch differentiates;
* otherwise eager: the autograd Function or the no-grad launch of eager.py.

The traced and eager paths launch through the same launcher (dispatch.py), so they
agree bit for bit.
"""
import torch
from torch import Tensor

from . import _runtime, eager, traced
from .composite import row_norm as composite_row_norm
from .composite import transforming
from .spec import RowView


def tracing(x) -> bool:
    """True inside a trace: torch.compile/export, a fake or proxy dispatch mode, or a
    tensor subclass standing in for x."""
    return (torch.compiler.is_compiling()
            or torch.utils._python_dispatch._get_current_dispatch_mode() is not None
            or type(x) not in (torch.Tensor, torch.nn.Parameter))


# What plain_eager calls, bound once (a module attribute chain costs a lookup a link).
_is_compiling = torch.compiler.is_compiling   # the same function: dynamo still folds it
_dispatch_mode = torch.utils._python_dispatch._get_current_dispatch_mode
_jit_tracing = torch._C._is_tracing
_functorch_active = torch._C._are_functorch_transforms_active
_forward_ad = torch.autograd.forward_ad


def plain_eager(x) -> bool:
    """True when a call on ``x`` takes the eager path with the kernels: outside torch.compile,
    a dispatch mode, torch.jit.trace and torch.func transforms (composite.transforming),
    x a plain tensor where the kernels run (use_triton).  What a memoised steady-state call
    (front) checks first: about 0.4 us on a 2-core host, where tracing() + transforming()
    + torch_path() took 1.3."""
    return (not _is_compiling() and type(x) is Tensor
            and (x.is_cpu if _runtime.INTERPRET else x.is_cuda)
            and _dispatch_mode() is None and not _jit_tracing() and not _functorch_active()
            and _forward_ad._current_level < 0)


def row_norm(x, weight, bias, view: RowView, spec, eps, stats=None, running=None,
             with_stats=False, act=None, post=None):
    """Apply the row norm of ``spec`` over ``view``; returns y, or (y, mean, rstd)
    ``with_stats`` (mean and rstd per row, fp32; fp64 for fp64 x).

    ``stats`` (mean, var) are constants to apply (running statistics in eval);
    ``running`` = (running_mean, running_var, momentum, num_batches_tracked)
    are updated with the batch statistics (momentum None: cumulative average).
    ``act`` (activation.Act) and ``post`` (a residual in x's dtype and strides):
    y = act(norm(x) + post)."""
    if tracing(x):
        return traced.row_norm(x, weight, bias, view, spec, eps, stats, running, with_stats,
                               act, post)
    if transforming():
        y, mean, rstd = composite_row_norm(x, weight, bias, view, spec, eps, stats, running,
                                           act, post)
        return (y, mean, rstd) if with_stats else y
    return eager.row_norm(x, weight, bias, view, spec, eps, stats, running, with_stats, act,
                          post)
