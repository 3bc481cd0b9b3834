"""A steady-state eager call -- a signature seen before -- is one memo lookup, the outputs'
allocation and the launch (issue 24).  Its checks ran on the first call; what it keys on
decides whether a later call may skip them, so anything a check or the launch reads that
changes between calls must send the call back through the checks: the results stay
torch's, and bad input still gets torch's error."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
import tritonnorm.functional as TF
from conftest import DEVICE
from tritonnorm import checks, config

# name -> (our layer, torch's layer, input shape, training)
LAYERS = {
    "layer": (lambda lib: lib.LayerNorm(12), (3, 12), True),
    "rms": (lambda lib: lib.RMSNorm(12), (3, 12), True),
    "group": (lambda lib: lib.GroupNorm(2, 4), (2, 4, 3), True),
    "batch train": (lambda lib: lib.BatchNorm1d(4), (3, 4, 5), True),
    "batch eval": (lambda lib: lib.BatchNorm1d(4), (3, 4, 5), False),
}
CHECKS = ("float_input", "param_dtypes", "devices", "normalized", "vector", "size",
          "batch_norm_eps")


def _pair(name, dtype=torch.float32):
    make, shape, training = LAYERS[name]
    torch.manual_seed(0)
    ours, ref = make(tritonnorm), make(nn)
    ref.load_state_dict(ours.state_dict())
    for m in (ours, ref):
        m.to(DEVICE, dtype).train(training)
    return ours, ref, torch.randn(shape, device=DEVICE, dtype=dtype) * 2 + 1


@pytest.mark.parametrize("name", LAYERS)
def test_a_repeated_call_skips_the_checks_and_still_matches_torch(name, monkeypatch):
    ours, ref, x = _pair(name)
    config.clear_cache()
    ours(x)   # the first call runs the checks and remembers the signature
    seen = []
    for fn in CHECKS:
        real = getattr(checks, fn)
        monkeypatch.setattr(checks, fn, lambda *a, _fn=fn, _real=real: (seen.append(_fn),
                                                                         _real(*a))[1])
    ref(x)   # torch's running statistics take the same step
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            y, want = ours(x), ref(x)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert seen == [], f"a steady-state call ran {seen}"
    for a, b in zip(ours.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _strided_weight(w):
    """w's values in a tensor of w's shape whose stride is 2."""
    wide = torch.zeros(2 * w.numel(), dtype=w.dtype, device=w.device)
    wide[::2] = w
    return wide[::2]


# What a call may change after a steady-state call of the same shapes, and torch's answer.
CHANGES = {
    "weight strided": lambda x, w, b: (x, _strided_weight(w), b, 1e-5),
    "weight fp64": lambda x, w, b: (x, w.double(), b, 1e-5),
    "eps": lambda x, w, b: (x, w, b, 0.5),
    "x strided": lambda x, w, b: (x.t().contiguous().t(), w, b, 1e-5),
    "no bias": lambda x, w, b: (x, w, None, 1e-5),
}


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("norm", ["layer_norm", "group_norm", "batch_norm"])
def test_a_call_that_differs_from_the_remembered_one_gets_torchs_answer(norm, change):
    x = torch.randn(6, 4, device=DEVICE) * 3 + 1
    w, b = torch.rand(4, device=DEVICE) + 0.5, torch.randn(4, device=DEVICE)
    rm, rv = torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE)

    def call(lib, x, w, b, eps):
        if norm == "layer_norm":
            return lib.layer_norm(x, (4,), w, b, eps)
        if norm == "group_norm":
            return lib.group_norm(x, 2, w, b, eps)
        return lib.batch_norm(x, rm.clone(), rv.clone(), w, b, True, 0.1, eps)
    call(TF, x, w, b, 1e-5)   # remembered
    call(TF, x, w, b, 1e-5)
    args = CHANGES[change](x, w, b)
    try:
        want = call(F, *args)
    except RuntimeError:   # fp64 weight beside fp32 x: torch refuses the mix
        with pytest.raises(RuntimeError, match="mixed dtype|expected"):
            call(TF, *args)
        return
    torch.testing.assert_close(call(TF, *args), want, rtol=1e-5, atol=1e-5)


def test_bad_input_after_a_steady_state_call_still_gets_torchs_error():
    ours, ref, x = _pair("layer")
    ours(x)
    ours(x)
    with pytest.raises(RuntimeError) as theirs:
        ref(x[:, :6])
    with pytest.raises(RuntimeError, match="normalized_shape") as mine:
        ours(x[:, :6])
    assert type(mine.value) is type(theirs.value)


@pytest.mark.parametrize("name", ["layer", "rms", "group", "batch train"])
def test_a_layer_whose_weight_was_deleted_fails_as_torchs(name):
    """Layers read their parameters from the module's dict (host time); one that is gone
    must raise torch's AttributeError, not run without it."""
    ours, ref, x = _pair(name)
    del ours.weight, ref.weight
    with pytest.raises(AttributeError):
        ref(x)
    with pytest.raises(AttributeError, match="weight"):
        ours(x)


@pytest.mark.parametrize("norm", ["layer_norm", "group_norm", "batch_norm"])
def test_a_tensor_eps_or_momentum_changed_in_place_is_read_anew(norm):
    """torch's argument parser takes a 0-d tensor for eps and momentum, by its value at the
    call; a memo keyed on the tensor (hashed by identity) would keep the old value."""
    x = torch.randn(6, 4, device=DEVICE)
    eps, momentum = torch.tensor(1e-5), torch.tensor(0.1)
    stats = {lib: (torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE))
             for lib in (TF, F)}

    def call(lib):
        if norm == "layer_norm":
            return lib.layer_norm(x, (4,), None, None, eps)
        if norm == "group_norm":
            return lib.group_norm(x, 2, None, None, eps)
        return lib.batch_norm(x, *stats[lib], None, None, True, momentum, eps)
    for lib in (TF, F):
        call(lib)
    eps.fill_(3.0)
    momentum.fill_(0.9)
    torch.testing.assert_close(call(TF), call(F), rtol=1e-5, atol=1e-5)
    for a, b in zip(stats[TF], stats[F]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["layer_norm", "group_norm"])
def test_a_meta_weight_after_a_remembered_call_gets_a_device_error(norm):
    """get_device() is -1 for the CPU and for meta alike: the key must still tell them apart."""
    x, w = torch.randn(6, 4, device=DEVICE), torch.rand(4, device=DEVICE)

    def call(weight):
        if norm == "layer_norm":
            return TF.layer_norm(x, (4,), weight)
        return TF.group_norm(x, 2, weight)
    call(w)
    call(w)
    with pytest.raises(RuntimeError, match="device"):
        call(w.to("meta"))
