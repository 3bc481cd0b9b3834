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

from .bench import _fmt, _inputs, _write_csv, report
from .timing import gpu_time, host_us, l2_bytes


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
    """pass -> a callable that runs it once on this input set and returns its results."""
    leaves = [t for t in (x, r if uses_r else None, w, b) if t is not None]

    def fwd():
        with torch.no_grad():
            return fn(x, r, w, b)
    out = fn(x, r, w, b)
    outs = out if isinstance(out, tuple) else (out,)
    grads = tuple(torch.ones_like(o) for o in outs)   # no CUDA generator (timing.py)
    return {"fwd": fwd,
            "bwd": lambda: torch.autograd.grad(outs, leaves, grads, retain_graph=True),
            "fwd+bwd": lambda: torch.autograd.grad(fn(x, r, w, b), leaves, grads)}


def run_fused(dtypes, out_dir="perf/out") -> Path:
    """Each fused case against torch's composition (and torch.compile of it on a GPU):
    GPU and host time per pass, as the sweep takes them (timing.py)."""
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    where = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(gpu=where, torch=torch.__version__, triton=triton.__version__, timestamp=stamp)
    rows, l2 = [], l2_bytes()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The first shape of every case before the second of any: a run cut short covers each.
    jobs = [(n, shape, d) for i in range(2) for n, case in CASES.items()
            for shape in (case[3] if on_gpu else case[4])[i:i + 1] for d in dtypes]
    for i, (norm, shape, dtype) in enumerate(jobs):
        print(f"[{i + 1}/{len(jobs)}] {norm} {'x'.join(map(str, shape))} {str(dtype)[6:]}",
              flush=True)
        ours, ref, nbytes, _, _, cl, uses_r, has_b = CASES[norm]
        layout = "nhwc" if cl else "nchw"
        xs, rs = _inputs(shape, dtype, layout, device, l2)
        rs = [r.requires_grad_() for r in rs]
        c = shape[1] if cl else shape[-1]
        w, b = (torch.linspace(0.5, 1.5, c).to(device, dtype).requires_grad_() for _ in "wb")
        b = b if has_b else None
        size = xs[0].numel() * xs[0].element_size()
        copy = gpu_time([lambda x=x: x.detach().clone() for x in xs])
        copy_gbps = 2 * size / copy.us[0] / 1e3 if copy.us else None
        for name, fn in _providers(ours, ref, on_gpu).items():
            sets = [_pass_fns(fn, x, r, w, b, uses_r) for x, r in zip(xs, rs)]
            for pass_ in sets[0]:
                fns = [p[pass_] for p in sets]
                t, host = gpu_time(fns), host_us(fns[0], 30 if on_gpu else 3)
                us = t.us or (None, None, None)
                gbps = nbytes[pass_] * size / us[0] / 1e3 if t.us else None
                rows.append(dict(meta, provider=name, norm=norm, **{"pass": pass_},
                                 shape="x".join(map(str, shape)),
                                 dtype=str(dtype).replace("torch.", ""), layout=layout,
                                 method=t.method, sets=len(xs), gpu_us=_fmt(us[0], ".5g"),
                                 gpu_us_q20=_fmt(us[1], ".5g"), gpu_us_q80=_fmt(us[2], ".5g"),
                                 host_us=_fmt(host, ".4g"), gbps=_fmt(gbps),
                                 pct_of_copy=_fmt(gbps and copy_gbps and 100 * gbps / copy_gbps),
                                 copy_gbps=_fmt(copy_gbps)))
        _write_csv(rows, out / "fused.csv")   # a run cut off from outside keeps its rows
    return report(rows, out / "fused.csv", out / "fused.md", where, on_gpu)
