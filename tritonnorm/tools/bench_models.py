"""`tritonnorm bench --suite models`: one training step (forward, backward, SGD step) of
each model in models.py -- ResNet-50, a Stable-Diffusion UNet down block, a Llama decoder
layer, a ViT-B block -- at real size on a GPU, tiny on the CPU.

Providers: torch eager, the model after ``tritonnorm.convert`` (eager), after
``tritonnorm.convert(fuse=True)`` (norm -> activation, and BatchNorm + residual -> ReLU,
one kernel each), then on a GPU the three under torch.compile, as far as ``budget_s``
allows (every eager provider of every model first: compiling takes the time).  Each row
also gives the norm layers' share of the step: the summed device time (torch.profiler)
of the kernels that name a norm -- ours (row_norm, column_sum) or torch's and inductor's
(``NORM_KERNELS``).  Without a GPU the models are tiny, the kernels run under Triton's
interpreter, torch.compile is skipped, and the numbers are CPU numbers, not GPU numbers.
"""
import copy
import csv
import datetime
import re
import time
from pathlib import Path

import torch
import torch.nn as nn
import triton

import tritonnorm

from .bench import _timer
from .models import MODELS
from .timing import kernel_us

COLUMNS = ["gpu", "torch", "triton", "timestamp", "model", "input", "layout", "dtype", "provider",
           "ms_median", "ms_q20", "ms_q80", "speedup_vs_torch", "norm_us", "norm_share"]
# Kernel names that belong to a norm: ours, torch's (batch_norm_*, *layer_norm*, GroupNorm's
# RowwiseMoments / ComputeFusedParams / Compute1dBackward..., GammaBetaBackward, welford
# reductions, rms_norm) and inductor's fused ones (which name the aten op they fuse).
NORM_KERNELS = re.compile(r"row_norm|column_sum|norm|welford|RowwiseMoments|ComputeFusedParams|"
                          r"Compute1dBackward|GammaBeta", re.IGNORECASE)
COMPILED = ("torch.compile", "tritonnorm+compile", "tritonnorm fuse+compile")


def _variant(model: nn.Module, provider: str) -> nn.Module:
    """A fresh copy of ``model`` as ``provider`` runs it."""
    m = copy.deepcopy(model)
    if provider.startswith("tritonnorm"):
        m = tritonnorm.convert(m, fuse="fuse" in provider)
    if provider.endswith("compile"):
        torch._dynamo.reset()
        m = torch.compile(m)
    return m


def _train_step(model: nn.Module, x: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
        opt.step()
    return step


def norm_us(step, steps: int = 3) -> float:
    """µs per step of the kernels that name a norm (NORM_KERNELS), from torch.profiler."""
    return kernel_us(step, steps, NORM_KERNELS)


def run_models(dtypes, out_dir="perf/out", names=None, tiny=None, budget_s=None) -> Path:
    """Time a training step of each model (and layout) per provider; ``tiny`` (default:
    no GPU) takes the tiny models.  Past ``budget_s`` no new step is started."""
    on_gpu = torch.cuda.is_available()
    tiny = not on_gpu if tiny is None else tiny
    device = "cuda" if on_gpu else "cpu"
    where = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    if not on_gpu:
        print("No GPU: tiny models under Triton's interpreter, no torch.compile. These are CPU "
              "numbers, NOT GPU numbers; quote none of them.")
    timer = _timer(on_gpu)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(gpu=where, torch=torch.__version__, triton=triton.__version__, timestamp=stamp)
    providers = ["torch", "tritonnorm", "tritonnorm fuse"] + (list(COMPILED) if on_gpu else [])
    jobs = [(p, name, layout, dtype) for p in providers for name in names or MODELS
            for layout in (("nchw",) if tiny else MODELS[name][2]) for dtype in dtypes]
    rows, base, start, path = [], {}, time.perf_counter(), Path(out_dir) / "models.csv"
    for provider, name, layout, dtype in jobs:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            print(f"time budget of {budget_s:.0f} s spent: {provider} {name} and later steps not run")
            break
        big, big_in, _, tiny_model, tiny_in = MODELS[name]
        shape = tiny_in if tiny else big_in
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        torch.manual_seed(0)
        model = (tiny_model if tiny else big)().to(device, dtype, memory_format=fmt)
        x = torch.randn(shape, dtype=dtype).to(device)
        x = x.contiguous(memory_format=fmt) if x.dim() == 4 else x
        try:
            step = _train_step(_variant(model, provider), x)
            ms, lo, hi = timer(step)
            nus = norm_us(step) if on_gpu else None
        except Exception as e:  # one provider failing must not end the run
            print(f"{name} {layout} {dtype} {provider}: {type(e).__name__}: {e}")
            continue
        key = (name, layout, dtype)
        base[key] = ms if provider == "torch" else base.get(key)
        rows.append(dict(meta, model=name, input="x".join(map(str, shape)), layout=layout,
                         dtype=str(dtype).replace("torch.", ""), provider=provider,
                         ms_median=f"{ms:.4f}", ms_q20=f"{lo:.4f}", ms_q80=f"{hi:.4f}",
                         speedup_vs_torch=f"{base[key] / ms:.3f}" if base[key] else "",
                         norm_us="n/a" if nus is None else f"{nus:.4g}",
                         norm_share="n/a" if nus is None else f"{nus / (ms * 1e3):.3f}"))
        print(f"{name:<9}{layout:<5}{str(dtype)[6:]:<10}{provider:<24}{ms:10.3f} ms", flush=True)
        path = _write(rows, Path(out_dir))  # after each step: a cut-off run keeps its rows
    print(models_table(rows))
    return path


def _write(rows, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "models.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (out / "models.md").write_text(models_table(rows) + "\n")
    return out / "models.csv"


def models_table(rows) -> str:
    """Markdown: ms per training step for each provider, per model, layout and dtype, and
    the norm kernels' µs per step (ours against torch's) where a GPU measured them."""
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    lines = ["| model | input | layout | dtype | " + " | ".join(f"{p} ms" for p in provs)
             + " | norm µs: torch / tritonnorm / fuse |",
             "|---|---|---|---|" + "---|" * len(provs) + "---|"]
    for key in dict.fromkeys((r["model"], r["input"], r["layout"], r["dtype"]) for r in rows):
        sel = {r["provider"]: r for r in rows
               if (r["model"], r["input"], r["layout"], r["dtype"]) == key}
        norm = " / ".join(sel[p]["norm_us"] if p in sel else "-"
                          for p in ("torch", "tritonnorm", "tritonnorm fuse"))
        lines.append("| " + " | ".join(key) + " | "
                     + " | ".join(sel[p]["ms_median"] if p in sel else "-" for p in provs)
                     + f" | {norm} |")
    return "\n".join(lines)
