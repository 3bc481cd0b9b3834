"""`tritonnorm bench` on the CPU: a tiny sweep writes the CSV and the plots."""
import csv

import torch

from tritonnorm.bench import COLUMNS, run_bench


def test_quick_sweep_writes_csv_with_expected_columns_and_png(tmp_path, capsys):
    path = run_bench(["layer", "group"], [torch.float32], quick=True, out_dir=tmp_path)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert {r["provider"] for r in rows} >= {"tritonnorm", "torch"}
    assert {r["pass"] for r in rows} == {"fwd", "bwd", "fwd+bwd"}
    assert {r["layout"] for r in rows if r["norm"] == "group"} == {"nchw", "nhwc"}
    assert all(float(r["gbps"]) > 0 and float(r["ms_median"]) > 0 for r in rows)
    assert (tmp_path / "layer_fwd.png").stat().st_size > 0
    assert (tmp_path / "group_fwd_bwd.png").stat().st_size > 0
    if not torch.cuda.is_available():
        assert "NOT GPU numbers" in capsys.readouterr().out
