"""Run by test_triton_op.py in a process without TRITON_INTERPRET, so the kernels are real
@triton.jit functions: compile a converted model with an aot_autograd backend that records
the forward and backward graphs and stops before anything runs, and print, as JSON, the
call targets of each graph.  Nothing executes, so no GPU is needed; CPU tensors are routed
to tritonnorm's path (a CPU tensor without the interpreter would go to torch's)."""
import json
import os
import sys

assert "TRITON_INTERPRET" not in os.environ
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from functorch.compile import make_boxed_func  # noqa: E402
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from torch._functorch.partitioners import default_partition  # noqa: E402

import tritonnorm  # noqa: E402
from tritonnorm import front, functional  # noqa: E402

for module in (front, functional):   # CPU tensors take our path
    module.use_triton = lambda x: True
# Without a GPU driver torch cannot read the kernels' TTIR to see which arguments they write,
# and logs why; it then assumes every one is written, which the graph shows as clones.


class Stop(Exception):
    """Raised by the recording partitioner: the graphs are captured, nothing is to run."""


def capture() -> dict:
    graphs = {}

    def partition(joint, inputs, **kwargs):
        graphs["forward"], graphs["backward"] = default_partition(joint, inputs, **kwargs)
        raise Stop()
    backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward),
                           partition_fn=partition)
    torch.manual_seed(0)
    model = tritonnorm.convert(nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.GroupNorm(2, 8), nn.Flatten(),
        nn.LayerNorm(8 * 4 * 4), nn.RMSNorm(128))).train()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    try:
        compiled(torch.randn(2, 3, 4, 4, requires_grad=True)).sum()
    except Exception as e:   # dynamo wraps the backend's Stop
        if "Stop" not in repr(e):
            raise
    return {name: [str(n.target) for n in g.graph.nodes if n.op == "call_function"]
            for name, g in graphs.items()}


if __name__ == "__main__":
    json.dump(capture(), sys.stdout)
