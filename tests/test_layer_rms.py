"""LayerNorm and RMSNorm: the trailing normalized_shape is one row."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
import tritonnorm.functional as TF
from oracle import assert_matches_torch
from tritonnorm.fused import add_layer_norm

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


# Half-precision LayerNorm rows of 513 to 1024 elements, whose forward runs a row a
# program on one warp (config._warp_a_row), and rows on either side of that range.
WARP_ROWS = [((6, 600), (600,)), ((3, 2, 768), (768,)), ((4, 1024), (1024,))]


def _forward_launches(monkeypatch):
    """(programs, num_warps) of every forward launch from here on."""
    from tritonnorm import dispatch
    seen = []
    run = dispatch._run_fwd
    monkeypatch.setattr(dispatch, "_run_fwd",
                        lambda *a: (seen.append((a[3][0], a[4]["num_warps"])), run(*a))[1])
    return seen


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("xshape,nshape", WARP_ROWS, ids=str)
def test_half_precision_layer_norm_rows_of_one_warp_match_torch(xshape, nshape, dtype, residual,
                                                                device, monkeypatch):
    """Each row one program of one warp, as many programs as rows (up to 12 an SM), and
    the output and every gradient torch's -- with the residual add fused before it too
    (h = x + residual, rounded to x's dtype, then the norm of h)."""
    from tritonnorm._runtime import target_programs
    seen = _forward_launches(monkeypatch)
    x = torch.randn(xshape, dtype=dtype, device=device) * 2 + 1
    r = torch.randn_like(x) if residual else None
    w, b = _params(nshape, "weight+bias", dtype, device)
    if residual:
        assert_matches_torch(lambda x, w, b, r: add_layer_norm(x, r, nshape, w, b)[0],
                             lambda x, w, b, r: F.layer_norm(x + r, nshape, w, b), [x, w, b, r])
    else:
        _layer_norm_case(xshape, nshape, "weight+bias", dtype, device)
    rows = x.numel() // x.shape[-1]
    assert seen and all(s == (min(rows, 3 * target_programs(x)), 1) for s in seen)


@pytest.mark.parametrize("norm,width,dtype", [
    ("layer", 768, torch.float32),    # fp32 is at its floor either way
    ("layer", 512, torch.bfloat16),   # rows of 512 lost by it
    ("layer", 2048, torch.bfloat16),
    ("rms", 768, torch.bfloat16),     # one reduction, no mean: at its floor either way
], ids=str)
def test_other_rows_keep_several_rows_a_tile(norm, width, dtype, device, monkeypatch):
    seen = _forward_launches(monkeypatch)
    x = torch.randn(64, width, dtype=dtype, device=device)
    layer = (tritonnorm.LayerNorm if norm == "layer" else tritonnorm.RMSNorm)(width)
    layer.to(device, dtype)(x)
    assert seen and all(warps > 1 for _, warps in seen)


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
