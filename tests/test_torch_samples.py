"""torch's own test data as the spec: the OpInfo samples of the five functional norms and
the ModuleInfo samples of the nine norm modules (torch.testing._internal), each run by
torch and by tritonnorm -- the output (values, dtype, and strides where torch's are
dense), the gradients of every floating tensor argument, the running statistics, and the
exception type where torch raises.  InstanceNorm's strides are not compared: ours keeps a
channels_last input's layout, torch's output is contiguous (README, "Behaviour")."""
import copy

import pytest
import torch

import tritonnorm
import tritonnorm.functional as TF
from conftest import DEVICE

try:   # torch's internal test API: not a public one, and it moves between releases
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db
except Exception as e:   # noqa: BLE001 -- any failure to import it means the same
    pytest.skip(f"torch.testing._internal's OpInfo/ModuleInfo API is not importable here: "
                f"{type(e).__name__}: {e}", allow_module_level=True)

OURS = {"nn.functional.layer_norm": TF.layer_norm, "nn.functional.rms_norm": TF.rms_norm,
        "nn.functional.group_norm": TF.group_norm, "nn.functional.instance_norm": TF.instance_norm,
        "nn.functional.batch_norm": TF.batch_norm}
OPS = {o.name: o for o in op_db if o.name in OURS and not o.variant_test_name}
MODULES = {m.module_cls.__name__: m for m in module_db
           if m.module_cls.__name__ in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                                        "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
                                        "LayerNorm", "GroupNorm", "RMSNorm")}
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# bf16: the samples' weights and biases reach |8|, where one bf16 ulp is 0.0625, and a
# near-zero output of w * xhat + b keeps that ulp of its operands.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-9),
       torch.bfloat16: dict(rtol=2e-2, atol=6.25e-2)}


def test_the_samples_are_there():
    assert set(OPS) == set(OURS) and len(MODULES) == 9


def _run(fn, *args, **kwargs):
    """(result, None), or (None, the exception type)."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:   # noqa: BLE001 -- the type is what is compared
        return None, type(e)


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    return v


def _leaves(args, kwargs):
    return [v for v in list(args) + list(kwargs.values())
            if isinstance(v, torch.Tensor) and v.requires_grad]


def _same(got, want, dtype, strides=True, summed=False):
    """``summed``: dw or db, a sum over many elements, against its float64 value rounded
    to bfloat16 (see test_moduleinfo_samples_match_torch): within 1 % of its largest value."""
    assert (got is None) == (want is None)
    if want is None:
        return
    assert got.dtype == want.dtype and got.shape == want.shape
    if strides and (want.is_contiguous() or want.is_contiguous(memory_format=torch.channels_last)):
        assert got.stride() == want.stride(), (got.stride(), want.stride())
    tol = dict(TOL[dtype])
    if summed and want.numel():
        tol["atol"] = max(tol["atol"], 0.01 * want.abs().max().item())
    torch.testing.assert_close(got, want, **tol)


def _grads(y, leaves):
    if not leaves or not y.requires_grad:
        return []
    g = torch.ones_like(y) * torch.linspace(-1, 1, y.numel(), dtype=y.dtype,
                                            device=y.device).view_as(y)
    return torch.autograd.grad(y, leaves, g, allow_unused=True)


# float64 (tighter tolerances, the same kernels) is marked slow for the suite's time.
OP_DTYPES = [pytest.param(d, id=str(d)[6:], marks=pytest.mark.slow if d == torch.float64 else ())
             for d in DTYPES]


@pytest.mark.parametrize("dtype", OP_DTYPES)
@pytest.mark.parametrize("name", list(OURS))
def test_opinfo_samples_match_torch(name, dtype):
    torch.manual_seed(0)   # the samples are random
    grad = dtype != torch.bfloat16
    for sample in OPS[name].sample_inputs(DEVICE, dtype, requires_grad=grad):
        calls = []
        for fn in (OURS[name], OPS[name].op):
            args = [_clone(a) for a in (sample.input, *sample.args)]
            kwargs = {k: _clone(v) for k, v in sample.kwargs.items()}
            y, err = _run(fn, *args, **kwargs)
            calls.append((y, err, args, kwargs))
        (y, err, args, kwargs), (y_ref, err_ref, args_ref, kwargs_ref) = calls
        assert err is err_ref, (name, sample, err, err_ref)
        if err_ref is not None:
            continue
        _same(y, y_ref, dtype, strides=name != "nn.functional.instance_norm")
        for got, want in zip(_grads(y, _leaves(args, kwargs)),
                             _grads(y_ref, _leaves(args_ref, kwargs_ref))):
            _same(got, want, dtype, strides=False)
        for got, want in zip(list(args) + list(kwargs.values()),
                             list(args_ref) + list(kwargs_ref.values())):
            if isinstance(want, torch.Tensor) and not want.requires_grad:   # running stats
                torch.testing.assert_close(got, want, **TOL[dtype])


# float64 and bfloat16 in eval are marked slow, and GroupNorm's samples, which hold the
# largest inputs (8 s a dtype and mode under the interpreter), run float32 training only by
# default.
MODULE_CASES = [pytest.param(name, dtype, training,
                             id=f"{name}-{str(dtype)[6:]}-{'train' if training else 'eval'}",
                             marks=pytest.mark.slow if dtype == torch.float64
                             or (dtype == torch.bfloat16 and not training) or (
                                 name == "GroupNorm" and (dtype, training) != (torch.float32, True))
                             else ())
                for name in MODULES for dtype in DTYPES for training in (True, False)]


@pytest.mark.parametrize("name, dtype, training", MODULE_CASES)
def test_moduleinfo_samples_match_torch(name, dtype, training):
    torch.manual_seed(0)   # the samples are random
    info = MODULES[name]
    grad = dtype != torch.bfloat16
    for mi in info.module_inputs_func(info, device=DEVICE, dtype=dtype, requires_grad=grad,
                                      training=training):
        c, f = mi.constructor_input, mi.forward_input
        ref = info.module_cls(*c.args, **c.kwargs).to(DEVICE, dtype).train(training)
        ours = getattr(tritonnorm, name)(*c.args, **c.kwargs).to(DEVICE, dtype).train(training)
        ours.load_state_dict(copy.deepcopy(ref.state_dict()))
        outs = []
        for m in (ours, ref):
            args = [_clone(a) for a in f.args]
            kwargs = {k: _clone(v) for k, v in f.kwargs.items()}
            y, err = _run(m, *args, **kwargs)
            grads = [] if y is None else _grads(y, _leaves(args, kwargs) + [
                p for p in m.parameters() if p.requires_grad])
            outs.append((y, err, grads))
        (y, err, grads), (y_ref, err_ref, grads_ref) = outs
        assert err is err_ref, (name, c, err, err_ref)
        if err_ref is not None:
            continue
        _same(y, y_ref, dtype, strides=not name.startswith("Instance"))
        if dtype == torch.bfloat16 and grads:
            # torch's CPU kernels sum bfloat16 dw/db with errors of the sum's size (LayerNorm
            # db over 640 elements: 34.8 off its float64 value of 0.8; ours 0.03): there the
            # oracle is torch's float64 run, rounded to bfloat16.
            ref64 = info.module_cls(*c.args, **c.kwargs).to(DEVICE, torch.float64).train(training)
            ref64.load_state_dict(ref.state_dict())
            y64 = ref64(*[a.double() if a.is_floating_point() else a for a in f.args])
            grads_ref = [g.to(dtype) for g in _grads(y64, [p for p in ref64.parameters()])]
        for got, want in zip(grads, grads_ref):
            _same(got, want, dtype, strides=False, summed=True)
        for (key, got), want in zip(ours.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(got, want, **TOL[dtype], msg=key)
