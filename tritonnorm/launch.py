"""Launch a @triton.jit kernel for a memoised plan, at the cost of the launch itself.

``JITFunction.run`` binds its ~30 arguments, specialises each, hashes a cache key
and looks the key up on every call: on an NVIDIA H200 host (triton 3.6) a
LayerNorm forward cost 62 us of host time against torch's 15, most of it there.
A plan's ints, constexprs and launch options are fixed (``plan.Launch``), so
all that varies from call to call in what triton specialises on is read off the
tensors: their dtype and whether their address is 16-byte aligned.  A plan keeps
the ``CompiledKernel`` its first launch got, per such key, and later calls launch
that binary directly, as ``CompiledKernel.__getitem__``'s runner does (the same
call in triton 3.6 through 3.9).

The first launch of each key goes through ``kernel.run``, so compiling, triton's
cache, the checks and errors stay triton's.  Under the interpreter every launch
goes through ``kernel.run``, holding one lock: the interpreter patches module
globals while a kernel runs, so two threads interpreting at once break each other.
``TRITONNORM_DIRECT_LAUNCH=0`` sends every GPU launch through ``kernel.run`` too.
"""
import contextlib
import os
import threading

from ._runtime import INTERPRET

_INTERPRETER_LOCK = threading.Lock()


class _Traced(threading.local):
    on = False   # inside traceable(), in this thread


_TRACED = _Traced()


@contextlib.contextmanager
def traceable():
    """Inside the block (this thread), every launch goes through
    ``torch.library.wrap_triton``: the implementation of a ``torch.library.triton_op``
    (traced.py), whose trace then records the kernel itself and whose compiled graph
    launches it from Inductor's code.  Run, not traced, it launches the kernel as triton
    does."""
    prev = _TRACED.on
    _TRACED.on = True
    try:
        yield
    finally:
        _TRACED.on = prev


def _wrapped(kernel, tensors, scalars, grid, opts):
    from torch.library import wrap_triton
    wrap_triton(kernel)[grid](*tensors, *scalars, **opts)


def _tensor_key(tensors) -> tuple:
    """What triton specialises on, per tensor argument."""
    return tuple([None if t is None else (t.dtype, not t.data_ptr() & 15) for t in tensors])


def launcher(kernel):
    """A function ``run(compiled, tensors, scalars, grid, opts)``: launch ``kernel``
    with arguments ``(*tensors, *scalars)`` -- every parameter, constexprs included,
    in order -- on ``grid`` with launch ``opts`` (num_warps, num_stages).
    ``compiled`` is the plan's dict of compiled kernels."""
    if INTERPRET:   # a trace never takes the triton_op kind here (traced.TRITON_OPS)
        def run(compiled, tensors, scalars, grid, opts):
            with _INTERPRETER_LOCK:
                kernel.run(*tensors, *scalars, grid=grid, warmup=False, **opts)
        return run

    if os.environ.get("TRITONNORM_DIRECT_LAUNCH", "1") == "0":
        def run(compiled, tensors, scalars, grid, opts):
            if _TRACED.on:
                return _wrapped(kernel, tensors, scalars, grid, opts)
            kernel.run(*tensors, *scalars, grid=grid, warmup=False, **opts)
        return run
    from triton.runtime.driver import driver
    return _direct(kernel, driver)


def _direct(kernel, driver):
    """The GPU launcher of ``launcher``; ``driver.active`` is triton's active driver,
    looked up at the first launch (importing tritonnorm must not need a GPU)."""
    from triton import knobs
    active = []

    def run(compiled, tensors, scalars, grid, opts):
        if _TRACED.on:   # a triton_op's implementation (traceable)
            return _wrapped(kernel, tensors, scalars, grid, opts)
        if not active:
            active.append(driver.active)
        device = active[0].get_current_device()
        key = (device, _tensor_key(tensors))
        binary = compiled.get(key)
        if binary is None:   # compile (or find in triton's cache) and launch
            compiled[key] = kernel.run(*tensors, *scalars, grid=grid, warmup=False, **opts)
            return
        stream = active[0].get_current_stream(device)
        args = (*tensors, *scalars)
        hooks = knobs.runtime
        binary.run(grid[0], grid[1], grid[2], stream, binary.function, binary.packed_metadata,
                   binary.launch_metadata(grid, stream, *args),
                   hooks.launch_enter_hook, hooks.launch_exit_hook, *args)
    return run
