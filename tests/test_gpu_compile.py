"""The kernels lower to a real GPU target, not just run under the interpreter.

perf/compile_check.py records the specialisations the norms launch (flags,
phases, block sizes, warps) and compiles each with triton's compiler and ptxas
for sm_90 -- no GPU or driver needed.  The CPU suite runs a slice of it, one
norm per weight mode (by element, by channel, by row); the whole grid is
``python perf/compile_check.py``."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "compile_check.py"


@pytest.mark.parametrize("norm", ["layer", "group", "batch", "fused"])
def test_launched_specialisations_compile_for_sm90(norm):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--jobs", "1", "--norm", norm],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "specialisations compile for sm_90" in proc.stdout
