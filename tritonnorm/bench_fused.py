"""`tritonnorm bench --suite fused`: the residual add fused into RMSNorm/LayerNorm.

``add_rms_norm(x, r)`` / ``add_layer_norm(x, r)`` against torch's ``h = x + r`` then
the norm, eager and under torch.compile.  GB/s counts the minimal bytes of the fused
pass, per element of x (E bytes each):
  forward   read x and r, write y and h           4 E
  backward  read h, dy and dh, write the gradient 4 E (x and r share it)
  fwd+bwd   the sum                                8 E
The roofline is a device-to-device copy of x (2 E per element) in the same run.
Rows go to fused.csv in bench.csv's columns (norm "add_rms" / "add_layer"), with
fused.md (geomean speedups) and one PNG per norm and pass.
"""
import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

import tritonnorm.functional as TF

from .bench import _timer, _write_csv, report

BYTES_PER_ELEMENT = {"fwd": 4, "bwd": 4, "fwd+bwd": 8}
# Tokens x hidden size of LLM pre-norm blocks (a Llama-7B width, a 2048-wide model): two, as
# every shape and norm recompiles torch.compile's side (about 10 s each).
SHAPES = [(8192, 4096), (16384, 2048)]
TINY = [(16, 64)]


def _fused(norm):
    if norm == "add_rms":
        return lambda x, r, w, b: TF.add_rms_norm(x, r, (x.shape[-1],), w)
    return lambda x, r, w, b: TF.add_layer_norm(x, r, (x.shape[-1],), w, b)


def _unfused(norm):
    def run(x, r, w, b):
        h = x + r
        if norm == "add_rms":
            return F.rms_norm(h, (x.shape[-1],), w), h
        return F.layer_norm(h, (x.shape[-1],), w, b), h
    return run


def _providers(norm, on_gpu):
    out = {"tritonnorm": _fused(norm), "torch": _unfused(norm)}
    if on_gpu:
        torch._dynamo.reset()
        out["torch.compile"] = torch.compile(_unfused(norm))
    return out


def _pass_fns(fn, x, r, w, b):
    leaves = [x, r, w] + ([b] if b is not None else [])

    def fwd():
        with torch.no_grad():
            fn(x, r, w, b)
    y, h = fn(x, r, w, b)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    return {"fwd": fwd,
            "bwd": lambda: torch.autograd.grad((y, h), leaves, (dy, dh), retain_graph=True),
            "fwd+bwd": lambda: torch.autograd.grad(fn(x, r, w, b), leaves, (dy, dh))}


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
    jobs = [(n, s, d) for s in (SHAPES if on_gpu else TINY) for n in ("add_rms", "add_layer")
            for d in dtypes]
    for i, (norm, shape, dtype) in enumerate(jobs):
        print(f"[{i + 1}/{len(jobs)}] {norm} {'x'.join(map(str, shape))} {str(dtype)[6:]}",
              flush=True)
        x, r = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in "xr")
        w, b = (torch.randn(shape[-1], device=device, dtype=dtype, requires_grad=True)
                for _ in "wb")
        b = b if norm == "add_layer" else None
        copy_ms = timer(lambda: x.detach().clone())[0]
        copy_gbps = 2 * x.numel() * x.element_size() / copy_ms / 1e6
        for name, fn in _providers(norm, on_gpu).items():
            for pass_, run in _pass_fns(fn, x, r, w, b).items():
                ms, lo, hi = timer(run)
                gbps = BYTES_PER_ELEMENT[pass_] * x.numel() * x.element_size() / ms / 1e6
                rows.append(dict(meta, provider=name, norm=norm, **{"pass": pass_},
                                 shape="x".join(map(str, shape)),
                                 dtype=str(dtype).replace("torch.", ""), layout="nchw",
                                 ms_median=f"{ms:.5f}", ms_q20=f"{lo:.5f}", ms_q80=f"{hi:.5f}",
                                 gbps=f"{gbps:.4g}", pct_of_copy=f"{100 * gbps / copy_gbps:.4g}",
                                 copy_gbps=f"{copy_gbps:.4g}"))
        _write_csv(rows, out / "fused.csv")   # a run cut off from outside keeps its rows
    return report(rows, out / "fused.csv", out / "fused.md", where, on_gpu)
