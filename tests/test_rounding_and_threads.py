"""bf16 outputs are rounded to nearest even, as a GPU rounds (the interpreter used to
truncate); and calls from several Python threads at once give the results of
sequential calls."""
import threading

import pytest
import torch
import torch.nn as nn

import tritonnorm
from conftest import DEVICE


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("make, shape", [
    (lambda: nn.LayerNorm(256), (64, 256)),
    (lambda: nn.GroupNorm(4, 16), (4, 16, 8, 8)),
    (lambda: nn.BatchNorm2d(16), (4, 16, 8, 8)),
], ids=["layer", "group", "batch"])
def test_low_precision_outputs_are_rounded_like_torch(make, shape, dtype):
    """Against the fp64 result, our error is torch's: the fp32 result rounded once to
    nearest even.  Truncation doubles the mean error."""
    torch.manual_seed(0)
    ref = make().to(DEVICE).double()
    ours = tritonnorm.convert(make()).to(DEVICE, dtype)
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    exact = ref(x.double())
    rounded = exact.float().to(dtype)     # the best a dtype output can do: RNE of the fp32 value
    err_ours = (ours(x).double() - exact).abs().mean()
    err_best = (rounded.double() - exact).abs().mean()
    assert err_ours <= 1.05 * err_best
    # Most elements are that RNE value itself (fp32 summation order can flip a tie).
    assert (ours(x) == rounded).float().mean() > 0.97


def test_threads_give_the_results_of_sequential_calls():
    torch.manual_seed(0)
    layers = [tritonnorm.LayerNorm(48), tritonnorm.GroupNorm(2, 8), tritonnorm.BatchNorm1d(8),
              tritonnorm.RMSNorm(48)]
    layers = [layer.to(DEVICE) for layer in layers]
    inputs = [torch.randn(shape, device=DEVICE) for shape in ((16, 48), (4, 8, 12), (6, 8, 5), (16, 48))]

    def step(i, out):
        x = inputs[i].clone().requires_grad_()
        y = layers[i](x)
        y.backward(torch.ones_like(y))
        out[i] = (y.detach(), x.grad)

    expected = {}
    for i in range(4):
        step(i, expected)
    for layer in layers:
        layer.zero_grad()
    got, errors = {}, []

    def run(i):
        try:
            for _ in range(3):
                step(i, got)
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        torch.testing.assert_close(got[i][0], expected[i][0], rtol=0, atol=0)
        torch.testing.assert_close(got[i][1], expected[i][1], rtol=0, atol=0)
