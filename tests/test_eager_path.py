"""Eager calls take the fast path (a plain autograd.Function, or no autograd node at
all when nothing needs a gradient); traced calls take the torch.library custom ops.
Both launch the same kernels through one launcher, so they agree bit for bit."""
import copy

import pytest
import torch

import tritonnorm
from conftest import DEVICE
from tritonnorm import paths, traced

# name -> (layer factory, input shape, channels_last, training)
CASES = {
    "layer": (lambda: tritonnorm.LayerNorm(40), (6, 40), False, True),
    "layer 2-d shape": (lambda: tritonnorm.LayerNorm((4, 10)), (3, 4, 10), False, True),
    "rms": (lambda: tritonnorm.RMSNorm(40), (6, 40), False, True),
    "group": (lambda: tritonnorm.GroupNorm(3, 6), (2, 6, 5, 3), False, True),
    "group nhwc": (lambda: tritonnorm.GroupNorm(3, 6), (2, 6, 5, 3), True, True),
    "instance": (lambda: tritonnorm.InstanceNorm2d(6, affine=True, track_running_stats=True),
                 (2, 6, 5, 3), False, True),
    "batch train": (lambda: tritonnorm.BatchNorm2d(6), (4, 6, 5, 3), False, True),
    "batch train nhwc": (lambda: tritonnorm.BatchNorm2d(6), (4, 6, 5, 3), True, True),
    "batch cumulative": (lambda: tritonnorm.BatchNorm1d(6, momentum=None), (4, 6, 7), False, True),
    "batch eval": (lambda: tritonnorm.BatchNorm2d(6), (4, 6, 5, 3), False, False),
}
DTYPES = [torch.float32, torch.bfloat16]


def _run(layer, x, g):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(g)
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    return y, grads, [b.clone() for b in layer.buffers()]


def _make(name, dtype):
    make, shape, cl, training = CASES[name]
    torch.manual_seed(0)
    layer = make().to(DEVICE, dtype).train(training)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    x = torch.randn(shape, dtype=dtype, device=DEVICE) * 3 + 1
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return layer, x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_fast_path_and_custom_ops_agree_bitwise(name, dtype, monkeypatch):
    layer, x = _make(name, dtype)
    g = torch.randn(x.shape, dtype=dtype, device=DEVICE)
    twin = copy.deepcopy(layer)
    y_fast, grads_fast, bufs_fast = _run(layer, x, g)
    assert type(y_fast.grad_fn).__name__ == "EagerNormBackward"
    monkeypatch.setattr(paths, "tracing", lambda x: True)
    monkeypatch.setattr(paths, "plain_eager", lambda x: False)   # the memoised eager call
    y_op, grads_op, bufs_op = _run(twin, x, g)
    assert type(y_op.grad_fn).__name__ != "EagerNormBackward"
    assert torch.equal(y_fast, y_op)
    assert y_fast.stride() == y_op.stride()
    for a, b in zip(grads_fast, grads_op):
        assert torch.equal(a, b)
    for a, b in zip(bufs_fast, bufs_op):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", CASES)
def test_eager_calls_never_reach_the_custom_ops(name, monkeypatch):
    layer, x = _make(name, torch.float32)

    def refuse(*args, **kwargs):
        raise AssertionError("an eager call went through the custom op")
    monkeypatch.setattr(traced, "norm_fwd", refuse)
    y = layer(x.requires_grad_())
    y.sum().backward()
    with torch.no_grad():
        z = layer(x)
    assert z.grad_fn is None   # no autograd node when nothing needs a gradient
    # Training normalises by the batch, eval by running statistics that only a training
    # forward moves: either way both forwards apply the same statistics.
    torch.testing.assert_close(z, y.detach(), rtol=0, atol=0)


def test_export_traces_the_custom_ops_and_runs_them():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), tritonnorm.GroupNorm(3, 6),
                                tritonnorm.BatchNorm2d(6).eval(), torch.nn.Flatten(),
                                tritonnorm.LayerNorm(6 * 4 * 4), tritonnorm.RMSNorm(96)).to(DEVICE).eval()
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    # The opaque op, or, with compiled kernels, the triton_op or the kernels it launches.
    assert targets & {"tritonnorm.norm_fwd.default", "tritonnorm.norm_fwd_triton.default",
                      "triton_kernel_wrapper_functional"}, targets
    torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tiling", [{}, {"max_tile": 32}], ids=["resident", "split"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_an_eager_batchnorm_training_forward_is_its_kernels_and_one_add(tiling, momentum,
                                                                       monkeypatch):
    """Eager BatchNorm training: the kernels update running_mean/var in place -- at most 2
    launches (statistics, then normalise) -- and torch adds 1 to num_batches_tracked;
    no copy of the running statistics.  Torch calls are seen by a TorchFunctionMode
    (which, unlike a dispatch mode, does not turn the call into a trace), outside the
    launches (Triton's interpreter copies the arguments back in them)."""
    from torch.overrides import TorchFunctionMode
    from tritonnorm import config, dispatch
    launches, calls, inside = [], [], []

    class Calls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if not inside:
                calls.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    def spy(*a, run=dispatch._run_fwd):
        launches.append(1)
        inside.append(1)
        try:
            return run(*a)
        finally:
            inside.pop()
    monkeypatch.setattr(dispatch, "_run_fwd", spy)
    bn = tritonnorm.BatchNorm2d(6, momentum=momentum).to(DEVICE)
    x = torch.randn(4, 6, 5, 3, device=DEVICE)
    ref = torch.nn.BatchNorm2d(6, momentum=momentum).to(DEVICE)
    with config.override(**tiling), torch.no_grad():
        bn(x)   # the first call compiles and memoises
        launches.clear()
        with Calls():
            bn(x)
        ref(x), ref(x)
    assert 1 <= len(launches) <= 2
    assert not [c for c in calls if "copy" in c] and calls.count("add_") == 1, calls
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert bn.num_batches_tracked == ref.num_batches_tracked == 2


# Backwards in which one program sums each parameter (dispatch's one-slot plan): a
# BatchNorm whose channels are each one resident tile, a LayerNorm of 2 long rows in one
# row block (its programs split the columns), a GroupNorm of one sample -- and BatchNorms
# whose channels are split over programs, whose merged partials are dw and db (DWB_PARTS),
# in both layouts and with a ragged last chunk.  The last field: the backward's launches.
ONE_SLOT = {
    "batch": (lambda: tritonnorm.BatchNorm2d(6), lambda: torch.nn.BatchNorm2d(6), (4, 6, 5, 3),
              {}, 1),
    "batch split": (lambda: tritonnorm.BatchNorm2d(6), lambda: torch.nn.BatchNorm2d(6),
                    (4, 6, 5, 3), {"max_tile": 8, "split": 3}, 2),
    "batch split channels_last": (lambda: tritonnorm.BatchNorm2d(6),
                                  lambda: torch.nn.BatchNorm2d(6), (4, 6, 5, 3, "cl"),
                                  {"max_tile": 16, "split": 4}, 2),
    "batch1d split": (lambda: tritonnorm.BatchNorm1d(5), lambda: torch.nn.BatchNorm1d(5),
                      (7, 5, 9), {"max_tile": 8, "split": 5}, 2),
    "layer 2 long rows": (lambda: tritonnorm.LayerNorm(96), lambda: torch.nn.LayerNorm(96),
                          (2, 96),
                          {"max_tile": 32, "split": 3, "programs": 1}, 2),
    "group 1 sample": (lambda: tritonnorm.GroupNorm(3, 6), lambda: torch.nn.GroupNorm(3, 6),
                       (1, 6, 5, 3), {}, 1),
    # A few samples, rows unsplit: one program a block of groups or channels walks it in
    # every sample (dispatch._own_g) -- resident, walked in tiles, channels_last, and the
    # given statistics of an InstanceNorm in eval mode.
    "group 2 samples": (lambda: tritonnorm.GroupNorm(3, 6), lambda: torch.nn.GroupNorm(3, 6),
                        (2, 6, 5, 3), {}, 1),
    "group 2 samples walked channels_last": (lambda: tritonnorm.GroupNorm(2, 6),
                                             lambda: torch.nn.GroupNorm(2, 6), (2, 6, 5, 3, "cl"),
                                             {"max_tile": 16, "split": 1}, 1),
    "instance 2 samples": (lambda: tritonnorm.InstanceNorm2d(6, affine=True),
                           lambda: torch.nn.InstanceNorm2d(6, affine=True), (2, 6, 5, 3), {}, 1),
    "instance 2 samples channels_last": (lambda: tritonnorm.InstanceNorm2d(6, affine=True),
                                         lambda: torch.nn.InstanceNorm2d(6, affine=True),
                                         (2, 6, 5, 3, "cl"), {}, 1),
    "instance1d 2 samples walked": (lambda: tritonnorm.InstanceNorm1d(5, affine=True),
                                    lambda: torch.nn.InstanceNorm1d(5, affine=True), (2, 5, 40),
                                    {"max_tile": 8, "split": 1}, 1),
    # Split rows of a few samples, one parameter a row: dw, db summed from every sample's
    # partials by the merge pass (DWB_PARTS), in both layouts.
    "instance 2 samples split": (lambda: tritonnorm.InstanceNorm2d(6, affine=True),
                                 lambda: torch.nn.InstanceNorm2d(6, affine=True), (2, 6, 5, 3),
                                 {"max_tile": 4, "split": 3}, 2),
    "instance 3 samples split channels_last": (
        lambda: tritonnorm.InstanceNorm2d(6, affine=True),
        lambda: torch.nn.InstanceNorm2d(6, affine=True), (3, 6, 5, 3, "cl"),
        {"max_tile": 16, "split": 3}, 2),
    "instance eval 2 samples": (
        lambda: tritonnorm.InstanceNorm2d(6, affine=True, track_running_stats=True).eval(),
        lambda: torch.nn.InstanceNorm2d(6, affine=True, track_running_stats=True).eval(),
        (2, 6, 5, 3), {}, 1),
}


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ONE_SLOT)
def test_a_backward_with_one_program_per_parameter_writes_dw_db_without_a_column_sum(
        name, param_dtype, monkeypatch):
    """Where the dw/db scratch would have one slot, the backward kernel stores dw and db
    themselves, in the parameters' dtype, as two tensors that share no storage (custom
    ops' outputs may not alias); no column sum is launched.  Torch is the oracle."""
    from tritonnorm import config, dispatch
    make, make_ref, shape, tiling, n_bwd = ONE_SLOT[name]
    cl = shape[-1] == "cl"
    shape = shape[:-1] if cl else shape
    sums, bwd = [], []
    monkeypatch.setattr(dispatch, "_run_column_sum", lambda *a: sums.append(a))
    run_bwd = dispatch._run_bwd
    monkeypatch.setattr(dispatch, "_run_bwd", lambda *a: (bwd.append(a), run_bwd(*a)))
    torch.manual_seed(0)
    layer, ref = make().to(DEVICE, param_dtype), make_ref().to(DEVICE, param_dtype)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
        ref.load_state_dict(layer.state_dict())
    x = torch.randn(shape, device=DEVICE, dtype=param_dtype)
    g = torch.randn(shape, device=DEVICE, dtype=param_dtype)
    if cl:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    with config.override(**tiling):
        _, grads, _ = _run(layer, x, g)
    _, want, _ = _run(ref, x, g)
    assert not sums
    assert len(bwd) == n_bwd   # split: a partials pass, then the merge that stores dw, db
    dw, db = grads[1:]
    assert dw.dtype == db.dtype == param_dtype
    assert dw.untyped_storage().data_ptr() != db.untyped_storage().data_ptr()
    tol = dict(rtol=1e-5, atol=1e-5) if param_dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    for got, ref_grad in zip(grads, want):
        torch.testing.assert_close(got, ref_grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("tiling", [{}, {"max_tile": 16, "split": 3}], ids=["default", "split"])
def test_an_eval_instance_norm_of_two_samples_sums_dw_db_over_every_split_chunk(dtype, tiling):
    """Given statistics (eval with running stats) split rows over programs as training does;
    then no program owns a channel's whole sum (dispatch._own_g), and dw, db are the sums over
    every chunk of every sample, as torch's."""
    from tritonnorm import config
    torch.manual_seed(0)
    make = lambda m: m.InstanceNorm2d(3, affine=True, track_running_stats=True).eval()
    layer, ref = make(tritonnorm).to(DEVICE, dtype), make(torch.nn).to(DEVICE, dtype)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
        layer.running_mean.uniform_(-1, 1), layer.running_var.uniform_(0.5, 2)
        ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 9, 11, device=DEVICE, dtype=dtype)
    g = torch.randn_like(x)
    with config.override(**tiling):
        _, grads, _ = _run(layer, x, g)
    _, want, _ = _run(ref, x, g)
    for got, ref_grad in zip(grads, want):
        torch.testing.assert_close(got, ref_grad)
