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

from .bench import _inputs, _write_csv, no_donated_buffers, report, timing_rows
from .timing import gpu_time, host_us, l2_bytes, on_stream


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
    with on_stream():   # where the backward alone is captured (timing.py)
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
    with no_donated_buffers():
        for i, (norm, shape, dtype) in enumerate(jobs):
            print(f"[{i + 1}/{len(jobs)}] {norm} {'x'.join(map(str, shape))} {str(dtype)[6:]}",
                  flush=True)
            _case(rows, meta, out, norm, shape, dtype, device, l2)
    return report(rows, out / "fused.csv", out / "fused.md", where, on_gpu)


def _case(rows, meta, out, norm, shape, dtype, device, l2):
    """Measure one case against every provider; its rows go to ``rows`` and fused.csv."""
    on_gpu = device == "cuda"
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
        try:
            sets = [_pass_fns(fn, x, r, w, b, uses_r) for x, r in zip(xs, rs)]
            timed = {p: (gpu_time([s[p] for s in sets]), host_us(sets[0][p], 30 if on_gpu else 3))
                     for p in sets[0]}
        except Exception as e:  # one provider failing must not end the suite
            print(f"{name} {norm} {shape} {dtype}: {type(e).__name__}: {e}")
            continue
        finally:
            sets = None
        rows += timing_rows(dict(meta, norm=norm, shape="x".join(map(str, shape)), layout=layout,
                                 dtype=str(dtype).replace("torch.", ""), sets=len(xs)),
                            name, timed, {p: n * size for p, n in nbytes.items()}, copy_gbps)
    _write_csv(rows, out / "fused.csv")   # a run cut off from outside keeps its rows
