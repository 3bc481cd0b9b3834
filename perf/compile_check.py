"""Compile every kernel specialisation tritonnorm launches for a GPU target, without a GPU.

Triton's interpreter runs the kernels as Python, so code that is green on the CPU
can still fail to lower for a real GPU.  This script closes that gap where no GPU
is at hand:

1. *record* -- under the interpreter, drive every norm (forward, backward, eval,
   split and looped tilings, every dtype and layout) with the kernels replaced by a
   recorder that notes each launch's argument types (specialised as the JIT does:
   unit strides become constants, multiples of 16 carry a divisibility hint),
   constexprs, num_warps and num_stages, and runs nothing.  Launch configs are
   computed as on a 132-SM GPU.
2. *compile* -- in a fresh process without the interpreter, build each distinct
   specialisation with ``triton.compile`` for ``cuda:<arch>`` (ptxas ships with
   triton, so PTX and cubin are produced without a driver), then read its
   registers, stack and shared memory with the cuobjdump triton ships, its shared-memory
   stores (STS, a static count of the SASS) and, from its TTGIR, the tile-sized layout
   conversions whose source layout gives every thread the whole tile (REPL), and, from
   its TTIR, the pointer arguments it was passed and never uses (UNUSED: the host pays
   to pass each; tritonnorm passes None for those, plan.make_launch).

Usage:  python perf/compile_check.py [--arch 90] [--jobs 2] [--quick] [--norm N ...]
Exit status 0 when every specialisation compiles, none converts a replicated tile and
none is passed a pointer it does not use.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

LAUNCH_OPTIONS = ("num_warps", "num_stages")
# triton 3.9 warns, once per compiling process, that its FP-fusion default changes in
# 3.10.  Compile with the fusion every release so far defaults to (and tritonnorm's
# launches get), saying so, rather than bury the report under the warning.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _describe(fn, args, kwargs):
    """One launch as JSON: name -> [kind, value(, hint)] for every argument.

    Runtime arguments are typed by triton's own specialiser, as the JIT does at a
    launch: an int equal to 1 becomes the constant 1 (a unit stride then lets the
    compiler see contiguity and vectorise), and ints and pointers divisible by 16
    carry that hint."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    bound = dict(zip(fn.arg_names, args))
    bound.update(kwargs)
    annotations = getattr(fn.fn, "__annotations__", {})
    out = {}
    for name, v in bound.items():
        if name in LAUNCH_OPTIONS:
            out[name] = ["launch", v]
        elif "constexpr" in str(annotations.get(name, "")) and not hasattr(v, "primitive_bitwidth"):
            out[name] = ["const", v]
        elif hasattr(v, "primitive_bitwidth"):  # a tl.dtype constexpr such as ACC
            out[name] = ["dtype", str(v)]
        else:  # floats are not specialised on their value (nor is the JIT)
            ty, hint = native_specialize_impl(BaseBackend, v, False, not isinstance(v, float), True)
            out[name] = ["const", v] if ty == "constexpr" else ["arg", ty, hint or ""]
    return out


def _drive(quick: bool, norms=None) -> None:
    """Run the norms once each way; the recorder sees every launch."""
    import torch
    import tritonnorm
    from tritonnorm import config
    shapes = {
        "layer": [(8, 768), (4, 16384), (8, 8192), (3, 100)],
        "rms": [(8, 768), (4, 16384)],
        # (--quick takes the first two) 16 and 10 channels a group: the second, channels_last
        # in half precision, is walked by channel (spec.kernel_view).
        "group": [(1, 512, 64, 64), (2, 320, 32, 32), (2, 32, 15, 15), (1, 128, 512, 512)],
        "instance": [(2, 5, 19, 17), (4, 64, 256, 256)],
        "batch": [(4, 16, 13, 11), (64, 256, 56, 56), (33, 10), (2, 3, 4, 5, 6)],
    }
    make = {
        "layer": lambda s, aff: tritonnorm.LayerNorm(s[-1], elementwise_affine=aff),
        "rms": lambda s, aff: tritonnorm.RMSNorm(s[-1], elementwise_affine=aff),
        "group": lambda s, aff: tritonnorm.GroupNorm(min(32, s[1]), s[1], affine=aff),
        "instance": lambda s, aff: getattr(tritonnorm, f"InstanceNorm{len(s) - 2}d")(
            s[1], affine=aff, track_running_stats=aff),
        "batch": lambda s, aff: getattr(tritonnorm, f"BatchNorm{max(1, len(s) - 2)}d")(
            s[1], affine=aff, momentum=0.1 if aff else None),
    }
    dtypes = [torch.float32, torch.bfloat16] if quick else \
        [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    tilings = [{}] if quick else [{}, {"max_tile": 256}, {"split": 4}]
    for norm, sizes in shapes.items():
        if norms and norm not in norms:
            continue
        for shape in sizes[:2] if quick else sizes:
            for dtype in dtypes:
                for cl in ([False, True] if len(shape) == 4 and norm in ("group", "instance", "batch")
                           else [False]):
                    for aff in (True, False):
                        for tiling in tilings:
                            m = make[norm](shape, aff).to(dtype)
                            x = torch.empty(shape, dtype=dtype)
                            if cl:
                                x = x.contiguous(memory_format=torch.channels_last)
                            x.requires_grad_()
                            with config.override(**tiling):
                                config.clear_cache()
                                y = m(x)
                                y.backward(torch.empty_like(y))
                                if norm in ("batch", "instance") and aff:
                                    m.eval()
                                    m(x).backward(torch.empty_like(y))


def _drive_fused(quick: bool) -> None:
    """The transformer-block flags: the residual add (HAS_RES, HAS_DRES), quantized
    output (QUANT, DYNAMIC), Hugging Face's cast before the weight (CAST_XHAT) and rows
    of a strided view (Y_STRIDED)."""
    import torch
    import tritonnorm.functional as TF
    from tritonnorm import config
    from tritonnorm.front import norm_rows
    from tritonnorm.spec import RMS_CAST
    dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float32, torch.float16]
    for shape in [(8, 768)] if quick else [(8, 768), (4, 16384), (3, 100)]:
        k = shape[-1]
        for dtype in dtypes:
            for tiling in [{}] if quick else [{}, {"max_tile": 256}, {"split": 4}]:
                with config.override(**tiling):
                    x, r = (torch.empty(shape, dtype=dtype, requires_grad=True) for _ in "xr")
                    w, b = (torch.empty(k, dtype=dtype, requires_grad=True) for _ in "wb")
                    for y, h in (TF.add_layer_norm(x, r, (k,), w, b), TF.add_rms_norm(x, r, (k,), w)):
                        torch.autograd.backward((y, h), (torch.empty_like(y), torch.empty_like(h)))
                    y = norm_rows(RMS_CAST, x, (k,), w, None, 1e-6)
                    y.backward(torch.empty_like(y))
                    q = torch.empty(shape[0], 3 * k, dtype=dtype, requires_grad=True)[:, :k]
                    for y in (TF.layer_norm(q, (k,), w, b), TF.rms_norm(q, (k,), w)):   # Y_STRIDED
                        y.backward(torch.empty_like(y))
                    with torch.no_grad():
                        for qd in (torch.int8, torch.float8_e4m3fn):
                            TF.rms_norm_quant(x, (k,), w, dtype=qd)
                            TF.layer_norm_quant(x, (k,), w, b, residual=r, dtype=qd, scale=1.0)


def _drive_epilogues(quick: bool) -> None:
    """The CNN-block flags: every activation (ACT), the residual after the norm (ADD_Y)
    and relu's sign mask (MASK), each way a row is walked, training and eval."""
    import torch
    import tritonnorm
    import tritonnorm.functional as TF
    from tritonnorm import config
    acts = [("relu", {}), ("silu", {})] if quick else [
        ("relu", {}), ("silu", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"}),
        ("leaky_relu", {"negative_slope": 0.2})]
    make = [lambda e: tritonnorm.BatchNorm2d(64, **e), lambda e: tritonnorm.GroupNorm(32, 64, **e),
            lambda e: tritonnorm.InstanceNorm2d(64, affine=True, track_running_stats=True, **e)]
    dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float32, torch.float16]
    for dtype in dtypes:
        for tiling in [{}] if quick else [{}, {"max_tile": 256}, {"split": 4}]:
            for act, kw in acts:
                e = dict(activation=act, **kw)
                with config.override(**tiling):
                    config.clear_cache()
                    for cl in (False, True):
                        x, r = (torch.empty(8, 64, 28, 28, dtype=dtype, requires_grad=True)
                                for _ in "xr")
                        if cl:
                            x, r = (t.contiguous(memory_format=torch.channels_last) for t in (x, r))
                        for m in make:
                            m = m(e).to(dtype)
                            for residual in (None, r):
                                for training in (True, False):
                                    y = m.train(training)(x, residual)
                                    y.backward(torch.empty_like(y))
                    x = torch.empty(8, 768, dtype=dtype, requires_grad=True)
                    w, b = (torch.empty(768, dtype=dtype, requires_grad=True) for _ in "wb")
                    y = TF.layer_norm(x, (768,), w, b, **e)
                    y.backward(torch.empty_like(y))
                    y, h = TF.add_layer_norm(x, x, (768,), w, b, **e)
                    torch.autograd.backward((y, h), (torch.empty_like(y), torch.empty_like(h)))


def record(path: str, quick: bool, sms: int, norms=None) -> int:
    os.environ["TRITON_INTERPRET"] = "1"
    # Launch configs as on a GPU with `sms` SMs (dispatch's planning knob).
    os.environ["TRITONNORM_PLAN_SMS"] = str(sms)
    import triton.runtime.interpreter as interp
    seen = {}

    def run(self, *args, grid, warmup, **kwargs):
        desc = _describe(self, args, kwargs)
        seen[json.dumps([self.fn.__name__, desc], sort_keys=True)] = 1
        # Nothing is executed: outputs stay uninitialised, which no host code reads.

    interp.InterpretedFunction.run = run
    _drive(quick, norms)
    if not norms or "fused" in norms:
        _drive_fused(quick)
    if not norms or "epilogue" in norms:
        _drive_epilogues(quick)
    with open(path, "w") as f:
        json.dump([json.loads(k) for k in seen], f)
    return len(seen)


# Shared memory per block (bytes) by compute capability: a kernel above it would
# compile and then fail at launch with OutOfResources.
MAX_SHARED = {80: 166912, 86: 101376, 89: 101376, 90: 232448}


def _cuobjdump(cubin: bytes, flag: str) -> str:
    """What the cuobjdump triton ships prints of ``cubin`` with ``flag``."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True).stdout


def _resources(cubin: bytes) -> dict:
    """REG, STACK, SHARED, LOCAL of the kernel."""
    line = next((ln for ln in _cuobjdump(cubin, "-res-usage").splitlines() if "REG:" in ln), "")
    return {k: int(v) for k, v in (kv.split(":") for kv in line.split()[:4])} if line else {}


_BLOCKED = re.compile(r"^#(blocked\d*) = #ttg\.blocked<\{([^}]*)\}>", re.M)
_CONVERT = re.compile(r"ttg\.convert_layout .*?: tensor<([0-9x]+)x\w+, #(blocked\d*)>")
# A convert of a tensor this large is a tile's, not a per-row vector's (BLOCK_G <= 64).
TILE_ELEMS = 1024


def _held_per_thread(dims, layout: str) -> int:
    """Elements of a ``dims`` tensor each thread holds in a blocked ``layout``: a dimension
    no larger than the layout's footprint (size per thread x threads x warps) is
    replicated, each thread holding min(size, its size per thread) of it."""
    get = {k: [int(v) for v in re.search(k + r" = \[([0-9, ]+)\]", layout).group(1).split(",")]
           for k in ("sizePerThread", "threadsPerWarp", "warpsPerCTA")}
    held = 1
    for d, spt, tpw, wpc in zip(dims, get["sizePerThread"], get["threadsPerWarp"], get["warpsPerCTA"]):
        foot = spt * tpw * wpc
        held *= min(d, spt) if d <= foot else spt * -(-d // foot)
    return held


def replicated_converts(ttgir: str) -> int:
    """Tile-sized layout conversions whose source layout gives every thread the whole
    tile: lowered through shared memory, thousands of stores a thread (triton 3.6 makes
    them from a [1, 1, 1] broadcast of a reduction's result; kernels/tiles.per_row)."""
    layouts = dict(_BLOCKED.findall(ttgir))
    n = 0
    for shape, src in _CONVERT.findall(ttgir):
        dims = [int(d) for d in shape.split("x")]
        numel = 1
        for d in dims:
            numel *= d
        if numel >= TILE_ELEMS and src in layouts and _held_per_thread(dims, layouts[src]) >= numel:
            n += 1
    return n


def unused_pointers(ttir: str, passed) -> list:
    """The pointer parameters among ``passed`` (names of non-None pointer arguments) that
    the kernel never reads or writes: in the TTIR a used one appears again after its
    declaration in the signature.  Each costs the launch host time for nothing (issue 24);
    plan.make_launch passes None for them."""
    return [n for n in passed if len(re.findall(rf"%{n}\b", ttir)) < 2]


def _shared_stores(cubin: bytes) -> int:
    """STS instructions in the kernel's SASS (a static count)."""
    return len(re.findall(r"\bSTS(?:\.\w+)*\s", _cuobjdump(cubin, "-sass")))


def _compile_one(item, arch: int):
    """Compile one recorded launch; returns (name, error or None, seconds, resources)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    import tritonnorm.kernels as K
    name, desc = item
    fn = getattr(K, name)
    signature, constexprs, attrs = {}, {}, {}
    launch = {k: v[1] for k, v in desc.items() if v[0] == "launch"}
    for i, arg in enumerate(fn.arg_names):
        kind, value, *hint = desc.get(arg, ["const", None])
        if fn.params[i].is_constexpr or kind in ("const", "dtype"):
            signature[arg] = "constexpr"
            constexprs[arg] = triton.language.dtype(value) if kind == "dtype" else value
        else:
            signature[arg] = value
            if "D" in hint[0]:
                attrs[(i,)] = [["tt.divisibility", 16]]
    target = GPUTarget("cuda", arch, 32)
    options = make_backend(target).parse_options(launch)
    t0 = time.perf_counter()
    try:
        k = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                           options=options.__dict__)
    except Exception as e:  # report every failure, not just the first
        return name, f"{type(e).__name__}: {str(e)[-2000:]}", time.perf_counter() - t0, {}
    secs, res = time.perf_counter() - t0, _resources(k.asm["cubin"])
    res["SHARED"] = max(res.get("SHARED", 0), k.metadata.shared)
    res["STS"] = _shared_stores(k.asm["cubin"])
    res["REPL"] = replicated_converts(k.asm["ttgir"])
    passed = [a for a in fn.arg_names if a.endswith("_ptr") and signature[a] != "constexpr"]
    res["UNUSED"] = unused_pointers(k.asm["ttir"], passed)
    if res["SHARED"] > MAX_SHARED.get(arch, 1 << 30):
        return name, f"needs {res['SHARED']} B of shared memory, sm_{arch} has {MAX_SHARED[arch]}", secs, res
    return name, None, secs, res


def compile_all(path: str, arch: int, jobs: int) -> int:
    with open(path) as f:
        items = [tuple(i) for i in json.load(f)]
    failures, spills, regs, replicated, unused = 0, 0, 0, 0, 0
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        for i, ((name, err, secs, res), (_, desc)) in enumerate(zip(
                pool.map(_compile_one, items, [arch] * len(items)), items), 1):
            flags = {k: v[1] for k, v in desc.items() if v[0] in ("const", "dtype", "launch")}
            spilled = res.get("LOCAL", 0) > 0 or res.get("STACK", 0) > 0
            progress = f"{i}/{len(items)} {time.perf_counter() - start:4.0f}s"
            repl = res.get("REPL", 0) > 0
            idle = bool(res.get("UNUSED"))
            state = ("FAIL" if err else "REPL" if repl else "UNUSED" if idle
                     else "STACK" if spilled else "ok")
            print(f"{progress:>14} {state:<6}{name:<14}{secs:6.1f}s  "
                  f"{' '.join(f'{k}:{v}' for k, v in res.items()):<50}{flags}")
            if err:
                failures += 1
                print(err)
            spills += spilled
            replicated += repl
            unused += idle
            regs = max(regs, res.get("REG", 0))
    print(f"{len(items) - failures}/{len(items)} specialisations compile for sm_{arch}; "
          f"{spills} use a stack frame (register spills or local arrays); "
          f"{replicated} convert a replicated tile through shared memory; "
          f"{unused} are passed a pointer they never use; "
          f"at most {regs} registers a thread")
    return 1 if failures or replicated or unused else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--sms", type=int, default=132, help="SM count the launch configs assume")
    p.add_argument("--quick", action="store_true", help="fp32/bf16, default tiling only")
    p.add_argument("--norm", action="append",
                   choices=["layer", "rms", "group", "instance", "batch", "fused", "epilogue"],
                   help="norms to drive (repeatable; default: all)")
    p.add_argument("--record-only", metavar="PATH", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.record_only:
        print(f"recorded {record(a.record_only, a.quick, a.sms, a.norm)} distinct launches")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        # The recorder needs the interpreter, the compiler must not have it: two processes.
        env = dict(os.environ, TRITON_INTERPRET="1")
        args = [sys.executable, __file__, "--record-only", path, "--sms", str(a.sms)]
        args += ["--quick"] if a.quick else []
        args += [f"--norm={n}" for n in a.norm or []]
        subprocess.run(args, env=env, check=True)
        os.environ.pop("TRITON_INTERPRET", None)
        return compile_all(path, a.arch, a.jobs)


if __name__ == "__main__":
    sys.exit(main())
