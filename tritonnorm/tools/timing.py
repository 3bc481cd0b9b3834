"""How `tritonnorm bench` times a pass: GPU time and host time, apart.

**GPU time** (kernel-only, µs per pass), by one of three methods, named in the CSV:

* ``cuda_graph`` -- the pass over each of k input sets is captured into one CUDA graph,
  k large enough that the sets together are at least 3x the L2 (``rotation``), so no
  pass finds its inputs in the cache.  Each replay is timed with CUDA events; a sample
  is the replay's time / k; the result is the median and the 20 % / 80 % quantiles of
  ``REPLAYS`` samples.  Inside a graph the kernels run back to back: no host time.
* ``profiler`` -- where the pass cannot be captured (it syncs the host, or torch refuses
  the capture): the summed device time of its kernels from torch.profiler (CUPTI), per
  pass, over the same rotation.  One mean, so the quantiles equal it.
* ``n/a`` -- no GPU (Triton's interpreter on the CPU).

A pass that syncs the host is found before any capture (``torch.cuda.set_sync_debug_mode``),
because a failed capture can leave a process unable to draw random numbers (an H200 run
with torch's instance_norm): the bench makes its inputs without the CUDA generator, and
after one failed capture the process times every later pass with the profiler.  Passes
are captured on one dedicated stream (``on_stream``), where the bench also runs the
forwards whose backward alone it times: autograd runs a backward op on its forward's
stream, and a capture may not wait on another stream's work.

**Host time** (µs per call): the wall time of one eager call with the GPU queue drained
before it and not waited for after it -- what the host spends issuing the call.  The
median of ``HOST_CALLS`` calls.  On the CPU (no GPU) it is the wall time of the call.
"""
import contextlib
import statistics
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch

REPLAYS = 25        # >= 20 samples per GPU time (the floor), a few more for the median
HOST_CALLS = 30
L2_FACTOR = 3       # the rotated inputs span at least this many L2s
MIN_SETS = 2


class Timing(NamedTuple):
    method: str                                   # "cuda_graph", "profiler" or "n/a"
    us: Optional[Tuple[float, float, float]]      # (median, q20, q80) µs per pass, or None


_STREAM = []            # the capture stream, made on first use
_CAPTURE_FAILED = []    # set after a failed capture: the profiler from then on


def _stream():
    if not _STREAM:
        _STREAM.append(torch.cuda.Stream())
    return _STREAM[0]


@contextlib.contextmanager
def on_stream():
    """Run the block on the capture stream, ordered after and before the current
    stream's work (nothing on the CPU)."""
    if not torch.cuda.is_available():
        yield
        return
    here, s = torch.cuda.current_stream(), _stream()
    s.wait_stream(here)
    with torch.cuda.stream(s):
        yield
    here.wait_stream(s)


def l2_bytes() -> int:
    """The current GPU's L2 size in bytes (0 without a GPU)."""
    if not torch.cuda.is_available():
        return 0
    return int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()),
                       "L2_cache_size", 0))


def rotation(set_bytes: int, l2: int, factor: int = L2_FACTOR) -> int:
    """How many input sets of ``set_bytes`` make at least ``factor`` x ``l2`` bytes."""
    return max(MIN_SETS, -(-factor * l2 // max(set_bytes, 1)))


def _quantiles(samples: List[float]) -> Tuple[float, float, float]:
    s = sorted(samples)
    pick = (lambda q: s[min(len(s) - 1, int(q * len(s)))])
    return statistics.median(s), pick(0.2), pick(0.8)


def _syncs(fns: List[Callable]) -> bool:
    """True if a pass synchronizes with the host (then it cannot be captured)."""
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for f in fns:
            f()
        return False
    except RuntimeError:
        return True
    finally:
        torch.cuda.set_sync_debug_mode(old)
        torch.cuda.synchronize()


def _graph_us(fns: List[Callable], replays: int) -> Tuple[float, float, float]:
    with on_stream():   # warm-up on the capture stream, as torch's docs do
        for f in fns:
            f()
    graph = torch.cuda.CUDAGraph()
    keep = []   # every pass's outputs stay alive: each pass writes its own buffers
    here = torch.cuda.current_stream()
    _stream().wait_stream(here)
    try:
        with torch.cuda.graph(graph, stream=_stream()):
            for f in fns:
                keep.append(f())
    finally:
        # torch.cuda.graph leaves its stream current where the capture fails.
        torch.cuda.set_stream(here)
    graph.replay()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(replays)]
    for start, end in events:   # queued back to back: the GPU, not the host, sets the pace
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    del keep, graph
    return _quantiles([s.elapsed_time(e) * 1e3 / len(fns) for s, e in events])


def kernel_us(fn: Callable, calls: int, match=None) -> float:
    """µs per call of ``fn`` that the GPU spends in kernels (those whose name ``match``
    finds, if given), from torch.profiler.  Only device events are summed: the runtime
    calls that launch them carry the same time again."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA
               and (match is None or match.search(e.key))) / calls


def _profiler_us(fns: List[Callable], rounds: int = 5) -> Optional[Tuple[float, float, float]]:
    """None where the profiler saw no kernel time (CUPTI busy or missing)."""
    def all_sets():
        for f in fns:
            f()
    us = kernel_us(all_sets, rounds) / len(fns)
    return (us, us, us) if us > 0 else None


def gpu_time(fns: List[Callable], replays: int = REPLAYS) -> Timing:
    """GPU µs per pass of ``fns`` (one zero-argument callable per input set, each
    returning what it computed); see the module docstring for the methods."""
    if not torch.cuda.is_available():
        return Timing("n/a", None)
    for f in fns:   # first calls: compile, autotune, allocate
        f()
    torch.cuda.synchronize()
    if not _CAPTURE_FAILED and not _syncs(fns):
        try:
            return Timing("cuda_graph", _graph_us(fns, replays))
        except RuntimeError as e:
            _CAPTURE_FAILED.append(e)
            print(f"a CUDA-graph capture failed ({type(e).__name__}: {str(e)[:200]}); "
                  "GPU times from torch.profiler from here on")
            torch.cuda.synchronize()
    return Timing("profiler", _profiler_us(fns))


def host_us(fn: Callable, calls: int = HOST_CALLS) -> float:
    """Median wall µs of one call of ``fn``, the GPU queue drained before each call."""
    on_gpu = torch.cuda.is_available()
    fn()
    samples = []
    for _ in range(calls):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    if on_gpu:
        torch.cuda.synchronize()
    return statistics.median(samples)
