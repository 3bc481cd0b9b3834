"""`tritonnorm bench --suite fused`: fused epilogues against torch's composition.

* ``add_rms`` / ``add_layer``: ``add_rms_norm(x, r)`` / ``add_layer_norm(x, r)`` against
  ``h = x + r`` then the norm (LLM pre-norm blocks);
* ``gn_silu``: ``group_norm(x, 32, activation="silu")`` against the norm then F.silu
  (diffusion UNets, channels_last);
* ``bn_add_relu``: ``batch_norm(x, residual=r, activation="relu")`` against the norm,
  the add and F.relu (ResNet blocks, training, channels_last);

each eager and under torch.compile.  GB/s counts the minimal bytes of the fused pass,
per element of x (E bytes each): the norm's 2 E forward and 3 E backward, plus each
extra tensor read or written once (the residual, h, their gradients).  The roofline is
a device-to-device copy of x (2 E per element) in the same run.  Rows go to fused.csv
in bench.csv's columns, with fused.md (geomean speedups) and one PNG per norm and pass.
"""
import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

import tritonnorm.functional as TF

from .bench import _timer, _write_csv, report


def _add_norm(norm):
    def ours(x, r, w, b):
        if norm == "add_rms":
            return TF.add_rms_norm(x, r, (x.shape[-1],), w)
        return TF.add_layer_norm(x, r, (x.shape[-1],), w, b)

    def ref(x, r, w, b):
        h = x + r
        if norm == "add_rms":
            return F.rms_norm(h, (x.shape[-1],), w), h
        return F.layer_norm(h, (x.shape[-1],), w, b), h
    return ours, ref


# name -> (ours, torch's composition, bytes a pass per element, GPU shapes, tiny shapes,
#          channels_last, uses the residual, has a bias).  Each GPU shape recompiles
# torch.compile's side (about 10 s): a few.
CASES = {
    "gn_silu": (lambda x, r, w, b: TF.group_norm(x, 32, w, b, activation="silu"),
                lambda x, r, w, b: F.silu(F.group_norm(x, 32, w, b)),
                {"fwd": 2, "bwd": 3, "fwd+bwd": 5}, [(8, 320, 64, 64)], [(2, 64, 4, 4)],
                True, False, True),
    "bn_add_relu": (lambda x, r, w, b: TF.batch_norm(x, None, None, w, b, True, residual=r,
                                                     activation="relu"),
                    lambda x, r, w, b: F.relu(F.batch_norm(x, None, None, w, b, True) + r),
                    {"fwd": 3, "bwd": 4, "fwd+bwd": 7}, [(32, 256, 56, 56)], [(2, 8, 4, 4)],
                    True, True, True),
    "add_rms": (*_add_norm("add_rms"), {"fwd": 4, "bwd": 4, "fwd+bwd": 8},
                [(8192, 4096), (16384, 2048)], [(16, 64)], False, True, False),
    "add_layer": (*_add_norm("add_layer"), {"fwd": 4, "bwd": 4, "fwd+bwd": 8},
                  [(8192, 4096), (16384, 2048)], [(16, 64)], False, True, True),
}


def _providers(ours, ref, on_gpu):
    out = {"tritonnorm": ours, "torch": ref}
    if on_gpu:
        torch._dynamo.reset()
        out["torch.compile"] = torch.compile(ref)
    return out


def _pass_fns(fn, x, r, w, b, uses_r):
    leaves = [t for t in (x, r if uses_r else None, w, b) if t is not None]

    def fwd():
        with torch.no_grad():
            fn(x, r, w, b)
    out = fn(x, r, w, b)
    outs = out if isinstance(out, tuple) else (out,)
    grads = tuple(torch.randn_like(o) for o in outs)
    return {"fwd": fwd,
            "bwd": lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True),
            "fwd+bwd": lambda: torch.autograd.grad(fn(x, r, w, b), leaves, grads)}


def run_fused(dtypes, out_dir="perf/out") -> Path:
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    where = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    timer = _timer(on_gpu)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(gpu=where, torch=torch.__version__, triton=triton.__version__, timestamp=stamp)
    rows = []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The first shape of every case before the second of any: a run cut short covers each.
    jobs = [(n, shape, d) for i in range(2) for n, case in CASES.items()
            for shape in (case[3] if on_gpu else case[4])[i:i + 1] for d in dtypes]
    for i, (norm, shape, dtype) in enumerate(jobs):
        print(f"[{i + 1}/{len(jobs)}] {norm} {'x'.join(map(str, shape))} {str(dtype)[6:]}",
              flush=True)
        ours, ref, nbytes, _, _, cl, uses_r, has_b = CASES[norm]
        fmt = torch.channels_last if cl else torch.contiguous_format
        x, r = (torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
                .requires_grad_() for _ in "xr")
        w, b = (torch.randn(shape[1] if cl else shape[-1], device=device, dtype=dtype,
                            requires_grad=True) for _ in "wb")
        b = b if has_b else None
        copy_ms = timer(lambda: x.detach().clone())[0]
        copy_gbps = 2 * x.numel() * x.element_size() / copy_ms / 1e6
        for name, fn in _providers(ours, ref, on_gpu).items():
            for pass_, run in _pass_fns(fn, x, r, w, b, uses_r).items():
                ms, lo, hi = timer(run)
                gbps = nbytes[pass_] * x.numel() * x.element_size() / ms / 1e6
                rows.append(dict(meta, provider=name, norm=norm, **{"pass": pass_},
                                 shape="x".join(map(str, shape)),
                                 dtype=str(dtype).replace("torch.", ""),
                                 layout="nhwc" if cl else "nchw",
                                 ms_median=f"{ms:.5f}", ms_q20=f"{lo:.5f}", ms_q80=f"{hi:.5f}",
                                 gbps=f"{gbps:.4g}", pct_of_copy=f"{100 * gbps / copy_gbps:.4g}",
                                 copy_gbps=f"{copy_gbps:.4g}"))
        _write_csv(rows, out / "fused.csv")   # a run cut off from outside keeps its rows
    return report(rows, out / "fused.csv", out / "fused.md", where, on_gpu)
