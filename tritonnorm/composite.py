"""Every norm in torch ops, over the logical [N, G, Cg, S] view of a row-norm call.

The kernels give values and first derivatives.  What they cannot give runs here,
with torch's own autograd differentiating plain tensor ops:

* forward-mode AD: ``torch.func.jvp`` and dual tensors (``torch.autograd.forward_ad``);
* the other ``torch.func`` transforms (grad, vjp, vmap, jacrev, ...);
* gradients of gradients: a backward under ``create_graph=True`` recomputes the
  forward here and differentiates it, so double backward is exact to any order.

The arithmetic follows the kernels: fp32 accumulation (fp64 for fp64 input), the
biased variance, parameters cast to the accumulation type, the result in x's dtype.
"""
from typing import Optional

import torch
from torch import Tensor

from .activation import compose
from .spec import W_BY_CHANNEL, W_BY_ELEMENT, W_BY_ROW, ReductionSpec, RowView


def transforming() -> bool:
    """True when a torch.func transform or a forward-AD level is active: the kernels'
    autograd.Function cannot serve those, the torch ops here can."""
    return (torch._C._are_functorch_transforms_active()
            or torch.autograd.forward_ad._current_level >= 0)


def rows4(t: Tensor, view: RowView, spec: ReductionSpec) -> Tensor:
    """``t`` (x's shape) as the logical [N, G, Cg, S] tensor the kernels address."""
    if spec.w_mode == W_BY_ROW:   # BatchNorm: rows are channels, the batch is the j axis
        return t.reshape(view.Cg, view.G, view.S).transpose(0, 1).unsqueeze(0)
    return t.reshape(view.N, view.G, view.Cg, view.S)


def unrows4(t4: Tensor, shape, spec: ReductionSpec) -> Tensor:
    """The inverse of rows4, to ``shape``."""
    if spec.w_mode == W_BY_ROW:
        return t4[0].transpose(0, 1).reshape(shape)
    return t4.reshape(shape)


def param4(p: Tensor, view: RowView, spec: ReductionSpec) -> Tensor:
    """An affine parameter broadcast against the [N, G, Cg, S] view."""
    shape = {W_BY_ELEMENT: (1, 1, view.Cg, 1), W_BY_CHANNEL: (1, view.G, view.Cg, 1),
             W_BY_ROW: (1, view.G, 1, 1)}[spec.w_mode]
    return p.reshape(shape)


def row_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], view: RowView,
             spec: ReductionSpec, eps: float, stats=None, running=None, act=None, post=None):
    """(y, mean, rstd) as the kernels compute them; mean and rstd per row, detached.
    ``act`` and ``post``: y = act(norm(x) + post), torch's composition (activation.compose).

    ``stats`` = (mean, var) per g: constants (running statistics in eval).
    ``running`` = (running_mean, running_var, momentum, num_batches_tracked): updated
    in place with the batch statistics (BatchNorm; momentum None: 1 / tracked)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x4 = rows4(x, view, spec).to(acc)
    if stats is not None:
        g = (1, view.G, 1, 1)
        mean = stats[0].to(acc).reshape(g)
        rstd = torch.rsqrt(stats[1].to(acc).reshape(g) + eps)
        xhat = (x4 - mean) * rstd
    elif spec.center:
        var, mean = torch.var_mean(x4, dim=(2, 3), correction=0, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        xhat = (x4 - mean) * rstd
        if running is not None:
            _update_running(running, mean, var, view.Cg * view.S)
    else:
        mean = torch.zeros((), dtype=acc, device=x.device)
        rstd = torch.rsqrt(x4.square().mean(dim=(2, 3), keepdim=True) + eps)
        xhat = x4 * rstd
    y4 = xhat.to(x.dtype).to(acc) if spec.cast_xhat else xhat
    if weight is not None:
        y4 = y4 * param4(weight.to(acc), view, spec)
    if bias is not None:
        y4 = y4 + param4(bias.to(acc), view, spec)
    y = compose(unrows4(y4.to(x.dtype), x.shape, spec), post, act)
    rows = view.N * view.G if stats is None else view.G
    return y, mean.detach().expand(rstd.shape).reshape(rows), rstd.detach().reshape(rows)


@torch.no_grad()
def _update_running(running, mean, var, n: int) -> None:
    """torch's BatchNorm update: momentum average with the unbiased batch variance."""
    rm, rv, momentum, tracked = running[:4]
    f = (1.0 / tracked) if momentum is None else momentum
    mean = mean.detach().reshape(-1)
    var = var.detach().reshape(-1) * (n / max(n - 1, 1))
    rm.mul_(1 - f).add_((f * mean).to(rm.dtype))
    rv.mul_(1 - f).add_((f * var).to(rv.dtype))


def grads_of(forward, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
             dy: Tensor, needs, residual: Optional[Tensor] = None, real_bias: bool = False):
    """(dx, dw, db[, dresidual]) of ``forward(x, weight, bias[, residual])`` against ``dy``,
    as differentiable functions of x, weight, dy (and bias, residual): a backward under
    create_graph=True.  Unless ``real_bias`` (an activation after the norm makes the
    gradients depend on it), the bias's value enters no gradient: a zero stands in."""
    with torch.enable_grad():
        if bias is not None and not real_bias:
            bias = torch.zeros_like(bias, requires_grad=True)
        args = (x, weight, bias) if residual is None else (x, weight, bias, residual)
        y = forward(*args)
        wanted = [(needs[i] and t is not None, t) for i, t in enumerate(args)]
        inputs = [t for want, t in wanted if want]
        grads = iter(torch.autograd.grad(y, inputs, dy, create_graph=True, allow_unused=True)
                     if inputs else ())
        return tuple(next(grads) if want else None for want, _ in wanted)


def backward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], dy: Tensor,
             view: RowView, spec: ReductionSpec, eps: float, stats, needs, act=None, post=None):
    """The gradients of row_norm above, differentiable (see grads_of); with ``post``,
    the residual's gradient comes fourth."""
    def forward(x, w, b, r=None):
        return row_norm(x, w, b, view, spec, eps, stats, act=act, post=r)[0]
    return grads_of(forward, x, weight, bias, dy, needs, post, real_bias=act is not None)
