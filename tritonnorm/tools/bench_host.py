"""`tritonnorm bench --suite host`: what one eager call costs the host.

A norm kernel on a typical activation runs for 10-40 us on a GPU; if issuing the
call takes the host longer, the GPU waits.  This suite times the module call of
every norm, tritonnorm's against torch's, on tiny tensors where the host is all
that counts:

* without a GPU: on the CPU under Triton's interpreter, with every Triton launch
  replaced by a no-op -- what is timed is the host path a GPU call pays too
  (argument checks, planning, allocation, autograd), not the interpreter;
* on a GPU: real launches, wall time per call averaged over a loop and closed by a
  synchronize, so a host slower than the GPU shows as time.

torch and tritonnorm are timed interleaved, round after round in one process, and
each keeps its best round, so a noisy neighbour inflates neither side alone.
"fwd+bwd" is ``m(x).backward(g)`` with ``g`` made once: autograd's own engine
cost is in both columns.  "fwd no_grad" is the forward under torch.no_grad(), as
in serving: no autograd node is recorded.  The "compiled step" row times one training
step of a model of three norms under torch.compile (``three_norms``; the first call, which
compiles, untimed).
"""
import contextlib
import csv
import datetime
import time
from pathlib import Path

import torch
import torch.nn as nn
import triton

import tritonnorm

# case -> (torch layer, tritonnorm layer, input shape, training)
CASES = {
    "layer": (lambda lib: lib.LayerNorm(64), (8, 64), True),
    "rms": (lambda lib: lib.RMSNorm(64), (8, 64), True),
    "group": (lambda lib: lib.GroupNorm(4, 16), (2, 16, 4, 4), True),
    "instance": (lambda lib: lib.InstanceNorm2d(16, affine=True), (2, 16, 4, 4), True),
    "batch train": (lambda lib: lib.BatchNorm2d(16), (2, 16, 4, 4), True),
    "batch eval": (lambda lib: lib.BatchNorm2d(16), (2, 16, 4, 4), False),
}
# The compiled-step row: a model of three norms (BatchNorm, GroupNorm, LayerNorm) under
# torch.compile (Inductor), one training step (forward, then backward of the sum), ours
# against torch's own layers.  With compiled kernels Inductor launches ours from its code
# (traced.py, triton_op); under the interpreter our ops are opaque calls into our Python.
COMPILED = "compiled step"
COMPILED_SHAPE = (2, 16, 4, 4)


def three_norms(lib) -> nn.Module:
    return nn.Sequential(nn.Conv2d(16, 16, 1), lib.BatchNorm2d(16), lib.GroupNorm(4, 16),
                         nn.Flatten(), lib.LayerNorm(16 * 4 * 4))


COLUMNS = ["device", "torch", "triton", "timestamp", "case", "pass", "shape", "dtype",
           "torch_us", "tritonnorm_us", "ratio", "tensor_args"]
_LAUNCHERS = ("_run_fwd", "_run_bwd", "_run_column_sum")


@contextlib.contextmanager
def _launchers(wrap):
    """tritonnorm's three launchers (dispatch) replaced by ``wrap(launcher)`` inside the
    block, restored after it."""
    from .. import dispatch
    old = [getattr(dispatch, n) for n in _LAUNCHERS]
    for n, run in zip(_LAUNCHERS, old):
        setattr(dispatch, n, wrap(run))
    try:
        yield
    finally:
        for n, run in zip(_LAUNCHERS, old):
            setattr(dispatch, n, run)


@contextlib.contextmanager
def _no_launches():
    """Under the interpreter: every Triton launch returns at once, running nothing.
    The launchers dispatch calls (on a GPU, ``kernel.run`` itself; here also the
    interpreter's lock) become no-ops, so what remains is what a GPU call pays
    before Triton's own launcher."""
    from triton.runtime import interpreter
    old = interpreter.InterpretedFunction.run
    interpreter.InterpretedFunction.run = lambda self, *args, **kwargs: None
    try:
        with _launchers(lambda run: lambda *args, **kwargs: None):
            yield
    finally:
        interpreter.InterpretedFunction.run = old


def tensor_args(fn) -> str:
    """The tensor arguments each Triton launch of one call of ``fn`` passes, "+"-joined in
    launch order (e.g. "7+3": a backward and its column sum).  Triton's launcher reads the
    address of each (about 0.3 us apiece on an H200 host); pointers a specialisation does
    not use go as None and are not counted (plan.make_launch)."""
    counts = []

    def counting(run):
        def launch(compiled, tensors, *rest):
            counts.append(sum(t is not None for t in tensors))
            return run(compiled, tensors, *rest)
        return launch
    with _launchers(counting):
        fn()
    return "+".join(map(str, counts)) or "0"


def _per_call_us(fn, calls: int, on_gpu: bool) -> float:
    if on_gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if on_gpu:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def _passes(layer, x, training: bool):
    g = torch.ones_like(layer(x))

    def fwd():
        layer(x)

    def fwd_bwd():
        layer(x).backward(g)

    def infer():
        with torch.no_grad():
            layer(x)
    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "fwd no_grad": infer}


def _step(model, x):
    """A compiled model's training step: forward, then the backward of its sum."""
    def step():
        model(x).sum().backward()
    return {"fwd+bwd": step}


def measure(cases=None, calls: int = 300, rounds: int = 7, dtype=torch.float32):
    """Rows of (case, pass, torch us, tritonnorm us, ratio), best round of each."""
    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    rows = []
    # Spin the host up first (clock, caches): the first case timed must not pay for it.
    spin = nn.LayerNorm(64).to(device, dtype)
    x0 = torch.randn(8, 64, device=device, dtype=dtype)
    _per_call_us(lambda: spin(x0), calls * rounds, on_gpu)
    for name in cases or list(CASES) + [COMPILED]:
        if name == COMPILED:
            shape = COMPILED_SHAPE
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            fns = {lib: _step(torch.compile(three_norms(mod).to(device, dtype)), x)
                   for lib, mod in (("torch", nn), ("tritonnorm", tritonnorm))}
        else:
            make, shape, training = CASES[name]
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            layers = {lib: make(mod).to(device, dtype).train(training)
                      for lib, mod in (("torch", nn), ("tritonnorm", tritonnorm))}
            fns = {lib: _passes(m, x, training) for lib, m in layers.items()}
        for pass_ in fns["torch"]:
            best = {lib: float("inf") for lib in fns}
            with _no_launches() if not on_gpu else contextlib.nullcontext():
                args = tensor_args(fns["tritonnorm"][pass_])
            for _ in range(rounds):
                for lib in fns:
                    stub = _no_launches() if lib == "tritonnorm" and not on_gpu else contextlib.nullcontext()
                    with stub:
                        fns[lib][pass_]()  # warm: plans, caches
                        best[lib] = min(best[lib], _per_call_us(fns[lib][pass_], calls, on_gpu))
            rows.append(dict(case=name, **{"pass": pass_}, shape="x".join(map(str, shape)),
                             dtype=str(dtype).replace("torch.", ""), torch_us=f"{best['torch']:.2f}",
                             tritonnorm_us=f"{best['tritonnorm']:.2f}",
                             ratio=f"{best['tritonnorm'] / best['torch']:.2f}", tensor_args=args))
    return rows


def report(rows, where: str) -> str:
    lines = [f"Host time per eager module call on {where} (best of interleaved rounds).", "",
             "| case | pass | torch µs | tritonnorm µs | ratio | tensors a launch |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['pass']} | {r['torch_us']} | {r['tritonnorm_us']} | "
              f"{r['ratio']}x | {r['tensor_args']} |" for r in rows]
    return "\n".join(lines)


def run_host(out_dir="perf/out", cases=None, calls: int = 300, rounds: int = 7) -> Path:
    on_gpu = torch.cuda.is_available()
    where = (torch.cuda.get_device_name() + ", real launches" if on_gpu
             else "this CPU, Triton launches stubbed out (the interpreter runs nothing)")
    rows = measure(cases, calls, rounds)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(device=torch.cuda.get_device_name() if on_gpu else "cpu", torch=torch.__version__,
                triton=triton.__version__, timestamp=stamp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "host.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(dict(meta, **r) for r in rows)
    text = report(rows, where)
    print(text)
    (out / "host.md").write_text(text + "\n")
    print(f"wrote {path}")
    return path
