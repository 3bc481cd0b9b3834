"""Jobs run by spawned gloo processes for the SyncBatchNorm tests."""
import os
from datetime import timedelta

import torch

# One global batch that every rank slices; per world size: even, uneven, one empty rank.
SPLITS = {2: {"even": [3, 3], "uneven": [1, 5], "one-empty": [0, 6]},
          3: {"even": [2, 2, 2], "uneven": [1, 2, 3], "one-empty": [2, 0, 4]}}
SHAPE = (6, 3, 4, 5)


def global_batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(SHAPE, generator=g) * 2 + 1
    return x, torch.randn(SHAPE, generator=g)


def _slice(t, sizes, rank):
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def sync_vs_batchnorm(rank, world):
    """For each split and layout: per-rank outputs, input grads, param grads, buffers."""
    import tritonnorm
    out = {}
    for split, sizes in SPLITS[world].items():
        for fmt in ("contiguous", "channels_last"):
            m = tritonnorm.SyncBatchNorm(3, momentum=None if split == "uneven" else 0.1)
            with torch.no_grad():
                m.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
                m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
            steps = []
            for step in range(2):
                x, dy = (_slice(t, sizes, rank) for t in global_batch(step))
                if fmt == "channels_last":
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_()
                m.weight.grad = m.bias.grad = None
                y = m(x)
                y.backward(dy)
                steps.append(dict(y=y.detach(), dx=x.grad, dw=m.weight.grad.clone(), db=m.bias.grad.clone(),
                                  mean=m.running_mean.clone(), var=m.running_var.clone(),
                                  nbt=m.num_batches_tracked.clone()))
            out[(split, fmt)] = steps
    return out


def count_collectives(rank, world):
    """Collectives in one training forward, its backward, and one eval forward;
    and the host syncs of all three (momentum=None: the counts stay on the device)."""
    import torch.distributed as dist

    import tritonnorm
    from host_sync import host_syncs
    names = ["all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce",
             "reduce_scatter_tensor",
             "broadcast", "reduce", "all_to_all_single", "barrier"]
    calls = []
    for name in names:
        real = getattr(dist, name, None)
        if real is None:   # all_gather_single: torch >= 2.13
            continue
        setattr(dist, name, lambda *a, _n=name, _f=real, **k: (calls.append(_n), _f(*a, **k))[1])
    m = tritonnorm.SyncBatchNorm(3, momentum=None)
    x, dy = (_slice(t, SPLITS[world]["uneven"], rank) for t in global_batch(0))
    with host_syncs() as syncs:
        y = m(x.requires_grad_())
        forward = list(calls)
        calls.clear()
        y.backward(dy)
        backward = list(calls)
        calls.clear()
        m.eval()
        m(x)
    return dict(forward=forward, backward=backward, eval=list(calls), syncs=syncs)


def subgroup(rank, world):
    """SyncBatchNorm over process_group = ranks {0, 1} of a world of 3."""
    import torch.distributed as dist

    import tritonnorm
    group = dist.new_group([0, 1])
    if rank == 2:
        return None
    m = tritonnorm.SyncBatchNorm(3, process_group=group)
    x, dy = (_slice(t, [2, 3, 1], rank) for t in global_batch(0))
    y = m(x.requires_grad_())
    y.backward(dy)
    return dict(y=y.detach(), dx=x.grad, mean=m.running_mean, var=m.running_var)


def ddp_training(rank, world):
    """A converted model trained under DDP on this rank's half of each batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import tritonnorm
    from test_sync_batchnorm import make_model
    model = tritonnorm.convert(make_model(), sync_batchnorm=True)
    # DDP refuses any nn.SyncBatchNorm in a CPU module, a guard for torch's CUDA-only
    # implementation; ours runs on the CPU under the interpreter, so lift the guard here.
    DDP._passing_sync_batchnorm_handle = lambda self, module: None
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step in range(3):
        x, _ = global_batch(step)
        local = x.chunk(world)[rank]
        opt.zero_grad()
        ddp(local).square().mean().backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def second_order(rank, world):
    """fp64, uneven split: a gradient-penalty step (create_graph=True, so double
    backward with its cross-rank terms) and a forward-mode tangent (torch.func.jvp)."""
    import tritonnorm
    m = tritonnorm.SyncBatchNorm(3, track_running_stats=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
        m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    sizes = SPLITS[world]["uneven"]
    x, k = (_slice(t, sizes, rank).double() for t in global_batch(0))
    x.requires_grad_()
    y = m(x)
    (gx,) = torch.autograd.grad((y.square() * k).sum(), x, create_graph=True)
    (y.sum() + gx.square().sum()).backward()
    v = _slice(global_batch(1)[0], sizes, rank).double()
    _, tangent = torch.func.jvp(m, (x.detach(),), (v,))
    return dict(dx=x.grad, dw=m.weight.grad, db=m.bias.grad, tangent=tangent)


# (activation, residual) cases of the epilogue job: the sign mask, the residual read
# again in the backward, an activation alone.
EPILOGUES = [("relu", True), ("silu", True), ("gelu", False)]


def sync_epilogue(rank, world):
    """act(sync_batch_norm(x) + r) for each EPILOGUES case and split: per-rank y, dx, dr."""
    import tritonnorm
    out = {}
    for act, residual in EPILOGUES:
        for split in ("uneven", "one-empty"):
            sizes = SPLITS[world][split]
            m = tritonnorm.SyncBatchNorm(3, activation=act)
            with torch.no_grad():
                m.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
                m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
            x, dy = (_slice(t, sizes, rank) for t in global_batch(0))
            r = _slice(global_batch(1)[0], sizes, rank)
            x, r = x.clone().requires_grad_(), r.clone().requires_grad_(residual)
            y = m(x, r if residual else None)
            y.backward(dy)
            out[(act, split)] = dict(y=y.detach(), dx=x.grad, dr=r.grad, dw=m.weight.grad,
                                     db=m.bias.grad, mean=m.running_mean, var=m.running_var)
    return out


JOBS = {f.__name__: f for f in (sync_vs_batchnorm, count_collectives, subgroup, ddp_training,
                                 second_order, sync_epilogue)}


def run(rank, world, port, job, out_dir):
    # The ranks hold CPU tensors and talk over gloo, also on a GPU machine (one GPU
    # cannot host several NCCL ranks), so tritonnorm runs under the interpreter here;
    # this must be set before tritonnorm is imported.
    os.environ["TRITON_INTERPRET"] = "1"
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    try:
        torch.save(JOBS[job](rank, world), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()
