"""`tritonnorm bench` on the CPU: a tiny sweep and a tiny model run write their CSVs,
plots and tables; the report computes speedups the way it says."""
import csv
import math

import pytest
import torch

from tritonnorm.tools.bench import COLUMNS, SWEEP, _inputs, jobs, run_bench
from tritonnorm.tools.bench_models import COLUMNS as MODEL_COLUMNS, run_models
from tritonnorm.tools.report import summary


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_quick_sweep_writes_csv_with_expected_columns_and_png(tmp_path, capsys):
    path = run_bench(["layer", "group", "syncbatch", "batch_eval"], [torch.float32], quick=True,
                     out_dir=tmp_path, tiny=True)
    rows = _read(path)
    assert list(rows[0]) == COLUMNS
    assert {r["provider"] for r in rows} >= {"tritonnorm", "torch"}
    assert {r["norm"] for r in rows} == {"layer", "group", "syncbatch", "batch_eval"}
    assert {r["pass"] for r in rows if r["norm"] != "batch_eval"} == {"fwd", "bwd", "fwd+bwd"}
    assert {r["pass"] for r in rows if r["norm"] == "batch_eval"} == {"fwd"}
    assert {r["layout"] for r in rows if r["norm"] == "group"} == {"nchw", "nhwc"}
    assert all(float(r["host_us"]) > 0 for r in rows)
    if torch.cuda.is_available():
        assert {r["method"] for r in rows} <= {"cuda_graph", "profiler"}
        assert all(float(r["gpu_us"]) > 0 and float(r["gbps"]) > 0 for r in rows)
    else:   # no GPU: no GPU time, so no GB/s either, and the rows say so
        assert {(r["method"], r["gpu_us"], r["gbps"], r["pct_of_copy"]) for r in rows} == {
            ("n/a", "n/a", "n/a", "n/a")}
    for png in ("layer_fwd.png", "group_fwd_bwd.png", "syncbatch_bwd.png"):
        assert (tmp_path / png).stat().st_size > 0
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("Device: ")
    assert "| norm | pass | GPU vs torch | GPU vs torch.compile | compiled vs torch.compile" in text
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'layer_fwd.png'}" in out and f"wrote {tmp_path / 'summary.md'}" in out
    if not torch.cuda.is_available():
        assert "NOT GPU numbers" in out and "NOT GPU numbers" in text


def test_the_default_sweep_holds_the_real_model_shapes():
    """The GPU sweep's cases: LLM and ViT rows, SD UNet/VAE GroupNorm(32), ResNet-50
    BatchNorm (training and eval), InstanceNorm; --quick keeps one per norm."""
    cases = jobs(list(SWEEP), [torch.float32, torch.bfloat16], quick=False, tiny=False)
    have = {(n, "x".join(map(str, s)), str(d)[6:], lay) for n, s, d, lay in cases}
    for norm in ("layer", "rms"):
        assert {(norm, s, d, "nchw") for s, d in [("4096x4096", "bfloat16"), ("16384x4096", "bfloat16"),
                ("8192x8192", "bfloat16"), ("8192x768", "float32"), ("8192x768", "bfloat16"),
                ("2x262144", "float32")]} <= have
    for s in ("2x320x64x64", "2x640x32x32", "2x1280x16x16", "1x128x512x512"):
        assert {("group", s, "bfloat16", lay) for lay in ("nchw", "nhwc")} <= have
    for s in ("32x64x112x112", "32x256x56x56", "32x512x28x28", "32x2048x7x7"):
        assert {("batch", s, d, lay) for d in ("bfloat16", "float32") for lay in ("nchw", "nhwc")} <= have
        assert ("batch_eval", s, "bfloat16", "nchw") in have
    for s in ("4x64x256x256", "8x128x128x128"):
        assert ("instance", s, "bfloat16", "nchw") in have
    quick = jobs(list(SWEEP), [torch.float32, torch.bfloat16], quick=True, tiny=False)
    assert sorted(n for n, *_ in quick) == sorted(SWEEP)
    assert [n for n, *_ in cases[:len(SWEEP)]] == list(SWEEP)   # a cut sweep covers every norm


def test_inputs_rotate_through_three_l2s_without_the_cuda_generator():
    from tritonnorm.tools.timing import rotation
    assert rotation(set_bytes=10, l2=100) == 30
    assert rotation(set_bytes=1000, l2=100) == 2    # never one set: no pass reuses its inputs
    xs, dys = _inputs((4, 6), torch.float32, "nchw", "cpu", l2=40)   # 96-byte sets
    assert len(xs) == len(dys) == 2 and all(x.requires_grad for x in xs)
    assert not torch.equal(xs[0], xs[1])


def test_model_bench_times_a_training_step_per_provider(tmp_path):
    rows = _read(run_models([torch.float32], tmp_path, names=["sd_down"], tiny=True))
    assert list(rows[0]) == MODEL_COLUMNS
    assert {r["provider"] for r in rows} >= {"torch", "tritonnorm", "tritonnorm fuse"}
    assert all(float(r["ms_median"]) > 0 for r in rows)
    assert "| sd_down |" in (tmp_path / "models.md").read_text()


def test_summary_reports_geomean_ratios_of_gpu_and_host_time():
    def row(provider, shape, gpu, host):
        return {"norm": "layer", "pass": "fwd", "shape": shape, "dtype": "float32",
                "layout": "nchw", "provider": provider, "gpu_us": str(gpu), "host_us": str(host),
                "pct_of_copy": "50"}
    rows = [row("tritonnorm", "8x8", 1.0, 10), row("torch", "8x8", 2.0, 5),
            row("tritonnorm", "4x4", 1.0, 10), row("torch", "4x4", 8.0, 20),
            row("torch.compile", "8x8", 0.5, 40), row("tritonnorm+compile", "8x8", 0.25, 40)]
    table = summary(rows).splitlines()
    assert table[0] == ("| norm | pass | GPU vs torch | GPU vs torch.compile | "
                        "compiled vs torch.compile | host vs torch | % of copy |")
    # sqrt(2 * 8) = 4; 0.5 / 1; 0.5 / 0.25; sqrt(0.5 * 2) = 1
    assert table[2] == "| layer | fwd | 4.00x | 0.50x | 2.00x | 1.00x | 50% |"


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
    # Tensors a launch passes: a LayerNorm forward x, y, w, b and the statistics (mean and
    # rstd, one tensor); its backward x, dy, dx, w, the statistics and the dw/db scratch, then
    # the column sum's three.  An eval BatchNorm applies the running statistics: x, y, w, b,
    # running mean and var.
    args = {(r["case"], r["pass"]): r["tensor_args"] for r in rows}
    assert args[("layer", "fwd")] == args[("layer", "fwd no_grad")] == "5"
    assert args[("layer", "fwd+bwd")] == "5+6+3"
    assert args[("batch eval", "fwd no_grad")] == "6"


def test_host_bench_stubs_launches_only_inside_its_timing():
    import triton.runtime.interpreter as interp
    from tritonnorm import dispatch
    from tritonnorm.tools.bench_host import _no_launches
    before = interp.InterpretedFunction.run, dispatch._run_fwd
    with _no_launches():
        assert interp.InterpretedFunction.run is not before[0]
        assert dispatch._run_fwd is not before[1]
    assert (interp.InterpretedFunction.run, dispatch._run_fwd) == before


def test_a_ratio_that_cannot_be_computed_reads_n_a():
    rows = [{"norm": "rms", "shape": "8x8", "dtype": "float32", "layout": "nchw", "provider": p,
             "gpu_us": gpu, "host_us": "3", "pct_of_copy": "n/a", "pass": "fwd"}
            for p, gpu in (("tritonnorm", "0"), ("torch", "n/a"))]
    table = summary(rows).splitlines()
    # torch.compile is always a column, n/a where the run has none (CPU runs).
    assert table[2] == "| rms | fwd | n/a | n/a | n/a | 1.00x | n/a |"


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
    assert all(float(r["host_us"]) > 0 for r in rows)
    # GB/s (GPU time) counts 4 tensors a pass (8 for fwd+bwd), of x's size each, for the
    # residual add; the norm's 5 and the residual and its gradient for BatchNorm + add + ReLU.
    if torch.cuda.is_available():
        for norm, n in (("add_rms", 8), ("bn_add_relu", 7)):
            r = next(r for r in rows if r["pass"] == "fwd+bwd" and r["norm"] == norm)
            s = 4 * math.prod(int(d) for d in r["shape"].split("x"))
            assert float(r["gbps"]) == pytest.approx(n * s / float(r["gpu_us"]) / 1e3, rel=1e-3)
    else:
        assert {r["gbps"] for r in rows} == {"n/a"}
    assert {r["layout"] for r in rows if r["norm"] == "gn_silu"} == {"nhwc"}
    assert "| add_rms | fwd |" in (tmp_path / "fused.md").read_text()
    assert (tmp_path / "add_rms_fwd.png").stat().st_size > 0
    assert f"wrote {tmp_path / 'fused.md'}" in capsys.readouterr().out
