"""SyncBatchNorm over gloo processes matches BatchNorm over the whole batch."""
import copy
import multiprocessing as mp
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import dist_worker
import tritonnorm
from dist_worker import SPLITS, global_batch

TIMEOUT_S = 300  # a hang fails the test instead of stalling CI


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2, momentum=None), nn.Flatten(),
                         nn.Linear(40, 3), nn.BatchNorm1d(3))


def spawn(job: str, world: int, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=dist_worker.run, args=(r, world, port, job, str(tmp_path)))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"{job}: {len(hung)} of {world} ranks still running after {TIMEOUT_S}s"
    assert [p.exitcode for p in procs] == [0] * world, f"{job}: exit codes {[p.exitcode for p in procs]}"
    return [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(world)]


def _reference(momentum, steps=2):
    bn = nn.BatchNorm2d(3, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    out = []
    for step in range(steps):
        x, dy = global_batch(step)
        x.requires_grad_()
        bn.weight.grad = bn.bias.grad = None
        y = bn(x)
        y.backward(dy)
        out.append(dict(y=y.detach(), dx=x.grad, dw=bn.weight.grad.clone(), db=bn.bias.grad.clone(),
                        mean=bn.running_mean.clone(), var=bn.running_var.clone()))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_sync_batchnorm_matches_batchnorm_on_the_full_batch(world, tmp_path):
    ranks = spawn("sync_vs_batchnorm", world, tmp_path)
    close = dict(atol=2e-5, rtol=2e-5)
    for split in SPLITS[world]:
        ref = _reference(None if split == "uneven" else 0.1)
        for fmt in ("contiguous", "channels_last"):
            for step, want in enumerate(ref):
                got = [r[(split, fmt)][step] for r in ranks]
                where = f"{split}/{fmt}/step {step}"
                torch.testing.assert_close(torch.cat([g["y"] for g in got]), want["y"], **close, msg=where)
                torch.testing.assert_close(torch.cat([g["dx"] for g in got]), want["dx"], **close, msg=where)
                torch.testing.assert_close(sum(g["dw"] for g in got), want["dw"], **close, msg=where)
                torch.testing.assert_close(sum(g["db"] for g in got), want["db"], **close, msg=where)
                for g in got:
                    assert not torch.isnan(g["y"]).any() and not torch.isnan(g["dx"]).any()
                    torch.testing.assert_close(g["mean"], want["mean"], **close, msg=where)
                    torch.testing.assert_close(g["var"], want["var"], **close, msg=where)
                    assert int(g["nbt"]) == step + 1


def test_activation_and_residual_epilogues_over_two_ranks(tmp_path):
    """act(bn(x) + r) over the global batch: outputs, the gradients of x, r, weight and
    bias, and the running statistics, with an uneven split and an empty rank."""
    ranks = spawn("sync_epilogue", 2, tmp_path)
    close = dict(atol=2e-5, rtol=2e-5)
    for act, residual in dist_worker.EPILOGUES:
        bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
            bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        (x, dy), r = global_batch(0), global_batch(1)[0]
        x, r = x.requires_grad_(), r.requires_grad_(residual)
        z = bn(x) + r if residual else bn(x)
        y = getattr(F, act)(z)
        y.backward(dy)
        for split in ("uneven", "one-empty"):
            got = [rank[(act, split)] for rank in ranks]
            where = f"{act}/{split}"
            torch.testing.assert_close(torch.cat([g["y"] for g in got]), y.detach(), **close, msg=where)
            torch.testing.assert_close(torch.cat([g["dx"] for g in got]), x.grad, **close, msg=where)
            if residual:
                torch.testing.assert_close(torch.cat([g["dr"] for g in got]), r.grad, **close,
                                           msg=where)
            torch.testing.assert_close(sum(g["dw"] for g in got), bn.weight.grad, **close, msg=where)
            torch.testing.assert_close(sum(g["db"] for g in got), bn.bias.grad, **close, msg=where)
            for g in got:
                torch.testing.assert_close(g["mean"], bn.running_mean, **close, msg=where)
                torch.testing.assert_close(g["var"], bn.running_var, **close, msg=where)


def test_one_collective_forward_one_backward_none_in_eval_and_no_host_sync(tmp_path):
    for counts in spawn("count_collectives", 2, tmp_path):
        gather = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
        assert counts == dict(forward=[gather], backward=["all_reduce"], eval=[],
                              syncs=[])


def test_process_group_subgroup(tmp_path):
    r0, r1, r2 = spawn("subgroup", 3, tmp_path)
    assert r2 is None
    x, dy = global_batch(0)
    bn = nn.BatchNorm2d(3)
    xs = x[:5].clone().requires_grad_()
    y = bn(xs)
    y.backward(dy[:5])
    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), y, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(torch.cat([r0["dx"], r1["dx"]]), xs.grad, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(r0["var"], bn.running_var)


def test_ddp_training_matches_single_process(tmp_path):
    ranks = spawn("ddp_training", 2, tmp_path)
    ref = make_model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(3):
        x, _ = global_batch(step)
        opt.zero_grad()
        ref(x).square().mean().backward()
        opt.step()
    for name, want in ref.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r[name], want, atol=1e-4, rtol=1e-4, msg=name)


def test_world_of_one_behaves_as_batchnorm(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ours = tritonnorm.SyncBatchNorm(3)
        ref = nn.BatchNorm2d(3)
        for step in range(2):
            x, dy = global_batch(step)
            torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.running_var, ref.running_var)
    finally:
        dist.destroy_process_group()


def test_training_without_a_process_group_normalises_the_local_batch_as_torch():
    assert not dist.is_initialized()
    ours, ref = tritonnorm.SyncBatchNorm(3), nn.SyncBatchNorm(3)
    for step in range(2):
        x, dy = global_batch(step)
        xs = [x.clone().requires_grad_() for _ in range(2)]
        ys = [m(xi) for m, xi in zip((ours, ref), xs)]
        for yi in ys:
            yi.backward(dy)
        torch.testing.assert_close(ys[0], ys[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xs[0].grad, xs[1].grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.running_var, ref.running_var)
    assert ours.eval()(x).shape == x.shape


def test_second_order_and_forward_mode_over_two_ranks_match_batchnorm(tmp_path):
    """fp64 against BatchNorm on the global batch: a gradient-penalty step, whose
    backward differentiates the backward with its cross-rank sums, and a jvp."""
    ranks = spawn("second_order", 2, tmp_path)
    bn = nn.BatchNorm2d(3, track_running_stats=False).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x, k = (t.double() for t in global_batch(0))
    x.requires_grad_()
    y = bn(x)
    (gx,) = torch.autograd.grad((y.square() * k).sum(), x, create_graph=True)
    (y.sum() + gx.square().sum()).backward()
    _, tangent = torch.func.jvp(bn, (x.detach(),), (global_batch(1)[0].double(),))
    close = dict(atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), x.grad, **close)
    torch.testing.assert_close(sum(r["dw"] for r in ranks), bn.weight.grad, **close)
    torch.testing.assert_close(sum(r["db"] for r in ranks), bn.bias.grad, **close)
    torch.testing.assert_close(torch.cat([r["tangent"] for r in ranks]), tangent, **close)


def test_convert_sync_batchnorm_keeps_weights_and_buffers():
    model = make_model()
    model[1].num_batches_tracked.fill_(7)
    model[1].running_mean.fill_(0.25)
    before = copy.deepcopy(model.state_dict())
    tritonnorm.convert(model)  # our BatchNorm first: both kinds convert
    model = tritonnorm.SyncBatchNorm.convert_sync_batchnorm(model)
    assert [type(m) for m in model if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [tritonnorm.SyncBatchNorm] * 3
    assert isinstance(model[1], nn.SyncBatchNorm)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_convert_with_sync_batchnorm_reports_it():
    model, report = tritonnorm.convert(make_model(), sync_batchnorm=True, return_report=True)
    assert sum(r.after == "tritonnorm.SyncBatchNorm" for r in report) == 3
    assert isinstance(model[4], tritonnorm.SyncBatchNorm)
