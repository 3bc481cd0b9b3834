"""SyncBatchNorm: batch statistics over the global batch through torch.distributed.

Forward: local (count, mean, M2) per channel from the BatchNorm stats kernel,
ONE all_gather (all_gather_single, or all_gather_into_tensor before torch 2.13)
of the packed [C, 3] triples, then the apply kernel
merges the world's triples (Chan) and normalises; the running statistics take
the global count.  Backward: local (sum w*dy*xhat, sum w*dy), ONE packed
all_reduce, then dx.  dweight and dbias stay local (DDP reduces them).

Why gather triples rather than all_reduce sums: an all_reduce of
(count, sum x, sum x^2) loses the variance to cancellation when |mean| >> std,
and an all_reduce of sums shifted by a common pivot needs that pivot agreed
first, i.e. a second collective.  Chan's merge of gathered (count, mean, M2)
is exact-stable in one collective, for 3 * C * world floats -- tiny next to
the activations.  Counts stay on the device: no host sync, so a training step
can be captured in a CUDA graph.
"""
import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from . import checks, composite
from . import functional as TF
from .activation import compose, outside
from ._runtime import use_triton
from .dispatch import (Epilogue, backward_partials, forward_partials, row_backward, row_forward,
                       sign_mask)
from .modules import (ACTIVATION_DOC, COMMON_DOC, EPILOGUE_DEFAULTS, Activated, batch_step,
                      torch_signature)
from .plan import acc_dtype
from .spec import BATCH, batch_layout, match_layout


def _all_gather(out: Tensor, local: Tensor, group) -> None:
    """Gather equal-sized tensors into one: all_gather_single where torch has it
    (2.13 deprecates all_gather_into_tensor), all_gather_into_tensor before."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, local, group=group)


def merge_partials(part: Tensor) -> Tensor:
    """Merge (rows, P, 3) Chan partials into (rows, 3): exact parallel formula."""
    c, m, q = part.unbind(-1)
    cnt = c.sum(1)
    mean = (c * m).sum(1) / cnt.clamp_min(1)
    m2 = q.sum(1) + (c * (m - mean[:, None]).square()).sum(1)
    return torch.stack([cnt, mean, m2], dim=1)


def _local_stats(x: Tensor, view, c: int) -> Tensor:
    """This rank's (count, mean, M2) per channel; zeros for an empty batch."""
    if x.numel() == 0:
        return torch.zeros(c, 3, dtype=acc_dtype(x), device=x.device)
    return merge_partials(forward_partials(x, view, BATCH))


class SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, tracked, momentum, eps, group,
                post, act):
        c = x.shape[1]
        x, view = batch_layout(x)
        if post is not None:
            post = match_layout(post, view)
        mask = sign_mask(x, post, act)
        local = _local_stats(x, view, c)
        world = dist.get_world_size(group)
        gathered = torch.empty(world * c, 3, dtype=local.dtype, device=local.device)
        _all_gather(gathered, local, group)
        partials = gathered.view(world, c, 3).transpose(0, 1).contiguous()   # (C, world, 3)
        count = partials[0, :, 0].sum()                            # global count, on the device
        running = None
        if running_mean is not None:
            running = (running_mean, running_var, momentum, tracked)
        y, stats = row_forward(x, view, BATCH, weight, bias, eps, running=running,
                               partials=partials, act=act, post=post, mask=mask)
        # The residual recomputes z for the backward, unless the sign mask stands in for it.
        ctx.save_for_backward(x, weight, stats, count,
                              post if act is not None and mask is None else None)
        ctx.view, ctx.group, ctx.bias, ctx.eps, ctx.act, ctx.mask = view, group, bias, eps, act, mask
        ctx.has_post = post is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, stats, count, post = ctx.saved_tensors
        act = ctx.act
        if torch.is_grad_enabled():   # create_graph=True: differentiable gradients
            if ctx.has_post and post is None:
                raise RuntimeError("tritonnorm: no double backward through a relu/leaky_relu "
                                   "residual epilogue (its residual is not saved)")

            def forward(x, w, b, r=None):
                return composite_forward(x, w, b, ctx.eps, ctx.group, act=act, post=r)
            grads = composite.grads_of(forward, x, weight, ctx.bias, dy, ctx.needs_input_grad[:3]
                                       + ctx.needs_input_grad[9:10], post, act is not None)
            return grads[:3] + (None,) * 6 + ((grads[3] if ctx.has_post else None), None)
        view = ctx.view
        dy = match_layout(dy, view)
        epi = Epilogue.of(act, x, ctx.bias, ctx.has_post, post, ctx.mask)
        if x.numel():
            sums = backward_partials(x, dy, view, BATCH, weight, stats, epi).sum(1)
        else:
            sums = torch.zeros(view.G, 2, dtype=stats.dtype, device=stats.device)
        dist.all_reduce(sums, group=ctx.group)
        sums = (sums / count.clamp_min(1)).unsqueeze(1)           # global means, (C, 1, 2)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx, dw, db = row_backward(x, dy, view, BATCH, weight, stats, need_dw,
                                  need_db and ctx.bias is not None, partials=sums, count=1.0,
                                  epi=epi)
        dpost = None
        if ctx.has_post and ctx.needs_input_grad[9]:
            dpost = dy if epi is None else epi.dr
        return (dx if need_dx else None), dw, db, None, None, None, None, None, None, dpost, None


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of ``group``, differentiable in both modes and to any
    order: the sum is linear, so its backward and its tangent are the same sum
    (the backward sums each rank's share of a loss summed over the ranks)."""

    @staticmethod
    def forward(t, group):
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.group = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group), None

    @staticmethod
    def jvp(ctx, tangent, _):
        out = tangent.clone()
        dist.all_reduce(out, group=ctx.group)
        return out


def composite_forward(x, weight, bias, eps, group, running=None, act=None, post=None):
    """SyncBatchNorm in torch ops, with a differentiable all_reduce: the path for
    forward-mode AD, torch.func transforms and gradients of gradients, whose
    cross-rank terms need the same sums again.  ``running`` as in row_forward:
    updated in place with the global statistics."""
    def all_reduce(t, group):
        return _AllReduceSum.apply(t, group)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c, s = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    x3 = x.reshape(n, c, s).transpose(0, 1).reshape(c, n * s).to(acc)     # [C, local batch]
    count = x3.new_full((1,), float(n * s))
    dist.all_reduce(count, group=group)
    mean = all_reduce(x3.sum(1), group=group) / count
    d = x3 - mean[:, None]
    var = all_reduce(d.square().sum(1), group=group) / count
    y3 = d * torch.rsqrt(var + eps)[:, None]
    if weight is not None:
        y3 = y3 * weight.to(acc)[:, None]
    if bias is not None:
        y3 = y3 + bias.to(acc)[:, None]
    if running is not None:
        with torch.no_grad():
            rm, rv, momentum, tracked = running
            f = (1.0 / tracked) if momentum is None else momentum
            unbiased = var.detach() * count / (count - 1).clamp_min(1)
            rm.mul_(1 - f).add_((f * mean.detach()).to(rm.dtype))
            rv.mul_(1 - f).add_((f * unbiased).to(rv.dtype))
    return compose(y3.reshape(c, n, s).transpose(0, 1).reshape(x.shape).to(x.dtype), post, act)


@torch_signature(COMMON_DOC + ACTIVATION_DOC, **EPILOGUE_DEFAULTS)
class SyncBatchNorm(Activated, nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm with Triton kernels and one collective per pass: input
    ``(N, C, *)``, each channel normalised over the batch and positions of every rank of
    ``process_group`` in training, by the running statistics in eval.  Same arguments,
    buffers and state_dict; ``convert_sync_batchnorm`` as torch's.

    As torch's, it normalises by the local batch when no process group is initialised;
    unlike torch's, CPU tensors work with gloo (under TRITON_INTERPRET=1).  dw and db sum
    this rank's batch, as torch's do (DDP averages them)."""

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """act(sync_batch_norm(input) + residual)."""
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        momentum, tracked, bn_training, running_mean, running_var = batch_step(self)
        group = None
        if bn_training and self.training and dist.is_available() and dist.is_initialized():
            group = self.process_group or dist.group.WORLD
            if dist.get_world_size(group) > 1 and not use_triton(input):
                raise ValueError(
                    "SyncBatchNorm expected input tensor on a GPU, or on the CPU with "
                    "TRITON_INTERPRET=1 set before tritonnorm is imported")
        act = self.act()
        if group is None or dist.get_world_size(group) == 1:
            return TF.batch_norm_tracked(input, running_mean, running_var, self.weight, self.bias,
                                         bn_training, momentum, self.eps, tracked, act, residual)
        if outside(input, residual):   # torch ops for the add and activation
            return compose(self._sync(input, None, None, running_mean, running_var, momentum,
                                      tracked, group), residual, act)
        return self._sync(input, residual, act, running_mean, running_var, momentum, tracked,
                          group)

    def _sync(self, input, residual, act, running_mean, running_var, momentum, tracked, group):
        eps, momentum = checks.number(self.eps), checks.number(momentum)
        if composite.transforming():   # torch.func transforms, forward-mode AD
            running = None if running_mean is None else (running_mean, running_var, momentum,
                                                         tracked)
            return composite_forward(input, self.weight, self.bias, eps, group, running,
                                     act, residual)
        return SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                           running_var, tracked, momentum, eps, group,
                                           residual, act)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every BatchNorm*D (torch's or ours) in ``module`` by this class,
        keeping weights, buffers (num_batches_tracked too) and the training flag."""
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and type(module) is not cls:
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group)
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            for name in ("activation", "negative_slope", "approximate"):
                setattr(out, name, getattr(module, name, getattr(cls, name)))
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out
