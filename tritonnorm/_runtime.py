"""Where the kernels can run: the GPU, or the CPU under Triton's interpreter."""
import functools
import os
import sys
import warnings

import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, i.e. when tritonnorm.kernels is
# imported; reading it here, at the same moment, tells which mode the kernels are in.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpreter_scalar_index() -> None:
    """triton 3.6's interpreter turns a scalar into a Python int with ``int(array)``,
    which numpy >= 2.4 refuses for its shape-(1,) scalars, so ``range(pid, n, nprog)``
    in a kernel fails there.  Later triton squeezes first; do the same on 3.6."""
    from triton.runtime import interpreter
    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "_squeezes", False):
        return

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))
    patched._squeezes = True
    interpreter._patch_lang_tensor = patched


def _interpreter_bf16_rounding() -> None:
    """A GPU rounds fp32 -> bf16 to nearest even (Triton's default for every float
    downcast); the interpreter truncates, which doubles the error of bf16 outputs.
    Round to nearest even there too, on the bits; NaN stays a quiet NaN.  fp32 -> fp8
    e4m3 likewise: the interpreter rounds half away from zero on the bits, a GPU to
    nearest even (torch's conversion, used here)."""
    import numpy as np
    from triton.runtime import interpreter
    convert = getattr(interpreter, "_convert_float", None)
    if convert is None or getattr(convert, "_rounds", False):
        return
    import triton.language as tl
    modes = getattr(getattr(interpreter, "_ir", None), "ROUNDING_MODE", None)
    rtz = getattr(modes, "RTZ", object())   # an explicit round-toward-zero keeps truncating

    def patched(input, input_dtype, output_dtype, rounding_mode=None, *rest):
        if input_dtype == tl.float32 and output_dtype == tl.float8e4nv and rounding_mode != rtz:
            import torch
            t = torch.from_numpy(np.ascontiguousarray(input, dtype=np.float32))
            return t.to(torch.float8_e4m3fn).view(torch.uint8).numpy().reshape(input.shape)
        if input_dtype != tl.float32 or output_dtype != tl.bfloat16 or rounding_mode == rtz:
            return convert(input, input_dtype, output_dtype, rounding_mode, *rest)
        bits = np.frombuffer(np.ascontiguousarray(input).tobytes(), dtype=np.uint32).reshape(input.shape)
        rounded = ((bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        return np.where(nan, ((bits >> 16) | 0x0040).astype(np.uint16), rounded)
    patched._rounds = True
    interpreter._convert_float = patched


if INTERPRET:
    _interpreter_scalar_index()
    _interpreter_bf16_rounding()


class FallbackWarning(UserWarning):
    """A tritonnorm layer handed its call to torch: the tensor is where tritonnorm's
    kernels do not run.  Silence with
    ``warnings.simplefilter("ignore", tritonnorm.FallbackWarning)``."""


_fallback_warned = False


def use_triton(x: torch.Tensor) -> bool:
    """True when ``x`` lives where our kernels run; otherwise callers fall back to torch,
    and the first fallback of the process says so (FallbackWarning)."""
    if x.is_cuda:   # is_cuda/is_cpu: no torch.device object built on every call
        if not INTERPRET:
            return True
    elif INTERPRET and x.is_cpu:
        return True
    # A meta tensor holds no data: no kernel runs on it, torch's or ours, so nothing to say.
    if not _fallback_warned and not x.is_meta and not torch.compiler.is_compiling():
        _warn_fallback(x)
    return False


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))


def _user_frame() -> int:
    """The warnings stacklevel of the user's call, seen from _warn_fallback: the first frame
    outside tritonnorm and torch (whose module __call__ sits between a layer and its
    caller), so the warning names the user's line, not ours."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith((_PACKAGE, _TORCH)):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def _warn_fallback(x: torch.Tensor) -> None:
    global _fallback_warned
    _fallback_warned = True
    if x.is_cpu:
        how = ("set TRITON_INTERPRET=1 before importing tritonnorm to run its kernels on the "
               "CPU under Triton's interpreter (for tests: 100-1000x slower than torch)")
    elif x.is_cuda:
        how = "unset TRITON_INTERPRET to run its kernels on the GPU"
    else:
        how = "its kernels run on CUDA GPUs, and on the CPU under Triton's interpreter"
    warnings.warn(
        f"tritonnorm: a {x.device.type} tensor runs torch's own kernels, not tritonnorm's; "
        f"{how}. Said once per process; silence it with "
        "warnings.simplefilter('ignore', tritonnorm.FallbackWarning).",
        FallbackWarning, stacklevel=_user_frame())


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Planning knob: under the interpreter, TRITONNORM_PLAN_SMS=132 makes dispatch pick the
# launch configs a 132-SM GPU would get (perf/traffic.py, perf/compile_check.py).
PLAN_SMS = int(os.environ.get("TRITONNORM_PLAN_SMS", "0") or 0)


def gpu_plan(x: torch.Tensor) -> bool:
    """Whether launches on x are planned for a GPU: x on one, or TRITONNORM_PLAN_SMS set."""
    return x.device.type == "cuda" or PLAN_SMS > 0


def target_programs(x: torch.Tensor) -> int:
    """How many programs fill the device.

    On a GPU, four programs per SM: enough resident work to hide memory latency.
    Under the interpreter programs run one after another, so parallelism buys
    nothing; 4 keeps the split and persistent paths exercised on small tests,
    unless TRITONNORM_PLAN_SMS asks for a GPU's plan."""
    if x.device.type == "cuda":
        return 4 * sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())
    return 4 * PLAN_SMS if PLAN_SMS > 0 else 4
