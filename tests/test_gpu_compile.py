"""The kernels lower to a real GPU target, not just run under the interpreter.

perf/compile_check.py records the specialisations the norms launch (flags,
phases, block sizes, warps) and compiles each with triton's compiler and ptxas
for sm_90 -- no GPU or driver needed.  The CPU suite runs a slice of it, one
norm per weight mode (by element, by channel, by row); the whole grid is
``python perf/compile_check.py``.  A specialisation that converts a replicated tile
through shared memory fails it, as a compile error does (kernels/tiles.per_row), and so
does one passed a pointer argument it never uses (plan.make_launch passes None for those)."""
import importlib.util
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
    assert "; 0 convert a replicated tile through shared memory;" in proc.stdout
    # Every pointer a launch passes is one its specialisation reads or writes (issue 24):
    # the others go as None, so the host does not pay to pass them.
    assert "; 0 are passed a pointer they never use;" in proc.stdout


def _compile_check():
    spec = importlib.util.spec_from_file_location("compile_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A [1, 1, 4096] tile converted from a layout whose threads and warps sit on the size-1
# dimensions (every thread holds all 4096 elements: what triton 3.6 made of mean[:, None,
# None] in a one-row block), and the same tile from a layout that spreads it.
_TTGIR = """
#blocked = #ttg.blocked<{sizePerThread = [1, 1, 4], threadsPerWarp = [1, 1, 32], warpsPerCTA = [1, 1, 8], order = [2, 1, 0]}>
#blocked1 = #ttg.blocked<{sizePerThread = [1, 1, 1], threadsPerWarp = [32, 1, 1], warpsPerCTA = [8, 1, 1], order = [2, 1, 0]}>
#blocked2 = #ttg.blocked<{sizePerThread = [1, 1, 8], threadsPerWarp = [1, 1, 32], warpsPerCTA = [1, 1, 8], order = [2, 1, 0]}>
    %12 = ttg.convert_layout %11 : tensor<1x1x4096xf32, {src}> -> tensor<1x1x4096xf32, #blocked> loc(#loc5)
"""


@pytest.mark.parametrize("src,replicated", [("#blocked1", 1), ("#blocked2", 0)])
def test_a_replicated_tile_convert_is_found_in_the_ttgir(src, replicated):
    assert _compile_check().replicated_converts(_TTGIR.replace("{src}", src)) == replicated


# A kernel signature with two pointers, of which the body uses one (its own name only:
# %W_ptr_1 is another value).
_TTIR = """
  tt.func public @k(%X_ptr: !tt.ptr<f32> loc("X_ptr"(#loc)), %W_ptr: !tt.ptr<f32> loc("W_ptr"(#loc))) {
    %W_ptr_1 = arith.constant 0 : i32 loc(#loc2)
    %0 = tt.addptr %X_ptr, %W_ptr_1 : !tt.ptr<f32>, i32 loc(#loc3)
"""


@pytest.mark.parametrize("passed,unused", [(["X_ptr"], []), (["X_ptr", "W_ptr"], ["W_ptr"])])
def test_a_pointer_passed_and_never_used_is_found_in_the_ttir(passed, unused):
    assert _compile_check().unused_pointers(_TTIR, passed) == unused
