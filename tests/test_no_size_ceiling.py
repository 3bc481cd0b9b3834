"""No size ceiling: rows far longer than a tile loop, and few long rows split."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import tritonnorm.config as config
import tritonnorm.functional as TF
from oracle import assert_matches_torch

# (what, our call, torch's call, input shape, parameter shape)
HUGE_ROWS = [
    ("LayerNorm over 1,000,000 columns",
     lambda x, w, b: TF.layer_norm(x, (1_000_000,), w, b),
     lambda x, w, b: F.layer_norm(x, (1_000_000,), w, b), (1, 1_000_000), (1_000_000,)),
    ("GroupNorm with a 512x64x64 group",
     lambda x, w, b: TF.group_norm(x, 1, w, b),
     lambda x, w, b: F.group_norm(x, 1, w, b), (1, 512, 64, 64), (512,)),
]


@pytest.mark.parametrize("what,ours,ref,shape,pshape", HUGE_ROWS, ids=[c[0] for c in HUGE_ROWS])
def test_huge_rows_match_torch(what, ours, ref, shape, pshape, device):
    x = torch.randn(shape, device=device)
    w, b = torch.randn(pshape, device=device), torch.randn(pshape, device=device)
    # The interpreter pays per tile operation, not per element: 64K-element tiles
    # keep the walk over a million elements (still 16 tiles a row) quick on the CPU.
    tiles = config.override(max_tile=1 << 16) if device == "cpu" else contextlib.nullcontext()
    with tiles:
        assert_matches_torch(ours, ref, [x, w, b])


@pytest.mark.slow
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_vae_decoder_group_norm(layout, device):
    """Stable-Diffusion VAE decoder: 32 rows of ~1M elements, split across programs."""
    x = torch.randn(1, 128, 512, 512, device=device).contiguous(memory_format=layout)
    w, b = torch.randn(128, device=device), torch.randn(128, device=device)
    assert_matches_torch(lambda x, w, b: TF.group_norm(x, 32, w, b),
                         lambda x, w, b: F.group_norm(x, 32, w, b), [x, w, b])
