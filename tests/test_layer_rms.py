"""LayerNorm and RMSNorm: the trailing normalized_shape is one row."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
import tritonnorm.functional as TF
from oracle import assert_matches_torch

# (input shape, normalized_shape): a single element, odd, prime, several
# trailing dims.  Under the "looped" and "split" modes these span many tiles.
SHAPES = [
    ((3, 1), (1,)),
    ((4, 7), (7,)),
    ((2, 3, 31), (31,)),
    ((2, 5, 6), (5, 6)),
    ((5, 257), (257,)),
]
# Rows longer than one default tile (4096 elements), walked with default tiles.
LONG = [((2, 4099), (4099,)), ((1, 3, 8200), (8200,))]
AFFINE = ["none", "weight", "weight+bias"]


def _params(shape, affine, dtype, device):
    w = torch.randn(shape, dtype=dtype, device=device) if affine != "none" else None
    b = torch.randn(shape, dtype=dtype, device=device) if affine == "weight+bias" else None
    return w, b


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("xshape,nshape", SHAPES, ids=str)
def test_layer_norm_matches_torch(xshape, nshape, affine, mode, device):
    _layer_norm_case(xshape, nshape, affine, mode, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("xshape,nshape", LONG, ids=str)
def test_layer_norm_long_rows(xshape, nshape, dtype, device):
    _layer_norm_case(xshape, nshape, "weight+bias", dtype, device)


def _layer_norm_case(xshape, nshape, affine, dtype, device):
    x = torch.randn(xshape, dtype=dtype, device=device)
    w, b = _params(nshape, affine, dtype, device)
    assert_matches_torch(lambda x, w, b: TF.layer_norm(x, nshape, w, b, 1e-5),
                         lambda x, w, b: F.layer_norm(x, nshape, w, b, 1e-5), [x, w, b])


@pytest.mark.parametrize("affine,eps", [("none", None), ("weight", 1e-6)])
@pytest.mark.parametrize("xshape,nshape", SHAPES, ids=str)
def test_rms_norm_matches_torch(xshape, nshape, affine, eps, mode, device):
    _rms_norm_case(xshape, nshape, affine, eps, mode, device)


@pytest.mark.parametrize("xshape,nshape", LONG, ids=str)
def test_rms_norm_long_rows(xshape, nshape, device):
    _rms_norm_case(xshape, nshape, "weight", None, torch.float32, device)


def _rms_norm_case(xshape, nshape, affine, eps, dtype, device):
    x = torch.randn(xshape, dtype=dtype, device=device)
    w, _ = _params(nshape, affine, dtype, device)
    assert_matches_torch(lambda x, w: TF.rms_norm(x, nshape, w, eps),
                         lambda x, w: F.rms_norm(x, nshape, w, eps), [x, w])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_input_with_fp32_params_keeps_torchs_dtype(dtype, device):
    x = torch.randn(4, 33, dtype=dtype, device=device)
    w, b = torch.randn(33, device=device), torch.randn(33, device=device)
    # torch defines this mixed-dtype rule on the CPU; its CUDA kernel refuses the mix
    # (torch 2.11: "expected scalar type Half but found Float"), so the oracle runs there.
    def ref(x, w, b):
        return F.layer_norm(x.cpu(), (33,), w.cpu(), b.cpu()).to(x.device)
    assert_matches_torch(lambda x, w, b: TF.layer_norm(x, (33,), w, b), ref, [x, w, b], dtype=dtype)


AUTOCAST_MODULES = [
    (lambda lib: lib.LayerNorm(33), (4, 6, 33)),
    (lambda lib: lib.RMSNorm(33), (4, 6, 33)),
    (lambda lib: lib.GroupNorm(3, 6, affine=True), (4, 6, 33)),
    (lambda lib: lib.InstanceNorm1d(6, affine=True), (4, 6, 33)),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("ctor,shape", AUTOCAST_MODULES)
def test_autocast_result_dtype(ctor, shape, dtype, device):
    ours, ref = ctor(tritonnorm).to(device), ctor(nn).to(device)
    x = torch.randn(shape, device=device)
    with torch.autocast(device, dtype=dtype):
        h = x @ torch.eye(33, device=device)  # a low-precision activation, as in a model
        assert ours(h).dtype == ref(h).dtype


@pytest.mark.parametrize("mean", [1e4, -3e3])
def test_large_mean_is_stable(mean, tiling, device):
    """Rows with mean 1e4 and std 1: no E[x^2] - E[x]^2 cancellation."""
    torch.manual_seed(0)
    x64 = torch.randn(4, 300, dtype=torch.float64, device=device) + mean
    x = x64.float()
    ref = F.layer_norm(x.double(), (300,)).float()  # exact statistics of the fp32 input
    ours = TF.layer_norm(x, (300,))
    torch_err = (F.layer_norm(x, (300,)) - ref).abs().max()
    # As close to the exact answer as torch's own fp32 kernel, within 2x.
    assert (ours - ref).abs().max() <= 2 * torch_err + 1e-5


def test_modules_are_torch_modules_with_torch_state(device):
    ln, rms = tritonnorm.LayerNorm((4, 5), eps=1e-3), tritonnorm.RMSNorm(5, elementwise_affine=False)
    assert isinstance(ln, nn.LayerNorm) and isinstance(rms, nn.RMSNorm)
    assert ln.state_dict().keys() == nn.LayerNorm((4, 5)).state_dict().keys()
    assert repr(ln) == repr(nn.LayerNorm((4, 5), eps=1e-3))
    assert rms.weight is None and rms.eps is None
    ref = nn.LayerNorm((4, 5), eps=1e-3, bias=False).to(device)
    ours = tritonnorm.LayerNorm((4, 5), eps=1e-3, bias=False).to(device)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 5, device=device)
    torch.testing.assert_close(ours(x), ref(x))
