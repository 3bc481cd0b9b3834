"""The device run (perf/run_device.sh) without a GPU: its plan fits 9 minutes and holds
every case of the sweep and every model; the profile documents its metric set and names a
bound the way it says; the summary reads the run's CSVs into one page."""
import csv
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"perf_{name}", ROOT / "perf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plan():
    done = subprocess.run(["bash", "perf/run_device.sh", "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_plan_fits_nine_minutes_with_a_budget_per_stage(plan):
    total = int(re.search(r"total budget: (\d+) s of 540 s \(fits\)", plan).group(1))
    stages = dict(re.findall(r"^  (\w+) +(\d+) s", plan, flags=re.M))
    assert set(stages) == {"setup", "tests", "sweep", "models", "host", "profile", "summary"}
    assert sum(map(int, stages.values())) == total <= 540


@pytest.mark.parametrize("norm,shapes,dtypes,layouts", [
    ("layer", ["4096x4096", "16384x4096", "8192x8192"], ["bfloat16"], ["nchw"]),
    ("rms", ["8192x768"], ["float32", "bfloat16"], ["nchw"]),
    ("rms", ["2x262144"], ["float32"], ["nchw"]),
    ("group", ["2x320x64x64", "2x640x32x32", "2x1280x16x16", "1x128x512x512"], ["bfloat16"],
     ["nchw", "nhwc"]),
    ("batch", ["32x64x112x112", "32x256x56x56", "32x512x28x28", "32x2048x7x7"],
     ["bfloat16", "float32"], ["nchw", "nhwc"]),
    ("batch_eval", ["32x64x112x112", "32x2048x7x7"], ["bfloat16"], ["nchw", "nhwc"]),
    ("instance", ["4x64x256x256", "8x128x128x128"], ["bfloat16"], ["nchw"]),
])
def test_the_plan_lists_every_real_model_case(plan, norm, shapes, dtypes, layouts):
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                assert re.search(rf"^  {norm} +{shape} +{dtype} +{layout} ", plan, flags=re.M), \
                    (norm, shape, dtype, layout)


def test_the_plan_lists_the_model_steps_and_the_profile(plan):
    for model in ("resnet50 +32x3x224x224 +nchw nhwc", "sd_down +8x320x64x64", "llama +1x4096x4096",
                  "vit_b +64x197x768"):
        assert re.search(model, plan), model
    assert "ncu on the 6 sweep cases worst against torch and the 4 largest" in plan


def test_profile_help_documents_its_metric_set():
    profile = _load("ncu_profile")
    done = subprocess.run(["python3", "perf/ncu_profile.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    for column, metric in profile.METRICS.items():
        assert column in done.stdout and metric in done.stdout


def _metrics(**kw):
    m = dict(duration_us=10.0, dram_pct=30.0, occupancy_pct=50.0, occ_limit_regs=2.0,
             regs_per_thread=128.0, stall_long_sb=1.0, stall_mio=0.1, stall_barrier=0.1,
             stall_short_sb=0.1, smem_st_wavefronts=0.0, sectors_per_ld_request=4.0)
    return {**m, **kw}


@pytest.mark.parametrize("metrics,bound", [
    (_metrics(dram_pct=85.0), "DRAM"),
    (_metrics(smem_st_wavefronts=2052.0, stall_mio=3.0), "shared memory"),
    (_metrics(), "latency"),
    (_metrics(stall_long_sb=0.1, stall_barrier=2.0), "issue"),
])
def test_profile_names_the_bound_of_a_kernel(metrics, bound):
    assert _load("ncu_profile").bound(metrics) == bound


def _bench_rows():
    def row(norm, shape, provider, us, pass_="fwd"):
        return {"norm": norm, "shape": shape, "dtype": "bfloat16", "layout": "nchw", "pass": pass_,
                "provider": provider, "gpu_us": str(us), "host_us": "20", "pct_of_copy": "80"}
    return [row("layer", "4096x4096", "tritonnorm", 10), row("layer", "4096x4096", "torch", 20),
            row("group", "2x320x64x64", "tritonnorm", 40), row("group", "2x320x64x64", "torch", 10),
            row("batch", "32x64x112x112", "tritonnorm", 300), row("batch", "32x64x112x112", "torch", 150)]


def test_profile_picks_the_worst_cases_then_the_largest():
    picked = _load("ncu_profile").pick(_bench_rows(), worst=1, largest=1)
    assert picked == [(("group", "2x320x64x64", "bfloat16", "nchw", "fwd"), "worst vs torch (0.25x)"),
                      (("batch", "32x64x112x112", "bfloat16", "nchw", "fwd"), "largest")]


def test_summary_is_one_page_of_ratios_worst_cases_and_steps(tmp_path):
    rows = _bench_rows()
    with open(tmp_path / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    profile = _load("ncu_profile")
    with open(tmp_path / "profile.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=profile.COLUMNS)
        w.writeheader()
        w.writerow(dict(norm="group", shape="2x320x64x64", dtype="bfloat16", layout="nchw",
                        why="worst", kernel="row_norm_fwd", bound="shared memory",
                        **{"pass": "fwd"}, **{k: "1" for k in profile.METRICS}))
    (tmp_path / "models.md").write_text("| model | input |\n|---|---|\n| resnet50 | 32x3x224x224 |\n")
    text = _load("summary").write(tmp_path, "NVIDIA H200, 2026-11-30, commit abc1234").read_text()
    assert text.startswith("# Device run: NVIDIA H200, 2026-11-30, commit abc1234")
    headings = re.findall(r"^## (.*)$", text, flags=re.M)
    assert headings == ["Per norm and pass (geomean; > 1: tritonnorm faster)",
                        "Worst against torch eager (GPU time)", "Model training steps"]
    assert "| norm | pass | GPU vs torch |" in text
    worst = [line for line in text.splitlines() if line.startswith("| group 2x320x64x64")]
    assert worst == ["| group 2x320x64x64 bfloat16 nchw | fwd | 40 | 10 | 0.25x | "
                     "shared memory (row_norm_fwd, 1 µs) |"]
    assert "| resnet50 | 32x3x224x224 |" in text
