"""Every Python snippet of the README runs as written (here: on the CPU, under the
interpreter that conftest sets up), and again on a CPU machine without the interpreter,
where CPU tensors take torch's own kernels.  Only snippets that need several processes are
left out; the torchrun example has its own multi-process test (test_sync_batchnorm)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
MULTI_PROCESS = ("init_process_group", "torchrun")


def test_the_readme_has_python_snippets():
    assert len(BLOCKS) >= 2


SNIPPETS = [b for b in BLOCKS if not any(m in b for m in MULTI_PROCESS)]


def _id(code):
    return code.strip().splitlines()[-1][:40]


@pytest.mark.parametrize("code", SNIPPETS, ids=_id)
def test_readme_snippet_runs(code, capsys):
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback runs where there is no GPU")
@pytest.mark.parametrize("code", SNIPPETS, ids=_id)
def test_readme_snippet_runs_without_the_interpreter(code):
    """A fresh process without TRITON_INTERPRET: the fallback to torch's kernels, the path a
    first CPU run takes, must not crash (torch 2.13's CPU GroupNorm backward of a
    channels_last input segfaulted in the Quickstart, exit -11)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
