"""fp64 torch.autograd.gradcheck of every norm on tiny shapes, in every tiling."""
import pytest
import torch

import tritonnorm.functional as TF


def _gradcheck(fn, *shapes, device):
    torch.manual_seed(0)
    inputs = [torch.randn(s, dtype=torch.float64, device=device, requires_grad=True) for s in shapes]
    # fast_mode checks a random projection of the Jacobian: few kernel launches.
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


CASES = {
    "layer_norm": (lambda x, w, b: TF.layer_norm(x, (5,), w, b), [(3, 5), (5,), (5,)]),
    "layer_norm_2d": (lambda x, w, b: TF.layer_norm(x, (2, 3), w, b), [(2, 2, 3), (2, 3), (2, 3)]),
    "rms_norm": (lambda x, w: TF.rms_norm(x, (6,), w), [(2, 6), (6,)]),
    "group_norm": (lambda x, w, b: TF.group_norm(x, 2, w, b), [(2, 4, 3), (4,), (4,)]),
    "group_norm_4d": (lambda x, w, b: TF.group_norm(x, 3, w, b), [(1, 6, 2, 3), (6,), (6,)]),
    "instance_norm": (lambda x, w, b: TF.instance_norm(x, weight=w, bias=b), [(2, 3, 5), (3,), (3,)]),
    "instance_norm_no_affine": (lambda x: TF.instance_norm(x), [(2, 2, 2, 3)]),
    "instance_norm_running": (
        lambda x, w, b: TF.instance_norm(x, torch.zeros(3, dtype=x.dtype, device=x.device),
                                         torch.ones(3, dtype=x.dtype, device=x.device) * 2,
                                         w, b, use_input_stats=False),
        [(2, 3, 4), (3,), (3,)]),
    "batch_norm_train": (lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True),
                         [(3, 2, 4), (2,), (2,)]),
    "batch_norm_1d_train": (lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True),
                            [(5, 3), (3,), (3,)]),
    "batch_norm_eval": (
        lambda x, w, b: TF.batch_norm(x, torch.ones(2, dtype=x.dtype, device=x.device) * 0.5,
                                      torch.ones(2, dtype=x.dtype, device=x.device) * 3, w, b),
        [(3, 2, 4), (2,), (2,)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_fp64(name, tiling, device):
    fn, shapes = CASES[name]
    _gradcheck(fn, *shapes, device=device)


def test_gradcheck_channels_last(device):
    w = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, device=device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: TF.group_norm(x, 2, w), [x, w], fast_mode=True)
