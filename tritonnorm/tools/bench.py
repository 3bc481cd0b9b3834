"""`tritonnorm bench`: every norm against torch eager, torch.compile, apex and
liger-kernel (where importable), tritonnorm eager and tritonnorm under torch.compile,
at the shapes of real models, with the device-to-device copy as the roofline.

Two numbers per case, provider and pass (timing.py says how each is taken):
  GPU time   kernel-only µs per pass: CUDA-graph replays over inputs rotated through
             3x the L2 (method ``cuda_graph``), else torch.profiler's device time
             (``profiler``); ``n/a`` without a GPU.
  host time  wall µs of one eager call, the GPU queue drained before it.

GB/s and % of copy use the GPU time and count the minimal bytes a pass must move, per
element of x (E bytes each):
  forward   read x, write y                      2 E
  backward  read x and dy, write dx              3 E
  fwd+bwd   the sum                              5 E
Parameters, their gradients and the statistics are O(C) or O(rows) and left out.  The
copy is timed in the same run with the same rotation.  Backward timings ask for the
gradients of x and of every parameter.  Without a GPU the sweep is tiny, runs under
Triton's interpreter, and has host times only: CPU numbers, not GPU numbers.
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
from .timing import gpu_time, host_us, l2_bytes, on_stream, rotation

BYTES_PER_ELEMENT = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}
F32, BF16 = torch.float32, torch.bfloat16


def _syncbn(lib, s):
    return lib.SyncBatchNorm(s[1])


def _both(shapes, dtypes=(BF16,)):
    return [(s, d, lay) for s in shapes for d in dtypes for lay in ("nchw", "nhwc")]


# LLM and ViT-B rows (tokens x hidden), and two long rows.
_ROWS = [((4096, 4096), BF16, "nchw"), ((16384, 4096), BF16, "nchw"), ((8192, 8192), BF16, "nchw"),
         ((8192, 768), F32, "nchw"), ((8192, 768), BF16, "nchw"), ((2, 262144), F32, "nchw")]
_RESNET50 = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 2048, 7, 7)]

# norm -> (layer factory per library, [(shape, dtype, layout)] from real models, passes).
# The first case of each norm is the one --quick keeps.
SWEEP = {
    "layer": (lambda lib, s: lib.LayerNorm(s[-1]), _ROWS, ("fwd", "bwd", "fwd+bwd")),
    "rms": (lambda lib, s: lib.RMSNorm(s[-1]), _ROWS, ("fwd", "bwd", "fwd+bwd")),
    "group": (lambda lib, s: lib.GroupNorm(32, s[1]),               # SD UNet / VAE, GroupNorm(32)
              _both([(2, 320, 64, 64), (2, 640, 32, 32), (2, 1280, 16, 16), (1, 128, 512, 512)]),
              ("fwd", "bwd", "fwd+bwd")),
    "batch": (lambda lib, s: getattr(lib, f"BatchNorm{len(s) - 2}d")(s[1]),   # ResNet-50 training
              _both(_RESNET50, (BF16, F32)), ("fwd", "bwd", "fwd+bwd")),
    "batch_eval": (lambda lib, s: getattr(lib, f"BatchNorm{len(s) - 2}d")(s[1]).eval(),
                   _both(_RESNET50), ("fwd",)),
    "instance": (lambda lib, s: lib.InstanceNorm2d(s[1], affine=True),          # style transfer
                 _both([(4, 64, 256, 256), (8, 128, 128, 128)]), ("fwd", "bwd", "fwd+bwd")),
    "syncbatch": (_syncbn, _both([(32, 256, 56, 56)]), ("fwd", "bwd", "fwd+bwd")),  # world of 1
}
TINY = {"batch": [(2, 4, 8, 8)], "batch_eval": [(2, 4, 8, 8)], "syncbatch": [(2, 4, 8, 8)],
        "group": [(2, 32, 8, 8)], "instance": [(2, 4, 8, 8)], "layer": [(16, 64)],
        "rms": [(16, 64)]}
COLUMNS = ["gpu", "torch", "triton", "timestamp", "provider", "norm", "pass", "shape", "dtype",
           "layout", "method", "sets", "gpu_us", "gpu_us_q20", "gpu_us_q80", "host_us", "gbps",
           "pct_of_copy", "copy_gbps"]


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
            try:   # in place, its backward would overwrite dy: each replay another dy
                return LigerRMSNorm(shape[-1], eps=torch.finfo(torch.float32).eps, in_place=False)
            except TypeError:
                return LigerRMSNorm(shape[-1], eps=torch.finfo(torch.float32).eps)
        if norm == "group":
            from liger_kernel.transformers.group_norm import LigerGroupNorm
            return LigerGroupNorm(shape[1], min(32, shape[1]), eps=1e-5, bias=True)
    except ImportError:
        return None
    return None


def _compiled(make):
    """torch.compile of what ``make`` builds: static shapes, and a fresh Dynamo cache per
    shape (past its recompile limit Dynamo would quietly fall back to eager)."""
    def compiled(norm, shape):
        layer = make(norm, shape)
        if layer is None:
            return None
        torch._dynamo.reset()
        return torch.compile(layer, dynamic=False)
    return compiled


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
        out["torch.compile"] = _compiled(eager)
        out["tritonnorm+compile"] = _compiled(ours)
        if _apex_layer("layer", (1, 8)) is not None:
            out["apex"] = _apex_layer
        if _liger_layer("layer", (1, 8)) is not None:
            out["liger"] = _liger_layer
    return out


def _inputs(shape, dtype, layout, device, l2: int):
    """The rotated input sets (x, dy) of a case: enough sets for 3x the L2 on a GPU, one
    on the CPU.  Drawn once on the CPU, never from the CUDA generator (timing.py)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g).to(device, dtype)
    dy0 = torch.randn(shape, generator=g).to(device, dtype)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    k = rotation(x0.numel() * x0.element_size(), l2) if l2 else 1
    xs = [x0.roll(i, -1).contiguous(memory_format=fmt).requires_grad_() for i in range(k)]
    dys = [dy0.roll(i, -1).contiguous(memory_format=fmt) for i in range(k)]
    return xs, dys


def _pass_fns(layer, xs, dys, passes):
    """pass -> one callable per input set that runs the pass and returns its results."""
    params = [p for p in layer.parameters() if p.requires_grad]

    def fwd(x):
        def run():
            with torch.no_grad():
                return layer(x)
        return run

    def bwd(x, dy):
        with on_stream():   # where the backward is captured (timing.py)
            y = layer(x)
        return lambda: torch.autograd.grad(y, [x] + params, dy, retain_graph=True)

    def fwd_bwd(x, dy):
        return lambda: torch.autograd.grad(layer(x), [x] + params, dy)
    make = {"fwd": lambda x, dy: fwd(x), "bwd": bwd, "fwd+bwd": fwd_bwd}
    return {p: [make[p](x, dy) for x, dy in zip(xs, dys)] for p in passes}


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


def _layouts(norm):
    return ("nchw",) if norm in ("layer", "rms") else ("nchw", "nhwc")


def jobs(norms, dtypes, quick: bool, tiny: bool):
    """(norm, shape, dtype, layout) of a sweep, ordered by case rank first, so a sweep
    cut short by its time budget still covers every norm."""
    out = []
    for norm in norms:
        if tiny:
            cases = [(s, d, lay) for s in TINY[norm] for d in dtypes for lay in _layouts(norm)]
        else:
            cases = [c for c in SWEEP[norm][1] if c[1] in dtypes][:1 if quick else None]
        out += [(i, norm, *c) for i, c in enumerate(cases)]
    return [j[1:] for j in sorted(out, key=lambda j: j[0])]


def _write_csv(rows, path: Path, columns=COLUMNS) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _fmt(v, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def timing_rows(case: dict, provider: str, timed: dict, minimal_bytes: dict, copy_gbps):
    """CSV rows (COLUMNS) of one provider's passes: ``timed`` = pass -> (Timing, host µs);
    GB/s from the GPU time and the pass's ``minimal_bytes``; n/a where there is none."""
    rows = []
    for pass_, (t, host) in timed.items():
        us = t.us or (None, None, None)
        gbps = minimal_bytes[pass_] / us[0] / 1e3 if t.us else None
        rows.append(dict(case, provider=provider, **{"pass": pass_}, method=t.method,
                         gpu_us=_fmt(us[0], ".5g"), gpu_us_q20=_fmt(us[1], ".5g"),
                         gpu_us_q80=_fmt(us[2], ".5g"), host_us=_fmt(host, ".4g"),
                         gbps=_fmt(gbps), pct_of_copy=_fmt(gbps and copy_gbps and 100 * gbps / copy_gbps),
                         copy_gbps=_fmt(copy_gbps)))
    return rows


# torch.compile costs seconds of compilation per shape (static shapes, a fresh cache per
# layer), against a fraction of a second for an eager provider's three passes: within a
# device run's budget the compiled providers come after every eager case, on the first
# this many cases of each norm.
COMPILED_CASES = 1


def _phases(jobs_, providers):
    """[(case, provider names)]: every case with the eager providers, then each norm's first
    COMPILED_CASES cases with the compiled ones."""
    eager = [n for n in providers if not n.endswith("compile")]
    compiled = [n for n in providers if n.endswith("compile")]
    seen, later = {}, []
    for job in jobs_:
        seen[job[0]] = seen.get(job[0], 0) + 1
        if compiled and seen[job[0]] <= COMPILED_CASES:
            later.append((job, compiled))
    return [(job, eager) for job in jobs_] + later


def no_donated_buffers():
    """torch.compile's backward, replayed with retain_graph, must not donate its buffers."""
    import torch._functorch.config as functorch_config
    if hasattr(functorch_config, "donated_buffer"):
        return functorch_config.patch(donated_buffer=False)
    return contextlib.nullcontext()


def _measure(jobs_, providers, meta, device, budget_s, path):
    rows, start, l2 = [], time.perf_counter(), l2_bytes()
    calls = 30 if device == "cuda" else 3   # host time: the interpreter is slow
    todo = _phases(jobs_, providers)
    for i, ((norm, shape, dtype, layout), names) in enumerate(todo):
        xs, dys = _inputs(shape, dtype, layout, device, l2)
        nbytes = xs[0].numel() * xs[0].element_size()
        copy = gpu_time([lambda x=x: x.detach().clone(memory_format=torch.preserve_format)
                         for x in xs])
        copy_gbps = 2 * nbytes / copy.us[0] / 1e3 if copy.us else None
        case = dict(meta, norm=norm, shape="x".join(map(str, shape)), layout=layout,
                    dtype=str(dtype).replace("torch.", ""), sets=len(xs))
        for name in names:
            if budget_s is not None and rows and time.perf_counter() - start > budget_s:
                print(f"\ntime budget of {budget_s:.0f} s spent: {len(todo) - i} of {len(todo)} "
                      "cases (or their compiled providers) not measured", file=sys.stderr)
                return rows
            try:
                layer = providers[name](norm, shape)
                if layer is None:
                    continue
                fns = _pass_fns(layer.to(device, dtype), xs, dys, SWEEP[norm][2])
                timed = {p: (gpu_time(f), host_us(f[0], calls)) for p, f in fns.items()}
            except Exception as e:  # one provider failing must not end the sweep
                print(f"\n{name} {norm} {shape} {dtype}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            finally:
                fns = layer = None
            rows += timing_rows(case, name, timed,
                                {p: n * nbytes for p, n in BYTES_PER_ELEMENT.items()}, copy_gbps)
            _write_csv(rows, path)  # after each provider: a run cut off from outside keeps its rows
        done = (i + 1) * 30 // len(todo)
        print(f"\r[{'#' * done}{' ' * (30 - done)}] {i + 1}/{len(todo)} "
              f"{time.perf_counter() - start:4.0f}s {norm} "
              f"{'x'.join(map(str, shape))} {str(dtype)[6:]} {layout}    ", end="", file=sys.stderr)
    print(file=sys.stderr)
    return rows


def run_bench(norms, dtypes, quick=False, out_dir="perf/out", budget_s=None, tiny=None) -> Path:
    """Sweep ``norms`` (their cases in ``dtypes``); ``tiny`` (default: no GPU) takes the
    tiny shapes, in every dtype of ``dtypes``."""
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    where = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    if not on_gpu:
        print("No GPU: a tiny sweep under Triton's interpreter, host times only. These are "
              "CPU numbers, NOT GPU numbers; quote none of them.")
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(gpu=where, torch=torch.__version__, triton=triton.__version__, timestamp=stamp)
    todo = jobs(norms, dtypes, quick, not on_gpu if tiny is None else tiny)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.csv"
    with no_donated_buffers(), (world_of_one(device) if "syncbatch" in norms
                                else contextlib.nullcontext()):
        rows = _measure(todo, _providers(on_gpu), meta, device, budget_s, path)
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
