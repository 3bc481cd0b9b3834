"""Bad input raises torch's exception type; NaN, empty batches, determinism, fallback."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
import tritonnorm._runtime as runtime
import tritonnorm.dispatch as dispatch
import tritonnorm.functional as TF
from oracle import assert_matches_torch

# (what is wrong, call on tritonnorm, the same call on torch)
BAD_INPUT = [
    ("LN normalized_shape mismatch", lambda m: m.LayerNorm(5)(torch.randn(3, 4)), nn),
    ("LN weight shape", lambda m: m.functional.layer_norm(torch.randn(3, 4), (4,), torch.ones(5)), None),
    ("RMS normalized_shape mismatch", lambda m: m.RMSNorm(5)(torch.randn(3, 4)), nn),
    ("GN channels not divisible", lambda m: m.functional.group_norm(torch.randn(2, 4, 3), 3), None),
    ("GN channel count != num_channels", lambda m: m.GroupNorm(2, 4)(torch.randn(2, 6, 3)), nn),
    ("GN 1-d input", lambda m: m.GroupNorm(2, 4)(torch.randn(4)), nn),
    ("IN wrong ndim", lambda m: m.InstanceNorm2d(3)(torch.randn(3, 4)), nn),
    ("IN channel count != num_features", lambda m: m.InstanceNorm2d(3, affine=True)(torch.randn(2, 4, 4, 4)), nn),
    ("IN one spatial element in training", lambda m: m.InstanceNorm1d(3)(torch.randn(2, 3, 1)), nn),
    ("LN integer dtype", lambda m: m.functional.layer_norm(torch.arange(10).view(2, 5), (5,)), None),
    ("GN integer dtype", lambda m: m.functional.group_norm(torch.arange(12).view(2, 6), 2), None),
    ("IN integer dtype", lambda m: m.functional.instance_norm(torch.arange(12).view(2, 2, 3)), None),
    ("RMS integer dtype", lambda m: m.functional.rms_norm(torch.arange(10).view(2, 5), (5,)), None),
    ("BN one value per channel in training", lambda m: m.BatchNorm1d(3)(torch.randn(1, 3)), nn),
    ("BN wrong ndim", lambda m: m.BatchNorm2d(3)(torch.randn(2, 3, 4)), nn),
    ("BN running_mean size", lambda m: m.functional.batch_norm(
        torch.randn(2, 3, 4), torch.zeros(4), torch.ones(4), training=True), None),
    ("BN 1-d input", lambda m: m.functional.batch_norm(torch.randn(4), torch.zeros(4), torch.ones(4), training=True), None),
    ("BN eval without running stats", lambda m: m.functional.batch_norm(torch.randn(2, 3, 4), None, None), None),
    ("BN integer dtype", lambda m: m.functional.batch_norm(torch.arange(12).view(2, 3, 2), None, None, training=True), None),
    ("GN weight on another device", lambda m: m.functional.group_norm(
        torch.randn(2, 4, 3), 2, torch.ones(4, device="meta")), None),
    # Argument types, as torch's argument parser checks them.
    ("BN functional momentum=None", lambda m: m.functional.batch_norm(
        torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, momentum=None), None),
    ("GN float num_groups", lambda m: m.functional.group_norm(torch.randn(2, 4, 3), 2.0), None),
    ("LN float normalized_shape", lambda m: m.functional.layer_norm(torch.randn(2, 3), (3.0,)), None),
    ("RMS float normalized_shape", lambda m: m.functional.rms_norm(torch.randn(2, 3), (3.0,)), None),
    # Statistics and eps.
    ("BN eval with running_var only", lambda m: m.functional.batch_norm(
        torch.randn(4, 3), None, torch.ones(3)), None),
    ("BN eval with running_mean only", lambda m: m.functional.batch_norm(
        torch.randn(4, 3), torch.zeros(3), None), None),
    ("BN training with running_var only", lambda m: m.functional.batch_norm(
        torch.randn(4, 3), None, torch.ones(3), training=True), None),
    ("BN eps 0 in training", lambda m: m.BatchNorm1d(3, eps=0.0)(torch.randn(4, 3)), nn),
    ("BN eps < 0 in eval", lambda m: m.functional.batch_norm(
        torch.randn(4, 3), torch.zeros(3), torch.ones(3), eps=-1e-5), None),
    ("IN empty 1-d input", lambda m: m.functional.instance_norm(torch.randn(0)), None),
    # Mixed dtypes that torch refuses (it takes fp32 parameters beside fp16/bf16 input only).
    ("LN fp16 module, fp32 input", lambda m: m.LayerNorm(4).half()(torch.randn(2, 4)), nn),
    ("LN fp32 module, fp64 input", lambda m: m.LayerNorm(4)(torch.randn(2, 4, dtype=torch.float64)), nn),
    ("GN fp32 module, fp64 input", lambda m: m.GroupNorm(2, 4)(torch.randn(2, 4, 3, dtype=torch.float64)), nn),
    ("GN bf16 weight, fp32 input", lambda m: m.functional.group_norm(
        torch.randn(2, 4, 3), 2, torch.ones(4, dtype=torch.bfloat16)), None),
    ("BN fp16 module, fp32 input", lambda m: m.BatchNorm1d(3).half()(torch.randn(4, 3)), nn),
    ("BN fp32 module, fp64 input", lambda m: m.BatchNorm1d(3)(torch.randn(4, 3, dtype=torch.float64)), nn),
    ("BN int64 weight", lambda m: m.functional.batch_norm(
        torch.randn(4, 3), torch.zeros(3), torch.ones(3), torch.ones(3, dtype=torch.int64)), None),
    ("BN fp16 running stats, fp32 input", lambda m: m.functional.batch_norm(
        torch.randn(4, 3), torch.zeros(3).half(), torch.ones(3).half(), training=True), None),
    ("IN fp64 weight, fp32 input", lambda m: m.functional.instance_norm(
        torch.randn(2, 3, 4), weight=torch.ones(3, dtype=torch.float64)), None),
    # Inputs of every rank and kind (issue 26): 0-d and 1-d, bool and complex.
    ("BN 1-d input without parameters", lambda m: m.functional.batch_norm(
        torch.randn(4), None, None, training=True), None),
    ("BN 0-d input", lambda m: m.functional.batch_norm(torch.randn(()), None, None,
                                                       training=True), None),
    ("BN bool dtype", lambda m: m.functional.batch_norm(
        torch.ones(2, 3, dtype=torch.bool), None, None, training=True), None),
    ("BN complex dtype", lambda m: m.functional.batch_norm(
        torch.randn(2, 3, dtype=torch.complex64), None, None, training=True), None),
    ("LN complex dtype", lambda m: m.functional.layer_norm(
        torch.randn(2, 3, dtype=torch.complex64), (3,)), None),
    ("LN bool dtype", lambda m: m.functional.layer_norm(torch.ones(2, 3, dtype=torch.bool), (3,)),
     None),
    ("LN 0-d input", lambda m: m.functional.layer_norm(torch.randn(()), (1,)), None),
    ("LN empty normalized_shape", lambda m: m.functional.layer_norm(torch.randn(2, 3), ()), None),
    ("RMS empty normalized_shape", lambda m: m.functional.rms_norm(torch.randn(2, 3), ()), None),
    ("RMS bool dtype", lambda m: m.functional.rms_norm(torch.ones(2, 3, dtype=torch.bool), (3,)),
     None),
    ("GN complex dtype", lambda m: m.functional.group_norm(
        torch.randn(2, 4, 3, dtype=torch.complex64), 2), None),
    ("GN 0-d input", lambda m: m.functional.group_norm(torch.randn(()), 1), None),
    ("IN complex dtype", lambda m: m.functional.instance_norm(
        torch.randn(2, 4, 3, dtype=torch.complex64)), None),
    ("IN bool dtype", lambda m: m.functional.instance_norm(torch.ones(2, 4, 3, dtype=torch.bool)),
     None),
]


class _TorchNamespace:
    """Lets one lambda call either library: m.LayerNorm, m.functional.layer_norm."""
    functional = F
    LayerNorm, RMSNorm, GroupNorm = nn.LayerNorm, nn.RMSNorm, nn.GroupNorm
    InstanceNorm1d, InstanceNorm2d = nn.InstanceNorm1d, nn.InstanceNorm2d
    BatchNorm1d, BatchNorm2d = nn.BatchNorm1d, nn.BatchNorm2d


def _raised(call, lib):
    with pytest.raises(Exception) as info:
        call(lib)
    return info.value


@pytest.mark.parametrize("what,call,_", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_torchs_exception_type(what, call, _):
    ours = _raised(call, tritonnorm)
    theirs = _raised(call, _TorchNamespace)
    assert type(ours) is type(theirs), f"{what}: {type(ours).__name__} vs {type(theirs).__name__}"
    assert str(ours), "the message must say what is wrong"


def test_empty_normalized_shape_says_what_torch_says():
    for fn in (F.layer_norm, TF.layer_norm), (F.rms_norm, TF.rms_norm):
        messages = [str(_raised(lambda m, f=f: f(torch.randn(2, 3), ()), None)) for f in fn]
        assert messages[0] == messages[1]


@pytest.mark.parametrize("layer", ["functional", "module"])
def test_complex_rms_norm_is_torch_result(layer):
    """torch computes rms_norm of a complex input; the kernels take real floats, so the
    call goes to torch's op."""
    x = torch.randn(2, 3, 4, dtype=torch.complex64)
    w = torch.rand(4) + 0.5
    if layer == "functional":
        got, want = TF.rms_norm(x, (4,), w), F.rms_norm(x, (4,), w)
    else:
        ours, ref = tritonnorm.RMSNorm(4), nn.RMSNorm(4)
        got, want = ours(x), ref(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("norm", ["layer", "group", "instance", "rms", "batch"])
def test_nan_stays_in_its_row(norm, tiling, device):
    x = torch.randn(4, 6, 10, device=device)
    x[1, 2, 3] = float("nan")
    fn = {"layer": lambda t: TF.layer_norm(t, (10,)), "rms": lambda t: TF.rms_norm(t, (10,)),
          "group": lambda t: TF.group_norm(t, 3), "instance": lambda t: TF.instance_norm(t),
          "batch": lambda t: TF.batch_norm(t, None, None, training=True)}[norm]
    y = fn(x)
    bad = torch.isnan(y)
    expected = torch.zeros_like(bad)
    if norm in ("layer", "rms"):
        expected[1, 2, :] = True
    elif norm == "group":
        expected[1, 2:4, :] = True
    elif norm == "batch":
        expected[:, 2, :] = True  # a BatchNorm row is a channel across the batch
    else:
        expected[1, 2, :] = True
    assert torch.equal(bad, expected)


@pytest.mark.parametrize("ctor,shape,torch_handles_it", [
    (lambda lib: lib.LayerNorm(5), (0, 5), True),
    (lambda lib: lib.GroupNorm(2, 4), (0, 4, 3), True),
    (lambda lib: lib.RMSNorm(5), (0, 3, 5), True),
    # torch raises IndexError on an empty batch with affine InstanceNorm; we return empty.
    (lambda lib: lib.InstanceNorm1d(4, affine=True), (0, 4, 3), False),
    (lambda lib: lib.InstanceNorm2d(4), (0, 4, 3, 3), True),
    (lambda lib: lib.BatchNorm2d(4), (0, 4, 3, 3), True),
])
def test_empty_batch_gives_empty_output_and_zero_param_grads(ctor, shape, torch_handles_it, device):
    ours = ctor(tritonnorm).to(device)
    x = torch.randn(shape, device=device)
    if torch_handles_it:
        assert_matches_torch(ours, ctor(nn).to(device), [x])
    x.requires_grad_()
    y = ours(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape
    if ours.weight is not None:
        assert ours.weight.grad is not None and torch.all(ours.weight.grad == 0)


def test_backward_is_deterministic(tiling, device):
    x = torch.randn(6, 8, 5, 5, device=device, requires_grad=True)
    g = tritonnorm.GroupNorm(4, 8).to(device)
    dy = torch.randn(6, 8, 5, 5, device=device)
    grads = []
    for _ in range(2):
        x.grad = g.weight.grad = g.bias.grad = None
        g(x).backward(dy)
        grads.append((x.grad.clone(), g.weight.grad.clone(), g.bias.grad.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_cpu_tensor_without_interpreter_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(runtime, "INTERPRET", False)
    monkeypatch.setattr(runtime, "_fallback_warned", True)   # the warning: tested below
    x = torch.randn(3, 4, 5)
    calls = []
    for launcher in ("_run_fwd", "_run_bwd", "_run_column_sum"):
        monkeypatch.setattr(dispatch, launcher, lambda *a, **k: calls.append(a))
    for ours, ref in [(tritonnorm.LayerNorm(5), nn.LayerNorm(5)), (tritonnorm.GroupNorm(2, 4), nn.GroupNorm(2, 4)),
                      (tritonnorm.BatchNorm1d(4, momentum=None), nn.BatchNorm1d(4, momentum=None)),
                      (tritonnorm.InstanceNorm1d(4), nn.InstanceNorm1d(4)), (tritonnorm.RMSNorm(5), nn.RMSNorm(5))]:
        assert torch.equal(ours(x), ref(x))
    assert calls == [], "no kernel may be launched for a CPU tensor without the interpreter"


def test_memoised_checks_still_refuse_a_float_that_equals_a_valid_int():
    """The host path memoises its checks per call signature; 3.0 == 3 as a dict key, but
    torch refuses the float, so we must too, after the int call was remembered."""
    x = torch.randn(2, 3)
    TF.layer_norm(x, (3,))
    with pytest.raises(TypeError):
        TF.layer_norm(x, (3.0,))
    xg = torch.randn(2, 4, 3)
    TF.group_norm(xg, 2)
    with pytest.raises(TypeError):
        TF.group_norm(xg, 2.0)


def test_the_first_fallback_of_a_process_warns_once_and_says_how(monkeypatch):
    monkeypatch.setattr(runtime, "INTERPRET", False)
    monkeypatch.setattr(runtime, "_fallback_warned", False)
    x = torch.randn(3, 4)
    with pytest.warns(tritonnorm.FallbackWarning, match="TRITON_INTERPRET=1") as record:
        tritonnorm.LayerNorm(4)(x)
        tritonnorm.RMSNorm(4)(x)
    assert len(record) == 1
    assert record[0].filename == __file__   # the user's line, not tritonnorm's or torch's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tritonnorm.LayerNorm(4)(x)   # said once per process


@pytest.mark.parametrize("call", ["functional", "module"])
def test_the_fallback_warning_points_at_the_callers_line(call, monkeypatch):
    monkeypatch.setattr(runtime, "INTERPRET", False)
    monkeypatch.setattr(runtime, "_fallback_warned", False)
    x = torch.randn(2, 4, 3)
    with pytest.warns(tritonnorm.FallbackWarning) as record:
        if call == "functional":
            TF.group_norm(x, 2)
        else:
            tritonnorm.GroupNorm(2, 4)(x)
    assert record[0].filename == __file__, record[0].filename


def test_a_meta_tensor_takes_torchs_ops_without_a_warning(monkeypatch):
    """A meta tensor holds no data: no kernel runs on it, so no fallback to tell of."""
    monkeypatch.setattr(runtime, "_fallback_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = tritonnorm.LayerNorm(4, device="meta")(torch.empty(2, 4, device="meta"))
    assert y.is_meta and y.shape == (2, 4)
