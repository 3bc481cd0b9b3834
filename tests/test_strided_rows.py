"""LayerNorm/RMSNorm over the last dims of a strided view -- QK-norm of a fused QKV
projection -- read in place, with torch's output layout (dense, row-major)."""
import pytest
import torch
import torch.nn.functional as F

import tritonnorm.functional as TF
from conftest import DEVICE
from oracle import assert_matches_torch
from tritonnorm import dispatch


def _qk(qkv, h, d):
    """q of a fused [B, T, 3 * H * D] projection, as [B, T, H, D]: rows of D at stride D,
    tokens at stride 3 * H * D."""
    b, t, _ = qkv.shape
    return qkv[..., :h * d].view(b, t, h, d)


# name -> (make the view from a dense tensor, dense shape, normalized_shape)
VIEWS = {
    "qk-norm slice": (lambda t: _qk(t, 3, 16), (2, 5, 3 * 3 * 16), (16,)),
    "token-major transpose": (lambda t: t.transpose(0, 1), (7, 3, 24), (24,)),
    "two trailing dims": (lambda t: t[:, :, :2], (4, 3, 5, 4, 6), (4, 6)),
    "leading dims merged": (lambda t: t[::2, :, ::2, :], (4, 3, 4, 10), (10,)),
    # Three leading axes that no stride merges: made contiguous first, still torch's numbers.
    "unmergeable, copied": (lambda t: t[::2, ::2, ::2, :], (4, 4, 4, 10), (10,)),
}


def _norm(name):
    if name == "layer":
        return (lambda ns: lambda x, w, b: TF.layer_norm(x, ns, w, b),
                lambda ns: lambda x, w, b: F.layer_norm(x, ns, w, b))
    return (lambda ns: lambda x, w, b: TF.rms_norm(x, ns, w),
            lambda ns: lambda x, w, b: F.rms_norm(x, ns, w))


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("view", VIEWS)
def test_strided_rows_match_torch_with_torch_output_layout(view, norm, mode):
    make, shape, ns = VIEWS[view]
    ours, ref = _norm(norm)
    base = torch.randn(shape, dtype=mode, device=DEVICE)
    w = torch.randn(ns, dtype=mode, device=DEVICE)
    b = torch.randn(ns, dtype=mode, device=DEVICE)

    def on_view(fn):
        return lambda t, w, b: fn(ns)(make(t), w, b)
    y = assert_matches_torch(on_view(ours), on_view(ref), [base, w, b])
    assert y.stride() == ref(ns)(make(base), w, b).stride()


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_the_kernels_read_the_view_in_place(norm, monkeypatch):
    """A storage-pointer spy on the launcher: the forward and the backward get the view's
    own storage as x -- no copy -- and write a dense y and dx."""
    seen = []
    for name in ("_run_fwd", "_run_bwd"):
        run = getattr(dispatch, name)
        monkeypatch.setattr(dispatch, name, lambda c, tensors, *a, run=run, name=name:
                            (seen.append((name, tensors[0].data_ptr(), tensors[0].stride())),
                             run(c, tensors, *a))[1])
    qkv = torch.randn(2, 5, 3 * 3 * 16, device=DEVICE, requires_grad=True)
    q = _qk(qkv, 3, 16)
    w = torch.ones(16, device=DEVICE, requires_grad=True)
    y = TF.layer_norm(q, (16,), w) if norm == "layer" else TF.rms_norm(q, (16,), w)
    y.backward(torch.ones_like(y))
    assert y.is_contiguous() and qkv.grad.shape == qkv.shape
    assert {s[0] for s in seen} == {"_run_fwd", "_run_bwd"}
    assert all(ptr == q.data_ptr() and stride == q.stride() for _, ptr, stride in seen)
