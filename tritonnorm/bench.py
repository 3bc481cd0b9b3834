"""`tritonnorm bench`: throughput of every norm against torch eager, torch.compile
and the device-to-device copy roofline.

GB/s counts the minimal bytes a pass must move, per element of x (E bytes each):
  forward   read x, write y                      2 E
  backward  read x and dy, write dx              3 E
  fwd+bwd   the sum                              5 E
(parameters and statistics are O(C) and left out).  The roofline is a timed
device-to-device copy of the same tensor (2 E per element), measured in the
same run.  Without a GPU the sweep is tiny, runs under Triton's interpreter,
and its numbers are CPU numbers, not GPU numbers.
"""
import csv
import datetime
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import triton

import tritonnorm

BYTES_PER_ELEMENT = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}
# norm -> (layer factory per library, shapes from real models, layouts)
SWEEP = {
    "batch": (lambda lib, s: lib.BatchNorm2d(s[1]),                    # ResNet-50
              [(64, 64, 112, 112), (64, 256, 56, 56), (64, 512, 28, 28), (64, 2048, 7, 7)], ["nchw", "nhwc"]),
    "group": (lambda lib, s: lib.GroupNorm(min(32, s[1]), s[1]),        # UNet / VAE: 32 groups
              [(1, 512, 64, 64), (1, 128, 512, 512), (8, 320, 64, 64)], ["nchw", "nhwc"]),
    "instance": (lambda lib, s: lib.InstanceNorm2d(s[1], affine=True),  # style transfer
                 [(4, 64, 256, 256), (4, 128, 128, 128)], ["nchw"]),
    "layer": (lambda lib, s: lib.LayerNorm(s[-1]),                     # ViT / LLM
              [(8192, 768), (4096, 4096), (2048, 8192), (1024, 16384)], ["nchw"]),
    "rms": (lambda lib, s: lib.RMSNorm(s[-1]),
            [(8192, 768), (4096, 4096), (2048, 8192), (1024, 16384)], ["nchw"]),
}
TINY = {"batch": [(2, 4, 8, 8)], "group": [(2, 32, 8, 8)], "instance": [(2, 4, 8, 8)],
        "layer": [(16, 64)], "rms": [(16, 64)]}
COLUMNS = ["gpu", "torch", "triton", "timestamp", "provider", "norm", "pass", "shape", "dtype",
           "layout", "ms_median", "ms_q20", "ms_q80", "gbps", "pct_of_copy"]


def _timer(on_gpu: bool):
    if on_gpu:
        return lambda fn: triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])

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


def _providers(on_gpu: bool):
    out = {"tritonnorm": lambda m: m, "torch": lambda m: m}
    if on_gpu:
        out["torch.compile"] = lambda m: torch.compile(m)
        try:
            import apex.normalization  # noqa: F401  (measured where importable)
        except ImportError:
            pass
    return out


def _pass_fn(layer, x, pass_):
    if pass_ == "fwd":
        def fwd():
            with torch.no_grad():
                layer(x)
        return fwd
    y = layer(x)
    dy = torch.randn_like(y)
    if pass_ == "bwd":
        return lambda: torch.autograd.grad(y, x, dy, retain_graph=True)
    return lambda: torch.autograd.grad(layer(x), x, dy)


def run_bench(norms, dtypes, quick=False, out_dir="perf/out") -> Path:
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    where = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    if not on_gpu:
        print("No GPU: a tiny sweep under Triton's interpreter. These are CPU numbers, "
              "NOT GPU numbers; quote none of them.")
    timer, providers = _timer(on_gpu), _providers(on_gpu)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(gpu=where, torch=torch.__version__, triton=triton.__version__, timestamp=stamp)
    jobs = [(n, s, d, lay, p) for n in norms for s in ((TINY[n] if not on_gpu else SWEEP[n][1][:2 if quick else None]))
            for d in dtypes for lay in SWEEP[n][2] for p in BYTES_PER_ELEMENT]
    rows = []
    for i, (norm, shape, dtype, layout, pass_) in enumerate(jobs):
        x = torch.randn(shape, device=device, dtype=dtype)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        moved = BYTES_PER_ELEMENT[pass_] * x.numel() * x.element_size()
        copy_ms = timer(lambda: x.detach().clone())[0]
        copy_gbps = 2 * x.numel() * x.element_size() / copy_ms / 1e6
        for name, wrap in providers.items():
            lib = tritonnorm if name == "tritonnorm" else nn
            layer = wrap(SWEEP[norm][0](lib, shape).to(device, dtype))
            ms, lo, hi = timer(_pass_fn(layer, x, pass_))
            gbps = moved / ms / 1e6
            rows.append(dict(meta, provider=name, norm=norm, **{"pass": pass_},
                             shape="x".join(map(str, shape)), dtype=str(dtype).replace("torch.", ""),
                             layout=layout, ms_median=f"{ms:.5f}", ms_q20=f"{lo:.5f}", ms_q80=f"{hi:.5f}",
                             gbps=f"{gbps:.4g}", pct_of_copy=f"{100 * gbps / copy_gbps:.4g}",
                             copy_gbps=copy_gbps))
        done = (i + 1) * 30 // len(jobs)
        print(f"\r[{'#' * done}{' ' * (30 - done)}] {i + 1}/{len(jobs)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    _plot(rows, out)
    _summary(rows)
    print(f"wrote {path}")
    return path


def _plot(rows, out: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    for key in sorted({(r["norm"], r["pass"]) for r in rows}):
        sel = [r for r in rows if (r["norm"], r["pass"]) == key]
        fig, ax = plt.subplots(figsize=(7, 4))
        for prov in dict.fromkeys(r["provider"] for r in sel):
            pts = [r for r in sel if r["provider"] == prov]
            ax.plot(range(len(pts)), [float(r["gbps"]) for r in pts], marker="o", label=prov)
        ref = [r for r in sel if r["provider"] == sel[0]["provider"]]
        ax.plot(range(len(ref)), [r["copy_gbps"] for r in ref], "k--", label="copy roofline")
        ax.set_xticks(range(len(ref)), [f"{r['shape']}\n{r['dtype']} {r['layout']}" for r in ref], fontsize=6)
        ax.set_ylabel("GB/s (minimal bytes)")
        ax.set_title(f"{key[0]} {key[1]} on {sel[0]['gpu']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{key[0]}_{key[1].replace('+', '_')}.png", dpi=110)
        plt.close(fig)


def _summary(rows) -> None:
    """Speedup of tritonnorm against each other provider, per norm, with geomeans."""
    by = {}
    for r in rows:
        by[(r["norm"], r["pass"], r["shape"], r["dtype"], r["layout"], r["provider"])] = float(r["ms_median"])
    others = sorted({r["provider"] for r in rows} - {"tritonnorm"})
    print(f"{'norm':<10}" + "".join(f"{'vs ' + o:>18}" for o in others))
    for norm in dict.fromkeys(r["norm"] for r in rows):
        cells = []
        for o in others:
            ratios = [by[k[:5] + (o,)] / t for k, t in by.items()
                      if k[0] == norm and k[5] == "tritonnorm" and k[:5] + (o,) in by]
            cells.append(math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan"))
        print(f"{norm:<10}" + "".join(f"{c:>17.2f}x" for c in cells))
