"""`tritonnorm check`: run every norm forward and backward here and compare with torch.

On a GPU the kernels run compiled; without one they run on the CPU under
Triton's interpreter (TRITON_INTERPRET=1 must be set before tritonnorm is
imported -- ``python -m tritonnorm check`` does this itself).
"""
import time

import torch
import torch.nn as nn

import tritonnorm

# Max error allowed against torch (abs, or relative above magnitude 1), per dtype.
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-1, torch.float64: 1e-9}


def _cases():
    """(name, our module, torch module, input shape, channels_last)."""
    return [
        ("BatchNorm2d", tritonnorm.BatchNorm2d(16), nn.BatchNorm2d(16), (4, 16, 13, 11), False),
        ("BatchNorm2d", tritonnorm.BatchNorm2d(16), nn.BatchNorm2d(16), (4, 16, 13, 11), True),
        ("BatchNorm1d", tritonnorm.BatchNorm1d(10, momentum=None), nn.BatchNorm1d(10, momentum=None), (33, 10), False),
        ("BatchNorm3d", tritonnorm.BatchNorm3d(3), nn.BatchNorm3d(3), (2, 3, 4, 5, 6), False),
        ("LayerNorm", tritonnorm.LayerNorm(768), nn.LayerNorm(768), (8, 16, 768), False),
        ("RMSNorm", tritonnorm.RMSNorm(1000), nn.RMSNorm(1000), (4, 7, 1000), False),
        ("GroupNorm", tritonnorm.GroupNorm(8, 32), nn.GroupNorm(8, 32), (2, 32, 15, 15), False),
        ("GroupNorm", tritonnorm.GroupNorm(8, 32), nn.GroupNorm(8, 32), (2, 32, 15, 15), True),
        ("InstanceNorm1d", tritonnorm.InstanceNorm1d(6, affine=True), nn.InstanceNorm1d(6, affine=True), (3, 6, 101), False),
        ("InstanceNorm2d", tritonnorm.InstanceNorm2d(5, affine=True, track_running_stats=True),
         nn.InstanceNorm2d(5, affine=True, track_running_stats=True), (2, 5, 19, 17), True),
        ("InstanceNorm3d", tritonnorm.InstanceNorm3d(3, affine=True), nn.InstanceNorm3d(3, affine=True), (2, 3, 5, 6, 7), False),
    ]


def _scaled_err(a, b) -> float:
    """Max abs difference, relative to the reference's magnitude when that exceeds 1."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1)).item()


def _run(module, x, dy):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad for p in module.parameters()]
    for p in module.parameters():
        p.grad = None
    return y, grads


LEGEND = ("err y, err grads: the largest error of tritonnorm's output, and of its gradients of\n"
          "  x, weight and bias (and the running statistics), against torch's: absolute, or\n"
          "  relative above magnitude 1; tol: the bound for the dtype; ms: wall time of\n"
          "  tritonnorm's forward and backward of the case, its compile included (a check, not\n"
          "  a benchmark: `tritonnorm bench` times).")


def run_check(dtypes=(torch.float32, torch.bfloat16, torch.float16, torch.float64)) -> bool:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, Triton interpreter"
    print(f"tritonnorm {tritonnorm.__version__} check on {where}: torch {torch.__version__}")
    header = f"{'norm':<15}{'shape':<18}{'dtype':<10}{'layout':<9}{'err y':>10}{'err grads':>12}{'tol':>8}{'ms':>8}  result"
    print(LEGEND)
    print(header)
    print("-" * len(header))
    ok = True
    torch.manual_seed(0)
    for name, ours, ref, shape, cl in _cases():
        for dtype in dtypes:
            ref = ref.to(device=device, dtype=dtype)
            with torch.no_grad():
                for p in ref.parameters():
                    p.uniform_(0.5, 1.5)
            ours = ours.to(device=device, dtype=dtype)
            ours.load_state_dict(ref.state_dict())
            x = torch.randn(shape, device=device, dtype=dtype) * 2 + 1
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            dy = torch.randn_like(x)
            t0 = time.perf_counter()
            y, g = _run(ours, x, dy)
            ms = (time.perf_counter() - t0) * 1e3
            y_ref, g_ref = _run(ref, x, dy)
            err_y = _scaled_err(y, y_ref)
            err_g = max(_scaled_err(a, b) for a, b in zip(g, g_ref))
            # Running statistics (BatchNorm, tracked InstanceNorm) count as gradients here.
            err_g = max([err_g] + [_scaled_err(a, b) for a, b in zip(ours.buffers(), ref.buffers())
                                   if a.is_floating_point()])
            good = err_y <= TOL[dtype] and err_g <= TOL[dtype] and y.dtype == y_ref.dtype
            ok &= good
            print(f"{name:<15}{'x'.join(map(str, shape)):<18}{str(dtype)[6:]:<10}"
                  f"{'ch-last' if cl else 'contig':<9}{err_y:>10.2e}{err_g:>12.2e}{TOL[dtype]:>8.0e}"
                  f"{ms:>8.1f}  {'ok' if good else 'FAIL'}")
    print("all norms match torch" if ok else "MISMATCH against torch")
    return ok
