"""SyncBatchNorm: batch statistics over the global batch through torch.distributed.

Forward: local (count, mean, M2) per channel from the BatchNorm stats kernel,
ONE all_gather_into_tensor of the packed [C, 3] triples, then the apply kernel
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
import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from . import functional as TF
from ._runtime import use_triton
from .dispatch import acc_dtype, backward_partials, forward_partials, row_backward, row_forward
from .modules import batch_step
from .spec import BATCH, batch_layout, match_layout


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
    def forward(ctx, x, weight, bias, running_mean, running_var, tracked, momentum, eps, group):
        c = x.shape[1]
        x, view = batch_layout(x)
        local = _local_stats(x, view, c)
        world = dist.get_world_size(group)
        gathered = torch.empty(world * c, 3, dtype=local.dtype, device=local.device)
        dist.all_gather_into_tensor(gathered, local, group=group)
        partials = gathered.view(world, c, 3).transpose(0, 1).contiguous()   # (C, world, 3)
        count = partials[0, :, 0].sum()                            # global count, on the device
        running = None
        if running_mean is not None:
            running = (running_mean, running_var, momentum, tracked)
        y, mean, rstd = row_forward(x, view, BATCH, weight, bias, eps, running=running,
                                    partials=partials)
        ctx.save_for_backward(x, weight, mean, rstd, count)
        ctx.view, ctx.group, ctx.has_bias = view, group, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd, count = ctx.saved_tensors
        view = ctx.view
        dy = match_layout(dy, view)
        if x.numel():
            sums = backward_partials(x, dy, view, BATCH, weight, mean, rstd).sum(1)
        else:
            sums = torch.zeros(view.G, 2, dtype=mean.dtype, device=mean.device)
        dist.all_reduce(sums, group=ctx.group)
        sums = (sums / count.clamp_min(1)).unsqueeze(1)           # global means, (C, 1, 2)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx, dw, db = row_backward(x, dy, view, BATCH, weight, mean, rstd, need_dw,
                                  need_db and ctx.has_bias, partials=sums, count=1.0)
        return (dx if need_dx else None), dw, db, None, None, None, None, None, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm with Triton kernels and one collective per pass.

    Unlike torch's, training without an initialised process group is an error
    (torch silently stops synchronising), and CPU tensors work with gloo."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        momentum, tracked, bn_training, running_mean, running_var = batch_step(self)
        group = None
        if bn_training and self.training:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    "SyncBatchNorm in training needs an initialised torch.distributed process "
                    "group (torch.distributed.init_process_group); call .eval() for inference, "
                    "or use BatchNorm for single-process training")
            group = self.process_group or dist.group.WORLD
            if dist.get_world_size(group) > 1 and not use_triton(input):
                raise ValueError(
                    "SyncBatchNorm expected input tensor on a GPU, or on the CPU with "
                    "TRITON_INTERPRET=1 set before tritonnorm is imported")
        if group is None or dist.get_world_size(group) == 1:
            return TF.batch_norm_tracked(input, running_mean, running_var, self.weight, self.bias,
                                         bn_training, momentum, self.eps, tracked)
        return SyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                           running_var, tracked, momentum, self.eps, group)

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
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out
