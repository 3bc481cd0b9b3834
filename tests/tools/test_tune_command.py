"""`tritonnorm tune`, the tool that writes the tuning tables the library reads."""
import pytest
import torch

import tritonnorm.__main__ as cli


# tune must not touch the real tuning-table cache (conftest.py: cache_dir).
pytestmark = pytest.mark.usefixtures("cache_dir")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_tune_without_a_gpu_says_so_and_fails(capsys):
    assert cli.main(["tune", "--quick"]) != 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
