"""Bytes and launches of every pass, counted under Triton's interpreter.

Runs each norm forward and backward on the CPU with the launch configs a GPU
gets (TRITONNORM_PLAN_SMS, default 8 SMs: with rows scaled to the same rows per
program, the ratios are those of a 132-SM GPU at 16x the rows) and counts, per pass:

* launches    Triton kernel launches;
* issued      bytes moved by the active lanes of every tl.load / tl.store;
* distinct    distinct bytes among them;
* sectors     32-byte sectors each load/store instruction touches, in bytes
              (coalescing: equal to `issued` when every sector is used whole);
* torch       kernels run by torch around ours (fill, copy, arithmetic), by name.

Ratios are against the minimal bytes of the pass, S = bytes of x:
forward 2S (read x, write y), backward 3S (read x and dy, write dx); a BatchNorm
training pass cannot keep a batch on chip, so its minimum is 3S forward, 5S backward.

Usage:  python perf/traffic.py [--sms 8] [--case NAME ...]
"""
import argparse
import contextlib
import os
import sys

if __name__ == "__main__":
    # Run as a script: the interpreter, a GPU's plan.  Imported (tests/test_traffic.py)
    # it leaves the environment alone: setting TRITON_INTERPRET in a GPU process would
    # turn every kernel defined later (torch.compile's too) into an interpreted one.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("TRITONNORM_PLAN_SMS", "8")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

# aten ops that launch no kernel: allocation, views, metadata.
NOT_KERNELS = {
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "view", "as_strided",
    "reshape", "_reshape_alias", "unsqueeze", "squeeze", "expand", "permute", "transpose", "t",
    "select", "slice", "alias", "detach", "detach_", "lift_fresh", "unbind", "resolve_conj",
    "resolve_neg", "result_type", "contiguous", "set_", "to", "_unsafe_view", "split", "chunk",
    "narrow", "clone_if_needed", "requires_grad_", "_has_compatible_shallow_copy_type",
}
LAUNCH = "tritonnorm::triton_launch"


class Tally:
    def __init__(self):
        self.launches = 0
        self.issued = 0
        self.sectors = 0
        self.addrs = {}   # element size -> list of address arrays

    def access(self, ptrs, mask):
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        a = ptrs.data[mask.data] if mask is not None else ptrs.data.ravel()
        a = a.astype(np.uint64).ravel()
        self.issued += a.size * size
        self.sectors += np.unique(a // 32).size * 32
        self.addrs.setdefault(size, []).append(a)

    def distinct(self) -> int:
        return sum(np.unique(np.concatenate(v)).size * s for s, v in self.addrs.items() if v)


@contextlib.contextmanager
def counting():
    """Patch the interpreter's launches, loads and stores; yield a Tally."""
    import triton.runtime.interpreter as interp
    tally = Tally()
    b = interp.InterpreterBuilder
    old = (b.create_masked_load, b.create_masked_store, interp.InterpretedFunction.run)

    def load(self, ptrs, mask, other, *a, **k):
        tally.access(ptrs, mask)
        return old[0](self, ptrs, mask, other, *a, **k)

    def store(self, ptrs, value, mask, *a, **k):
        tally.access(ptrs, mask)
        return old[1](self, ptrs, value, mask, *a, **k)

    def run(self, *a, **k):
        tally.launches += 1
        with record_function(LAUNCH):
            return old[2](self, *a, **k)

    b.create_masked_load, b.create_masked_store, interp.InterpretedFunction.run = load, store, run
    try:
        yield tally
    finally:
        b.create_masked_load, b.create_masked_store, interp.InterpretedFunction.run = old


def torch_kernels(prof):
    """(names, bytes) of the outermost kernel-launching aten ops outside our launches."""
    names, nbytes = [], 0
    for ev in prof.events():
        name = ev.name
        if not name.startswith("aten::") or name[6:] in NOT_KERNELS:
            continue
        parent, nested = ev.cpu_parent, False
        while parent is not None:
            pn = parent.name
            if pn == LAUNCH or (pn.startswith("aten::") and pn[6:] not in NOT_KERNELS):
                nested = True
                break
            parent = parent.cpu_parent
        if nested:
            continue
        names.append(name[6:])
        # Each input read and the result written once, at 4 bytes (fp32 scratch and statistics).
        nbytes += 4 * sum(int(np.prod(s)) for s in (ev.input_shapes or []) if s)
    return names, nbytes


def measure(fn):
    """Run fn once under the counters: dict of the counts."""
    with counting() as tally, profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    names, tbytes = torch_kernels(prof)
    return dict(launches=tally.launches, issued=tally.issued, distinct=tally.distinct(),
                sectors=tally.sectors, torch=names, torch_bytes=tbytes)


# name -> (module factory, shape, dtype, channels_last, training[, residual])
CASES = {
    "layer 512x4096 fp32": (lambda tn: tn.LayerNorm(4096), (512, 4096), torch.float32, False, True),
    "layer 512x4096 bf16": (lambda tn: tn.LayerNorm(4096), (512, 4096), torch.bfloat16, False, True),
    "rms 512x4096 bf16": (lambda tn: tn.RMSNorm(4096), (512, 4096), torch.bfloat16, False, True),
    "layer 64x16384 bf16": (lambda tn: tn.LayerNorm(16384), (64, 16384), torch.bfloat16, False, True),
    "layer 2x262144 fp32": (lambda tn: tn.LayerNorm(262144), (2, 262144), torch.float32, False, True),
    "group 8x320x32x32 bf16": (lambda tn: tn.GroupNorm(32, 320), (8, 320, 32, 32), torch.bfloat16,
                               False, True),
    "group 8x320x32x32 bf16 nhwc": (lambda tn: tn.GroupNorm(32, 320), (8, 320, 32, 32),
                                    torch.bfloat16, True, True),
    "instance 4x64x64x64 fp32": (lambda tn: tn.InstanceNorm2d(64, affine=True), (4, 64, 64, 64),
                                 torch.float32, False, True),
    "batch 16x64x56x56 bf16": (lambda tn: tn.BatchNorm2d(64), (16, 64, 56, 56), torch.bfloat16,
                               False, True),
    "batch 16x64x56x56 bf16 nhwc": (lambda tn: tn.BatchNorm2d(64), (16, 64, 56, 56), torch.bfloat16,
                                    True, True),
    "batch eval 16x64x56x56 bf16": (lambda tn: tn.BatchNorm2d(64), (16, 64, 56, 56), torch.bfloat16,
                                    False, False),
    # Epilogues (minimal bytes as the plain norm's; with a residual, +1S each way).
    "group+silu 8x320x32x32 bf16 nhwc": (lambda tn: tn.GroupNorm(32, 320, activation="silu"),
                                         (8, 320, 32, 32), torch.bfloat16, True, True),
    "layer+gelu 512x4096 bf16": (lambda tn: tn.LayerNorm(4096, activation="gelu"), (512, 4096),
                                 torch.bfloat16, False, True),
    "batch+relu+res 16x64x56x56 bf16 nhwc": (lambda tn: tn.BatchNorm2d(64, activation="relu"),
                                             (16, 64, 56, 56), torch.bfloat16, True, True, True),
    "batch+silu+res 16x64x56x56 bf16 nhwc": (lambda tn: tn.BatchNorm2d(64, activation="silu"),
                                             (16, 64, 56, 56), torch.bfloat16, True, True, True),
    "group+silu+res 8x320x32x32 bf16 nhwc": (lambda tn: tn.GroupNorm(32, 320, activation="silu"),
                                             (8, 320, 32, 32), torch.bfloat16, True, True, True),
}


def run_case(name):
    """Counts of the forward and (in training) the backward of one case."""
    import tritonnorm
    make, shape, dtype, cl, training = CASES[name][:5]
    residual = CASES[name][5:] == (True,)
    m = make(tritonnorm).to(dtype).train(training)
    x, r = (torch.randn(shape, dtype=dtype) for _ in range(2))
    if cl:
        x, r = (t.contiguous(memory_format=torch.channels_last) for t in (x, r))
    x.requires_grad_(training)
    r.requires_grad_(training and residual)
    s = x.numel() * x.element_size()
    batch = "batch" in name and training
    out = {}
    y = None

    def fwd():
        nonlocal y
        y = m(x, r) if residual else m(x)
    out["fwd"] = dict(measure(fwd), minimal=(3 if batch else 2) * s + residual * s)
    if training:
        dy = torch.randn_like(y)
        inputs = (x, r) if residual else (x,)
        out["bwd"] = dict(measure(lambda: torch.autograd.grad(y, inputs, dy)),
                          minimal=(5 if batch else 3) * s + residual * s)
    return out


def report(results) -> str:
    lines = ["| case | pass | launches | issued / min | distinct / min | sectors / issued | "
             "torch-side kernels |", "|---|---|---|---|---|---|---|"]
    for name, passes in results.items():
        for p, r in passes.items():
            lines.append(f"| {name} | {p} | {r['launches']} | "
                         f"{(r['issued'] + r['torch_bytes']) / r['minimal']:.3f} | "
                         f"{r['distinct'] / r['minimal']:.3f} | {r['sectors'] / max(1, r['issued']):.3f} | "
                         f"{', '.join(r['torch']) or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", choices=list(CASES), help="default: all")
    args = ap.parse_args(argv)
    results = {}
    for name in args.case or CASES:
        results[name] = run_case(name)
        print(f"counted {name}", file=sys.stderr)
    print(f"TRITONNORM_PLAN_SMS={os.environ['TRITONNORM_PLAN_SMS']}; issued includes torch-side bytes")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
