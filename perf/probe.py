"""Kernel time without the host: a few norms, each under a few launch configs.

``tritonnorm bench`` times eager calls, which on small and mid-sized tensors is
the host's time as much as the GPU's.  Here the time is the sum of the device
time of the kernels a pass runs, from torch.profiler (CUPTI), so the host does
not count: for ours under config variants (config.override) and for torch, with
a device-to-device copy of the input as the roofline.  GPU only.  (A first
version replayed CUDA graphs: the capture of torch's own instance_norm failed on
an H200 and left the process unable to draw random numbers.)

    python3 perf/probe.py --out probe.csv [--budget-s 90]
"""
import argparse
import csv
import time

import torch
import torch.nn.functional as F

import tritonnorm.functional as TF
from tritonnorm import config
from tritonnorm.tools.timing import kernel_us

# name -> (shape, dtype, channels_last, ours(x, w, b), torch(x, w, b), params)
CASES = {
    "instance 4x64x256x256 fp32": ((4, 64, 256, 256), torch.float32, False,
                                   lambda x, w, b: TF.instance_norm(x, weight=w, bias=b),
                                   lambda x, w, b: F.instance_norm(x, weight=w, bias=b), 64),
    "batch 64x64x112x112 fp32": ((64, 64, 112, 112), torch.float32, False,
                                 lambda x, w, b: TF.batch_norm(x, None, None, w, b, True),
                                 lambda x, w, b: F.batch_norm(x, None, None, w, b, True), 64),
    "batch 64x64x112x112 fp32 nhwc": ((64, 64, 112, 112), torch.float32, True,
                                      lambda x, w, b: TF.batch_norm(x, None, None, w, b, True),
                                      lambda x, w, b: F.batch_norm(x, None, None, w, b, True), 64),
    "group 8x512x64x64 bf16 nhwc": ((8, 512, 64, 64), torch.bfloat16, True,
                                    lambda x, w, b: TF.group_norm(x, 32, w, b),
                                    lambda x, w, b: F.group_norm(x, 32, w, b), 512),
    "layer 16384x4096 bf16": ((16384, 4096), torch.bfloat16, False,
                              lambda x, w, b: TF.layer_norm(x, (4096,), w, b),
                              lambda x, w, b: F.layer_norm(x, (4096,), w, b), 4096),
    "rms 16384x4096 bf16": ((16384, 4096), torch.bfloat16, False,
                            lambda x, w, b: TF.rms_norm(x, (4096,), w),
                            lambda x, w, b: F.rms_norm(x, (4096,), w), 4096),
}
VARIANTS = [{}, {"split_scale": 4}, {"num_warps": 4}, {"num_warps": 16}, {"max_tile": 8192}]


def _kernel_ms(fn, iters: int = 20) -> float:
    """Mean device time of fn's kernels per call, in ms."""
    return kernel_us(fn, iters) / 1e3


def _passes(norm, x, w, b, g):
    def fwd():
        with torch.no_grad():
            norm(x, w, b)
    xg = x.detach().requires_grad_()

    def fwd_bwd():
        torch.autograd.grad(norm(xg, w, b), (xg, w), g)
    return fwd, fwd_bwd


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="probe.csv", help="CSV written (default probe.csv)")
    ap.add_argument("--budget-s", type=float, default=90,
                    help="seconds after which no new case starts (default 90)")
    args = ap.parse_args()
    t0, rows = time.time(), []
    for name, (shape, dtype, cl, ours, ref, c) in CASES.items():
        if time.time() - t0 > args.budget_s:
            print(f"budget spent: {name} and later cases skipped", flush=True)
            break
        x = torch.randn(shape, device="cuda", dtype=dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.rand(c, device="cuda", dtype=dtype, requires_grad=True)
        b = torch.rand(c, device="cuda", dtype=dtype, requires_grad=True)
        g = torch.randn_like(x)
        copy_ms = _kernel_ms(lambda: x.clone())
        runs = [("torch", {}, ref)] + [("tritonnorm", v, ours) for v in VARIANTS]
        for provider, variant, norm in runs:
            try:
                with config.override(**variant):
                    fwd, bwd = _passes(norm, x, w, b, g)
                    times = [_kernel_ms(fwd), _kernel_ms(bwd)]
            except Exception as e:  # noqa: BLE001 -- a variant that fails is reported, not fatal
                print(f"{name} {provider} {variant}: {type(e).__name__}: {e}", flush=True)
                continue
            row = dict(case=name, provider=provider, variant=repr(variant), fwd_ms=f"{times[0]:.4f}",
                       fwd_bwd_ms=f"{times[1]:.4f}", copy_ms=f"{copy_ms:.4f}")
            rows.append(row)
            print(f"[{time.time() - t0:5.0f} s] {name:32s} {provider:10s} {repr(variant):22s} "
                  f"fwd {times[0]:.4f} ms  fwd+bwd {times[1]:.4f} ms  copy {copy_ms:.4f} ms", flush=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
