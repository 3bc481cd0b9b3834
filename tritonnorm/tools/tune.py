"""`tritonnorm tune`: sweep launch configs on this GPU and save the best per bucket.

For every norm, dtype, layout and pass (forward, backward) of a shape grid taken
from real models, each config of ``config.TUNE_SPACE`` (``QUICK_SPACE`` with
--quick, which also takes one shape per norm) is timed with
triton.testing.do_bench; the fastest per bucket goes into the device's table
(tables.py), written atomically, which dispatch then loads on first use.
"""
import sys
import time

import torch
import triton

from .. import config, functional as TF, tables
from ..spec import BATCH, GROUP, INSTANCE, LAYER, RMS, batch_layout, channel_layout, row_layout

# norm -> (spec, input shapes, parameter count of a shape, call, view of an input)
GRID = {
    "layer": (LAYER, [(8192, 768), (4096, 4096), (1024, 16384)], lambda s: s[-1],
              lambda x, w, b: TF.layer_norm(x, x.shape[-1:], w, b), lambda x: row_layout(x, x.shape[-1])[1]),
    "rms": (RMS, [(8192, 768), (4096, 4096), (1024, 16384)], lambda s: s[-1],
            lambda x, w, b: TF.rms_norm(x, x.shape[-1:], w), lambda x: row_layout(x, x.shape[-1])[1]),
    "group": (GROUP, [(8, 512, 64, 64), (1, 128, 512, 512), (32, 320, 32, 32)], lambda s: s[1],
              lambda x, w, b: TF.group_norm(x, 32, w, b), lambda x: channel_layout(x, 32)[1]),
    "instance": (INSTANCE, [(8, 64, 256, 256), (16, 256, 64, 64)], lambda s: s[1],
                 lambda x, w, b: TF.instance_norm(x, weight=w, bias=b), lambda x: channel_layout(x, x.shape[1])[1]),
    "batch": (BATCH, [(256, 64, 56, 56), (256, 256, 14, 14), (64, 2048, 7, 7)], lambda s: s[1],
              lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True), lambda x: batch_layout(x)[1]),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cases(norms, dtypes, quick):
    for norm in norms:
        spec, shapes, params, call, view_of = GRID[norm]
        layouts = [torch.contiguous_format] + ([torch.channels_last] if norm in ("group", "instance", "batch") else [])
        for shape in shapes[:1] if quick else shapes:
            for dtype in dtypes:
                for fmt in layouts:
                    for pass_ in ("fwd", "bwd"):
                        yield norm, spec, shape, params(shape), call, view_of, dtype, fmt, pass_


def _bench(call, x, w, b, pass_):
    if pass_ == "fwd":
        with torch.no_grad():
            return triton.testing.do_bench(lambda: call(x, w, b))
    y = call(x, w, b)
    dy = torch.randn_like(y)
    return triton.testing.do_bench(
        lambda: torch.autograd.grad(y, (x, w, b), dy, retain_graph=True, allow_unused=True))


def tune(norms, dtypes, quick=False) -> int:
    if not torch.cuda.is_available():
        print("tritonnorm tune needs a CUDA GPU: it times kernels on the device it tunes for; "
              "none is visible here (under the interpreter there is one config, nothing to tune).")
        return 2
    device = torch.cuda.get_device_name()
    cases = list(_cases(norms, dtypes, quick))
    entries, rows = dict(tables.device_table(device)), []
    start = time.perf_counter()
    for i, (norm, spec, shape, c, call, view_of, dtype, fmt, pass_) in enumerate(cases):
        x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
        w = torch.randn(c, device="cuda", dtype=dtype, requires_grad=True)
        b = torch.randn(c, device="cuda", dtype=dtype, requires_grad=True)
        best = None
        for cand in config.QUICK_SPACE if quick else config.TUNE_SPACE:
            with config.override(**cand):
                try:
                    ms = _bench(call, x, w, b, pass_)
                except Exception as e:  # a config this GPU cannot run (e.g. out of resources)
                    print(f"\n  skipped {cand}: {type(e).__name__}", file=sys.stderr)
                    continue
            if best is None or ms < best[0]:
                best = (ms, cand)
        moved = x.numel() * x.element_size() * (2 if pass_ == "fwd" else 3)  # x, y / x, dy, dx
        key = config.bucket_key(view_of(x), x, spec.name, pass_)
        entries[key] = dict(best[1], gbps=round(moved / best[0] / 1e6, 1))
        rows.append((key, best[1], entries[key]["gbps"]))
        done = (i + 1) * 30 // len(cases)
        print(f"\r[{'#' * done}{' ' * (30 - done)}] {i + 1}/{len(cases)} "
              f"{time.perf_counter() - start:5.0f}s {key:<48}", end="", file=sys.stderr)
    print(file=sys.stderr)
    path = tables.write_table(device, entries)
    config.clear_cache()
    print(f"{'bucket':<52}{'max_tile':>9}{'warps':>6}{'stages':>7}{'split':>6}{'GB/s':>9}")
    for key, cand, gbps in rows:
        print(f"{key:<52}{cand['max_tile']:>9}{cand['num_warps']:>6}{cand['num_stages']:>7}"
              f"{cand['split_scale']:>6}{gbps:>9.1f}")
    print(f"wrote {path}")
    return 0
