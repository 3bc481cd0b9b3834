"""`tritonnorm bench` on the CPU: a tiny sweep and a tiny model run write their CSVs,
plots and tables; the report computes speedups the way it says."""
import csv
import math

import pytest
import torch

from tritonnorm.tools.bench import COLUMNS, run_bench
from tritonnorm.tools.bench_models import COLUMNS as MODEL_COLUMNS, run_models
from tritonnorm.tools.report import summary


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_quick_sweep_writes_csv_with_expected_columns_and_png(tmp_path, capsys):
    path = run_bench(["layer", "group", "syncbatch"], [torch.float32], quick=True, out_dir=tmp_path,
                     tiny=True)
    rows = _read(path)
    assert list(rows[0]) == COLUMNS
    assert {r["provider"] for r in rows} >= {"tritonnorm", "torch"}
    assert {r["norm"] for r in rows} == {"layer", "group", "syncbatch"}
    assert {r["pass"] for r in rows} == {"fwd", "bwd", "fwd+bwd"}
    assert {r["layout"] for r in rows if r["norm"] == "group"} == {"nchw", "nhwc"}
    assert all(float(r["gbps"]) > 0 and float(r["ms_median"]) > 0 and float(r["copy_gbps"]) > 0
               for r in rows)
    for png in ("layer_fwd.png", "group_fwd_bwd.png", "syncbatch_bwd.png"):
        assert (tmp_path / png).stat().st_size > 0
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("Device: ")
    assert "| norm | pass | vs torch" in text
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'layer_fwd.png'}" in out and f"wrote {tmp_path / 'summary.md'}" in out
    if not torch.cuda.is_available():
        assert "NOT GPU numbers" in out and "NOT GPU numbers" in text


def test_model_bench_times_a_training_step_per_provider(tmp_path):
    rows = _read(run_models([torch.float32], tmp_path, names=["unet"], tiny=True))
    assert list(rows[0]) == MODEL_COLUMNS
    assert {r["provider"] for r in rows} >= {"torch", "tritonnorm", "tritonnorm fuse"}
    assert all(float(r["ms_median"]) > 0 for r in rows)
    assert "| unet |" in (tmp_path / "models.md").read_text()


def test_summary_reports_geomean_speedup_against_each_reference():
    def row(provider, shape, ms):
        return dict(norm="layer", pass_="fwd", shape=shape, dtype="float32", layout="nchw",
                    provider=provider, ms_median=str(ms), pct_of_copy="50")
    rows = [row("tritonnorm", "8x8", 1.0), row("torch", "8x8", 2.0),
            row("tritonnorm", "4x4", 1.0), row("torch", "4x4", 8.0),
            row("torch.compile", "8x8", 0.5)]
    for r in rows:
        r["pass"] = r.pop("pass_")
    table = summary(rows).splitlines()
    assert table[0] == "| norm | pass | vs torch | vs torch.compile | % of copy |"
    assert table[2] == "| layer | fwd | 4.00x | 0.50x | 50% |"   # sqrt(2 * 8) = 4


def test_host_bench_times_every_pass_of_a_case_against_torch(tmp_path):
    from tritonnorm.tools.bench_host import COLUMNS as HOST_COLUMNS, run_host
    rows = _read(run_host(tmp_path, cases=["layer", "batch eval"], calls=3, rounds=1))
    assert list(rows[0]) == HOST_COLUMNS
    assert [(r["case"], r["pass"]) for r in rows] == [
        (c, p) for c in ("layer", "batch eval") for p in ("fwd", "fwd+bwd", "fwd no_grad")]
    for r in rows:
        assert float(r["torch_us"]) > 0 and float(r["tritonnorm_us"]) > 0
        # The ratio is written with two decimals.
        assert float(r["ratio"]) == pytest.approx(float(r["tritonnorm_us"]) / float(r["torch_us"]),
                                                  rel=0.02, abs=0.006)
    assert "| layer | fwd |" in (tmp_path / "host.md").read_text()


def test_host_bench_stubs_launches_only_inside_its_timing():
    import triton.runtime.interpreter as interp
    from tritonnorm import dispatch
    from tritonnorm.tools.bench_host import _no_launches
    before = interp.InterpretedFunction.run, dispatch._run_fwd
    with _no_launches():
        assert interp.InterpretedFunction.run is not before[0]
        assert dispatch._run_fwd is not before[1]
    assert (interp.InterpretedFunction.run, dispatch._run_fwd) == before


def test_a_speedup_that_cannot_be_computed_reads_n_a():
    rows = [dict(norm="rms", shape="8x8", dtype="float32", layout="nchw", provider=p,
                 ms_median=str(ms), pct_of_copy="50", **{"pass": "fwd"})
            for p, ms in (("tritonnorm", 0.0), ("torch", 1.0))]
    table = summary(rows).splitlines()
    # torch.compile is always a column, n/a where the run has none (CPU runs).
    assert table[0] == "| norm | pass | vs torch | vs torch.compile | % of copy |"
    assert table[2] == "| rms | fwd | n/a | n/a | 50% |"


def test_every_cli_option_states_its_default():
    """`--help` of each command names each option's default (or says it takes none)."""
    import re

    from tritonnorm.tools.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        assert command.description, f"{name} --help has no description"
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert re.search(r"default", action.help or ""), f"{name} {action.option_strings}"


def test_fused_suite_writes_csv_table_and_plots(tmp_path, capsys):
    from tritonnorm.tools.bench_fused import run_fused
    rows = _read(run_fused([torch.float32], tmp_path))
    assert list(rows[0]) == COLUMNS
    assert {r["norm"] for r in rows} == {"add_rms", "add_layer", "gn_silu", "bn_add_relu"}
    assert {r["provider"] for r in rows} >= {"tritonnorm", "torch"}
    assert {r["pass"] for r in rows} == {"fwd", "bwd", "fwd+bwd"}
    # GB/s counts 4 tensors a pass (8 for fwd+bwd), of x's size each, for the residual add;
    # the norm's 5 and the residual and its gradient for BatchNorm + add + ReLU.
    for norm, shape, n in (("add_rms", (16, 64), 8), ("bn_add_relu", (2, 8, 4, 4), 7)):
        r = next(r for r in rows if r["pass"] == "fwd+bwd" and r["norm"] == norm)
        s = 4 * math.prod(shape)
        assert float(r["gbps"]) == pytest.approx(n * s / float(r["ms_median"]) / 1e6, rel=1e-3)
    assert {r["layout"] for r in rows if r["norm"] == "gn_silu"} == {"nhwc"}
    assert "| add_rms | fwd |" in (tmp_path / "fused.md").read_text()
    assert (tmp_path / "add_rms_fwd.png").stat().st_size > 0
    assert f"wrote {tmp_path / 'fused.md'}" in capsys.readouterr().out
