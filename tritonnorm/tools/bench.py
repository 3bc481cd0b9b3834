"""`tritonnorm bench`: throughput of every norm against torch eager, torch.compile,
apex and liger-kernel (where importable) and the device-to-device copy roofline.

GB/s counts the minimal bytes a pass must move, per element of x (E bytes each):
  forward   read x, write y                      2 E
  backward  read x and dy, write dx              3 E
  fwd+bwd   the sum                              5 E
The same counts hold for every norm: parameters, their gradients and the
statistics are O(C) or O(rows) and left out.  The roofline is a timed
device-to-device copy of the same tensor (2 E per element), measured in the
same run.  Backward timings ask for the gradients of x and of every parameter.
Without a GPU the sweep is tiny, runs under Triton's interpreter, and its
numbers are CPU numbers, not GPU numbers.
"""
import contextlib
import csv
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import triton

import tritonnorm

from .report import plot, summary

BYTES_PER_ELEMENT = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}


def _syncbn(lib, s):
    return lib.SyncBatchNorm(s[1])


# norm -> (layer factory per library, shapes from real models, layouts)
SWEEP = {
    "batch": (lambda lib, s: getattr(lib, f"BatchNorm{len(s) - 2}d")(s[1]),      # ResNet-50
              [(64, 64, 112, 112), (64, 256, 56, 56), (64, 512, 28, 28), (64, 1024, 14, 14),
               (64, 2048, 7, 7)], ["nchw", "nhwc"]),
    "syncbatch": (_syncbn, [(64, 256, 56, 56), (64, 1024, 14, 14)], ["nchw", "nhwc"]),  # world 1
    "group": (lambda lib, s: lib.GroupNorm(min(32, s[1]), s[1]),                # UNet / VAE
              [(1, 512, 64, 64), (8, 320, 64, 64), (1, 128, 512, 512)], ["nchw", "nhwc"]),
    "instance": (lambda lib, s: lib.InstanceNorm2d(s[1], affine=True),          # style transfer
                 [(4, 64, 256, 256), (4, 128, 128, 128), (4, 256, 64, 64)], ["nchw", "nhwc"]),
    "layer": (lambda lib, s: lib.LayerNorm(s[-1]),                             # ViT / LLM
              [(8192, 768), (8192, 1024), (4096, 4096), (2048, 8192), (1024, 16384)], ["nchw"]),
    "rms": (lambda lib, s: lib.RMSNorm(s[-1]),
            [(8192, 768), (4096, 4096), (2048, 8192), (1024, 16384)], ["nchw"]),
}
TINY = {"batch": [(2, 4, 8, 8)], "syncbatch": [(2, 4, 8, 8)], "group": [(2, 32, 8, 8)],
        "instance": [(2, 4, 8, 8)], "layer": [(16, 64)], "rms": [(16, 64)]}
COLUMNS = ["gpu", "torch", "triton", "timestamp", "provider", "norm", "pass", "shape", "dtype",
           "layout", "ms_median", "ms_q20", "ms_q80", "gbps", "pct_of_copy", "copy_gbps"]


def _timer(on_gpu: bool):
    """fn -> (median, q20, q80) in ms: do_bench on a GPU, a few wall-clock runs here."""
    if on_gpu:
        return lambda fn: tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))

    def cpu(fn, reps=3):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        return statistics.median(times), times[0], times[-1]
    return cpu


def _apex_layer(norm, shape):
    """apex's fused layer for this norm, or None where apex has none (or is absent)."""
    try:
        import apex.normalization as apex_norm
    except ImportError:
        return None
    if norm == "layer":
        return apex_norm.FusedLayerNorm(shape[-1])
    if norm == "rms" and hasattr(apex_norm, "FusedRMSNorm"):
        return apex_norm.FusedRMSNorm(shape[-1])
    return None


def _liger_layer(norm, shape):
    """liger-kernel's Triton layer for this norm, or None (absent, or none for the norm)."""
    try:
        if norm == "layer":
            from liger_kernel.transformers.layer_norm import LigerLayerNorm
            return LigerLayerNorm(shape[-1], eps=1e-5, bias=True)
        if norm == "rms":
            from liger_kernel.transformers.rms_norm import LigerRMSNorm
            return LigerRMSNorm(shape[-1], eps=torch.finfo(torch.float32).eps)
        if norm == "group":
            from liger_kernel.transformers.group_norm import LigerGroupNorm
            return LigerGroupNorm(shape[1], min(32, shape[1]), eps=1e-5, bias=True)
    except ImportError:
        return None
    return None


def _providers(on_gpu: bool):
    """name -> (norm, shape) -> layer or None."""
    def ours(norm, shape):
        return SWEEP[norm][0](tritonnorm, shape)

    def eager(norm, shape):
        if norm == "syncbatch" and not on_gpu:
            return None  # torch's SyncBatchNorm refuses CPU tensors in training
        return SWEEP[norm][0](nn, shape)

    out = {"tritonnorm": ours, "torch": eager}
    if on_gpu:
        # A fresh Dynamo cache per layer: every shape recompiles the same forward,
        # and past the recompile limit Dynamo would quietly fall back to eager.
        def compiled(norm, shape):
            torch._dynamo.reset()
            return torch.compile(eager(norm, shape))
        out["torch.compile"] = compiled
        if _apex_layer("layer", (1, 8)) is not None:
            out["apex"] = _apex_layer
        if _liger_layer("layer", (1, 8)) is not None:
            out["liger"] = _liger_layer
    return out


def _pass_fns(layer, x):
    """pass -> a callable that runs it once."""
    leaves = [x] + [p for p in layer.parameters() if p.requires_grad]

    def fwd():
        with torch.no_grad():
            layer(x)
    y = layer(x)
    dy = torch.randn_like(y)
    return {"fwd": fwd,
            "bwd": lambda: torch.autograd.grad(y, leaves, dy, retain_graph=True),
            "fwd+bwd": lambda: torch.autograd.grad(layer(x), leaves, dy)}


@contextlib.contextmanager
def world_of_one(device: str):
    """SyncBatchNorm needs a process group: a single-rank one, in memory, torn
    down again unless the caller already had one."""
    import torch.distributed as dist
    mine = not dist.is_initialized()
    if mine:
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        if mine:
            dist.destroy_process_group()


def _jobs(norms, dtypes, quick, tiny):
    """(norm, shape, dtype, layout), ordered by shape rank first, so a sweep cut
    short by its time budget still covers every norm."""
    out = []
    for norm in norms:
        shapes = TINY[norm] if tiny else SWEEP[norm][1][:2 if quick else None]
        out += [(i, norm, s, d, lay) for i, s in enumerate(shapes) for d in dtypes
                for lay in SWEEP[norm][2]]
    return [j[1:] for j in sorted(out, key=lambda j: j[0])]


def _write_csv(rows, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _measure(jobs, providers, timer, meta, device, budget_s, path):
    rows, start = [], time.perf_counter()
    for i, (norm, shape, dtype, layout) in enumerate(jobs):
        if budget_s is not None and i and time.perf_counter() - start > budget_s:
            print(f"\ntime budget of {budget_s:.0f} s spent: {len(jobs) - i} of {len(jobs)} "
                  "cases not measured", file=sys.stderr)
            break
        x = torch.randn(shape, device=device, dtype=dtype)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        copy_ms = timer(lambda: x.detach().clone(memory_format=torch.preserve_format))[0]
        copy_gbps = 2 * x.numel() * x.element_size() / copy_ms / 1e6
        for name, make in providers.items():
            try:
                layer = make(norm, shape)
                if layer is None:
                    continue
                timed = {p: timer(fn) for p, fn in _pass_fns(layer.to(device, dtype), x).items()}
            except Exception as e:  # one provider failing must not end the sweep
                print(f"\n{name} {norm} {shape} {dtype}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            for pass_, (ms, lo, hi) in timed.items():
                gbps = BYTES_PER_ELEMENT[pass_] * x.numel() * x.element_size() / ms / 1e6
                rows.append(dict(meta, provider=name, norm=norm, **{"pass": pass_},
                                 shape="x".join(map(str, shape)),
                                 dtype=str(dtype).replace("torch.", ""), layout=layout,
                                 ms_median=f"{ms:.5f}", ms_q20=f"{lo:.5f}", ms_q80=f"{hi:.5f}",
                                 gbps=f"{gbps:.4g}", pct_of_copy=f"{100 * gbps / copy_gbps:.4g}",
                                 copy_gbps=f"{copy_gbps:.4g}"))
        _write_csv(rows, path)  # after each case: a run cut off from outside keeps its rows
        done = (i + 1) * 30 // len(jobs)
        print(f"\r[{'#' * done}{' ' * (30 - done)}] {i + 1}/{len(jobs)} "
              f"{time.perf_counter() - start:4.0f}s {norm} "
              f"{'x'.join(map(str, shape))} {str(dtype)[6:]} {layout}    ", end="", file=sys.stderr)
    print(file=sys.stderr)
    return rows


def run_bench(norms, dtypes, quick=False, out_dir="perf/out", budget_s=None, tiny=None) -> Path:
    """Sweep ``norms`` x ``dtypes``; ``tiny`` (default: no GPU) takes the tiny shapes."""
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    where = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    if not on_gpu:
        print("No GPU: a tiny sweep under Triton's interpreter. These are CPU numbers, "
              "NOT GPU numbers; quote none of them.")
    timer, providers = _timer(on_gpu), _providers(on_gpu)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(gpu=where, torch=torch.__version__, triton=triton.__version__, timestamp=stamp)
    jobs = _jobs(norms, dtypes, quick, not on_gpu if tiny is None else tiny)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.csv"
    with world_of_one(device) if "syncbatch" in norms else contextlib.nullcontext():
        rows = _measure(jobs, providers, timer, meta, device, budget_s, path)
    return report(rows, path, out / "summary.md", where, on_gpu)


def report(rows, path: Path, md: Path, where: str, on_gpu: bool) -> Path:
    """Write the rows' CSV, their plots and their speedup table (printed too), and name
    every file written."""
    _write_csv(rows, path)
    pngs = plot(rows, path.parent)
    header = [f"Device: {where}; torch {torch.__version__}, triton {triton.__version__}."]
    if not on_gpu:
        header.append("Triton's interpreter on the CPU: these timings are NOT GPU numbers.")
    text = "\n".join(header) + "\n\n" + summary(rows)
    print(text)
    md.write_text(text + "\n")
    for f in [path, md, *pngs]:
        print(f"wrote {f}")
    return path
