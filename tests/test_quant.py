"""rms_norm_quant / layer_norm_quant: int8 and fp8 (e4m3) output with its scale.

The dequantised values q * scale are within one quantisation step of torch's norm,
and the kernels give the bits of the torch-ops composition that traced calls run."""
import pytest
import torch
import torch.nn.functional as F

import tritonnorm.functional as TF
from conftest import DEVICE, TILINGS
from tritonnorm import config
from tritonnorm.quant import QMAX, _composite
from tritonnorm.spec import LAYER, RMS

QDTYPES = [torch.int8, torch.float8_e4m3fn]
SHAPES = [((2, 3, 4, 10), (4, 10)), ((12, 100), (100,))]
# Activations of fp32, fp16 and bf16, rows in one tile, walked in tiles, and the "split"
# tiling, which a quantized forward overrides: a row's amax is taken in one program.
MODES = [("one-tile", torch.float32), ("one-tile", torch.float16), ("one-tile", torch.bfloat16),
         ("looped", torch.float32), ("split", torch.bfloat16)]


@pytest.fixture(params=MODES, ids=lambda m: f"{m[0]}-{str(m[1])[6:]}")
def mode(request):
    tiling, dtype = request.param
    with config.override(**TILINGS[tiling]):
        yield dtype


def _step(v: torch.Tensor, dtype) -> torch.Tensor:
    """One quantisation step at each value v (in units of the scale)."""
    if dtype == torch.int8:
        return torch.ones_like(v)
    # e4m3: 3 mantissa bits; subnormals below 2^-6 have the step 2^-9.
    return torch.exp2(torch.floor(torch.log2(v.abs().clamp_min(2.0 ** -6))) - 3)


def _reference(spec, x, ns, w, b, r):
    h = (x + r).to(x.dtype) if r is not None else x
    if spec is LAYER:
        return F.layer_norm(h.double(), ns, w.double(), b.double(), 1e-5), h
    return F.rms_norm(h.double(), ns, w.double(), torch.finfo(torch.float32).eps), h


def _call(spec, x, ns, w, b, r, qdtype, scale):
    if spec is LAYER:
        return TF.layer_norm_quant(x, ns, w, b, residual=r, dtype=qdtype, scale=scale)
    return TF.rms_norm_quant(x, ns, w, residual=r, dtype=qdtype, scale=scale)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("qdtype", QDTYPES, ids=str)
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("xshape,ns", SHAPES, ids=str)
def test_dequantised_output_is_within_one_step_of_the_norm(xshape, ns, norm, qdtype, static,
                                                            residual, mode):
    spec = LAYER if norm == "layer" else RMS
    torch.manual_seed(0)
    x = torch.randn(xshape, dtype=mode, device=DEVICE) * 3
    r = torch.randn(xshape, dtype=mode, device=DEVICE) if residual else None
    w = (torch.rand(ns, device=DEVICE) + 0.5).to(mode)
    b = torch.randn(ns, device=DEVICE).to(mode)
    given = torch.tensor(0.04, device=DEVICE) if static else None
    with torch.no_grad():
        out = _call(spec, x, ns, w, b, r, qdtype, given)
        expected = _composite(spec, x, len(ns), ns, w, b if spec is LAYER else None,
                              1e-5 if spec is LAYER else torch.finfo(torch.float32).eps,
                              r, qdtype, None if given is None else given.reshape(1))
    q, scale = out[:2]
    assert q.dtype == qdtype and q.shape == x.shape
    rows_shape = (*xshape[:len(xshape) - len(ns)], *(1,) * len(ns))
    assert scale.dtype == torch.float32
    assert scale.shape == ((1,) if static else rows_shape)
    y, h = _reference(spec, x, ns, w, b, r)
    if residual:
        assert torch.equal(out[2], h)
    v = y / scale.double()
    # A static scale clamps what it cannot hold (the fp64 reference may pass qmax by an ulp).
    in_range = v.abs() <= QMAX[qdtype] * (1 + 1e-5)
    err = (q.double() - v).abs()
    assert bool((err <= _step(v, qdtype))[in_range].all())
    if not static:   # a dynamic scale fits each row's largest value
        assert bool(in_range.all())
        assert torch.allclose(scale.double().reshape(xshape[:len(xshape) - len(ns)]),
                              y.abs().amax(dim=tuple(range(-len(ns), 0))) / QMAX[qdtype],
                              rtol=1e-2 if mode != torch.float32 else 1e-6)
    # The torch-ops composition (traced calls): the same bits, but for fp32 summation
    # order flipping a rare tie.
    assert (q == expected[0]).float().mean() >= 0.99
    torch.testing.assert_close(scale, expected[1], rtol=1e-5, atol=0)


def test_int8_rounds_half_to_even_and_saturates():
    """A static scale of 1 puts xhat itself on the int8 grid: torch.round, then clamp."""
    x = torch.tensor([[0.0, 200.0, -200.0, 0.0]], device=DEVICE)
    with torch.no_grad():
        q, _ = TF.layer_norm_quant(x, (4,), torch.tensor([1.0, 1, 1, 1], device=DEVICE),
                                   torch.tensor([2.5, 300.0, -300.0, -1.5], device=DEVICE),
                                   eps=0.0, scale=1.0)
    xhat = F.layer_norm(x, (4,), eps=0.0)
    # bias moves the zeros to 2.5 and -1.5 exactly: ties, to the even 2 and -2.
    assert xhat[0, 0] == 0 and q.tolist() == [[2, 127, -127, -2]]


def test_inference_only_and_bad_arguments_raise():
    x = torch.randn(4, 8, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference only"):
        TF.rms_norm_quant(x, (8,))
    with torch.no_grad():
        with pytest.raises(TypeError, match="int8 or torch.float8_e4m3fn"):
            TF.rms_norm_quant(x, (8,), dtype=torch.float16)
        with pytest.raises(ValueError, match="per tensor"):
            TF.rms_norm_quant(x, (8,), scale=torch.ones(4, device=DEVICE))
        with pytest.raises(RuntimeError, match="residual of shape"):
            TF.layer_norm_quant(x, (8,), residual=torch.randn(8, device=DEVICE))
