"""Tuning tables: written atomically, loaded once, never crash when corrupt or foreign."""
import json

import pytest
import torch
import triton

from tritonnorm import config, tables
from tritonnorm.spec import GROUP, channel_layout

DEVICE = "NVIDIA Test GPU 80GB"


# Each test writes and reads tables in a fresh cache directory (conftest.py).
pytestmark = pytest.mark.usefixtures("cache_dir")


def test_table_round_trip_is_atomic(cache_dir):
    entries = {"group_norm/fwd/float32/nc/L4096/R64": dict(max_tile=2048, num_warps=4, split_scale=1, gbps=1.0)}
    path = tables.write_table(DEVICE, entries)
    assert path.parent == cache_dir and triton.__version__ in path.name
    assert [p.name for p in cache_dir.iterdir()] == [path.name], "no temp file left behind"
    assert tables.device_table(DEVICE) == entries


@pytest.mark.parametrize("content,why", [
    ("{not json", "Expecting property name"),
    (json.dumps({"format": 1, "device": "Another GPU", "triton": triton.__version__, "entries": {}}), "Another GPU"),
    (json.dumps({"format": 1, "device": DEVICE, "triton": "0.0.1", "entries": {}}), "0.0.1"),
    (json.dumps([1, 2, 3]), "list"),
])
def test_corrupt_or_foreign_table_warns_and_is_ignored(cache_dir, content, why):
    (cache_dir / tables.table_name(DEVICE)).write_text(content)
    with pytest.warns(UserWarning, match="ignoring tuning table"):
        assert tables.device_table(DEVICE) == {}


def test_dispatch_uses_the_tuned_entry_for_its_bucket(monkeypatch):
    x = torch.randn(2, 64, 8, 8)
    _, view = channel_layout(x, 32)
    key = config.bucket_key(view, x, GROUP.name, "fwd")
    assert key == "group_norm/fwd/float32/nc/L128/R64"
    monkeypatch.setattr(config, "_tuned", lambda *a: {"max_tile": 64, "num_warps": 2, "split_scale": 1})
    config.clear_cache()
    cfg = config.row_config(view, x, GROUP, "fwd")
    config.clear_cache()
    assert cfg.BLOCK_G * cfg.BLOCK_J * cfg.BLOCK_S <= 64 and cfg.num_warps == 2


def test_interpreter_collapses_to_one_config():
    x = torch.randn(2, 64, 8, 8)
    _, view = channel_layout(x, 32)
    assert config._tuned(view, x, GROUP.name, "fwd") == {}
