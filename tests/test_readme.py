"""Every Python snippet of the README runs as written (here: on the CPU, under the
interpreter that conftest sets up).  Only snippets that need several processes are
left out; the torchrun example has its own multi-process test (test_sync_batchnorm)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
MULTI_PROCESS = ("init_process_group", "torchrun")


def test_the_readme_has_python_snippets():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", [b for b in BLOCKS if not any(m in b for m in MULTI_PROCESS)],
                         ids=lambda b: b.strip().splitlines()[-1][:40])
def test_readme_snippet_runs(code, capsys):
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
