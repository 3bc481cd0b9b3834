"""Where the kernels can run: the GPU, or the CPU under Triton's interpreter."""
import functools
import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, i.e. when tritonnorm.kernels is
# imported; reading it here, at the same moment, tells which mode the kernels are in.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """True when ``x`` lives where our kernels run; otherwise callers fall back to torch."""
    if x.device.type == "cuda":
        return not INTERPRET
    return INTERPRET and x.device.type == "cpu"


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def target_programs(x: torch.Tensor) -> int:
    """How many programs fill the device.

    On a GPU, four programs per SM: enough resident work to hide memory latency.
    Under the interpreter programs run one after another, so parallelism buys
    nothing; 4 keeps the split and persistent paths exercised on small tests."""
    if x.device.type == "cuda":
        return 4 * sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())
    return 4
