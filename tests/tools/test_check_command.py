"""`tritonnorm check`, the main job, compares every norm with torch and says so."""
import os
import subprocess
import sys

import pytest
import torch

from tritonnorm.tools.check import run_check


def test_check_passes_and_prints_a_row_per_norm(capsys):
    assert run_check(dtypes=(torch.float32,))
    out = capsys.readouterr().out
    for norm in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "RMSNorm", "GroupNorm",
                 "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"):
        assert norm in out
    assert "all norms match torch" in out and "FAIL" not in out
    assert "err grads" in out and "tol:" in out and "ms:" in out   # the legend of the columns


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter re-exec is the no-GPU path")
def test_check_command_line_picks_the_interpreter_itself_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tritonnorm", "check"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CPU, Triton interpreter" in done.stdout and "all norms match torch" in done.stdout


def test_version_names_tritonnorm_torch_and_triton(capsys):
    import triton

    import tritonnorm
    from tritonnorm.tools.cli import main
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == (f"tritonnorm {tritonnorm.__version__} (torch {torch.__version__}, "
                   f"triton {triton.__version__})")
