"""Under torch.compile, our kernels are launched by Inductor, not by our Python (issue 24):
the traced path's ops are torch.library.triton_ops whose implementations launch through
wrap_triton, so the forward and backward graphs hold the kernels themselves.  Checked on
the CPU, capture only: a process without the interpreter (the kernels are real JIT
functions) records the graphs an aot_autograd backend is given and stops before running
anything (tests/capture_worker.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritonnorm import _runtime, traced

WORKER = Path(__file__).with_name("capture_worker.py")


@pytest.fixture(scope="module")
def graphs():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(WORKER)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.skipif(not hasattr(torch.library, "triton_op"), reason="torch < 2.6 has no triton_op")
@pytest.mark.parametrize("graph", ["forward", "backward"])
def test_a_compiled_step_holds_the_kernels_and_no_opaque_op(graphs, graph):
    targets = graphs[graph]
    # BatchNorm, GroupNorm, LayerNorm and RMSNorm: a launch each at least.
    assert targets.count("triton_kernel_wrapper_functional") >= 4, targets
    assert not [t for t in targets if "tritonnorm" in t], targets


def test_triton_ops_exist_exactly_where_a_trace_can_enter_the_kernels():
    """Under Triton's interpreter (this process, without a GPU) a trace cannot enter the
    kernels, and torch before 2.6 has no triton_op: the custom ops serve those."""
    enterable = hasattr(torch.library, "triton_op") and not _runtime.INTERPRET
    assert traced.TRITON_OPS == enterable
    assert hasattr(traced, "norm_fwd_triton") == enterable
