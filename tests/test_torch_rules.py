"""Where torch has a rule, ours is the same: which input/parameter dtype mixes run and
with what result dtype, in-place updates of strided running statistics, and
torch.jit.trace of a converted model."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
import tritonnorm.functional as TF

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# norm -> call(lib, x, param dtype); x is (4, 6, 5)
CALLS = {
    "layer": lambda lib, x, p: lib.layer_norm(x, (5,), torch.rand(5, dtype=p) + 0.5,
                                              torch.rand(5, dtype=p)),
    "rms": lambda lib, x, p: lib.rms_norm(x, (5,), torch.rand(5, dtype=p) + 0.5),
    "group": lambda lib, x, p: lib.group_norm(x, 3, torch.rand(6, dtype=p) + 0.5,
                                              torch.rand(6, dtype=p)),
    "instance": lambda lib, x, p: lib.instance_norm(x, weight=torch.rand(6, dtype=p) + 0.5,
                                                    bias=torch.rand(6, dtype=p)),
    "batch train": lambda lib, x, p: lib.batch_norm(
        x, torch.zeros(6, dtype=p), torch.ones(6, dtype=p), torch.rand(6, dtype=p) + 0.5,
        torch.rand(6, dtype=p), training=True),
    "batch eval": lambda lib, x, p: lib.batch_norm(
        x, torch.zeros(6, dtype=p), torch.ones(6, dtype=p), torch.rand(6, dtype=p) + 0.5,
        torch.rand(6, dtype=p)),
}
TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _outcome(call, lib, x, p):
    torch.manual_seed(1)
    try:
        return call(lib, x, p)
    except Exception as e:  # noqa: BLE001 -- the exception is the outcome
        return e


@pytest.mark.filterwarnings("ignore:Mismatch dtype")
@pytest.mark.parametrize("pdtype", DTYPES, ids=str)
@pytest.mark.parametrize("xdtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", CALLS)
def test_dtype_mix_runs_or_raises_as_torch(norm, xdtype, pdtype):
    x = (torch.randn(4, 6, 5) * 2 + 1).to(xdtype)
    theirs = _outcome(CALLS[norm], F, x, pdtype)
    ours = _outcome(CALLS[norm], TF, x, pdtype)
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs), f"torch raised {theirs!r}, we gave {ours!r}"
        return
    assert not isinstance(ours, Exception), f"torch ran, we raised {ours!r}"
    assert ours.dtype == theirs.dtype
    tol = max(TOL[xdtype], TOL[pdtype])
    torch.testing.assert_close(ours.float(), theirs.float(), atol=tol * 4, rtol=tol)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_strided_running_statistics_are_updated_in_place(momentum):
    """torch updates running stats that are views into a larger buffer; so do we."""
    bufs = {lib: (torch.zeros(6, 2), torch.ones(6, 2)) for lib in ("torch", "ours")}
    x = torch.randn(8, 6, 3) * 2 + 1
    for step in range(2):
        for lib, fn in (("torch", F.batch_norm), ("ours", TF.batch_norm_tracked)):
            rm, rv = (b[:, 1] for b in bufs[lib])
            assert not rm.is_contiguous()
            if lib == "torch":
                fn(x, rm, rv, training=True, momentum=momentum if momentum else 1 / (step + 1))
            else:
                fn(x, rm, rv, None, None, True, momentum, 1e-5,
                   None if momentum else torch.tensor(step + 1))
    for a, b in zip(bufs["ours"], bufs["torch"]):
        torch.testing.assert_close(a, b)
    assert bufs["ours"][0][:, 0].eq(0).all()   # the other column is untouched


def test_jit_trace_of_a_converted_model():
    """TorchScript cannot call Triton: a trace records torch's ops, shape-generic, with
    torch's numbers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4),
                          nn.InstanceNorm2d(4, affine=True), nn.Flatten(2),
                          nn.LayerNorm(4), nn.RMSNorm(4)).eval()
    ours = tritonnorm.convert(model)
    x = torch.randn(2, 3, 2, 2)
    traced = torch.jit.trace(ours, x)
    for batch in (2, 5):
        xb = torch.randn(batch, 3, 2, 2)
        torch.testing.assert_close(traced(xb), ours(xb), atol=1e-5, rtol=1e-5)
