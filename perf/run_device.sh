#!/usr/bin/env bash
# Everything a GPU session checks and measures, in one call, within 8 minutes (less with the
# stage limits below lowered),
# results under $OUT (default perf/out):
#   env.txt      GPU, driver, torch and triton versions; the exit status of each stage
#   pytest.txt   the test suite, compiled for the GPU (CUDA-graph and compile tests included)
#   bench.txt    the log of the throughput sweep and of the model training steps
#   bench.tgz    bench.csv, models.csv, host.csv, fused.csv (epilogues), summary.md, models.md, host.md,
#                fused.md and one PNG per norm and pass
#   probe.csv    kernel-only times (CUDA graph replay) of a few norms under config variants
#   tune.txt     only with STAGES containing "tune": `tritonnorm tune --quick`, and
#   tables.tgz   the tuning table it wrote (copy it into tritonnorm/tables/)
# The device tool returns at most 8 files, so the many PNGs travel as one archive.
# Unpack with: tar xzf bench.tgz -C perf/results/<gpu>/
#
# Usage on the device machine:  bash perf/run_device.sh            (tests, bench, probe)
#                               STAGES="tests bench tune" bash perf/run_device.sh
set -uo pipefail
OUT=${OUT:-perf/out}
STAGES=${STAGES:-"tests bench probe"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
# Peers to compare with that the GPU image lacks travel as wheels in .whl/ (liger-kernel
# is pure Python: `pip download --no-deps liger-kernel -d .whl` here, carry .whl there).
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -3
fi
# Stage limits (s), to fit what is left of a session's device time.
TESTS_S=${TESTS_S:-200}; SWEEP_BUDGET_S=${SWEEP_BUDGET_S:-60}; MODELS_S=${MODELS_S:-130}
PROBE_S=${PROBE_S:-120}
# Norm order of the sweep: a sweep cut by its budget covers the first ones best.
NORMS=${NORMS:-"layer rms group instance batch syncbatch"}
status=0
stage() {  # stage NAME TIMEOUT_S LOG COMMAND...: run, log, record the exit status
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log" | tail -25
  local rc=${PIPESTATUS[0]}
  echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/env.txt"
  [ "$rc" = 0 ] || status=1
}
if [[ $STAGES == *tests* ]]; then
  # 16 CPU cores compile kernels in parallel, 12 workers; slow-marked tests stay out (as on CI).
  stage tests "$TESTS_S" pytest.txt python3 -m pytest -q -n 12 --durations=15
fi
if [[ $STAGES == *bench* ]]; then
  # The sweep stops starting new cases after --budget-s; it measures the first shape
  # of every norm before the second of any, so a cut sweep still covers every norm.
  stage sweep $((SWEEP_BUDGET_S + 40)) bench.txt python3 -m tritonnorm bench --suite sweep \
    --budget-s "$SWEEP_BUDGET_S" $(printf -- "--norm %s " $NORMS) --out "$OUT/bench"
  stage models "$MODELS_S" bench.txt python3 -m tritonnorm bench --suite models --dtype bfloat16 --out "$OUT/bench"
  # Host time per eager call at tiny sizes, real launches: a few seconds; then the same
  # through triton's kernel.run on every launch, for comparison (tritonnorm/launch.py).
  stage host 60 bench.txt python3 -m tritonnorm bench --suite host --out "$OUT/bench"
  mkdir -p "$OUT/bench/kernel_run"
  stage host_kernel_run 60 bench.txt env TRITONNORM_DIRECT_LAUNCH=0 python3 -m tritonnorm bench \
    --suite host --out "$OUT/bench/kernel_run"
  # Fused epilogues (GroupNorm+SiLU, BatchNorm+add+ReLU, the residual add of RMSNorm/LayerNorm)
  # against torch's composition (bf16).
  stage fused 90 bench.txt python3 -m tritonnorm bench --suite fused --dtype bfloat16 \
    --out "$OUT/bench"
  tar czf "$OUT/bench.tgz" -C "$OUT/bench" . && rm -rf "$OUT/bench"
fi
if [[ $STAGES == *probe* ]]; then
  stage probe "$PROBE_S" probe.txt python3 perf/probe.py --budget-s $((PROBE_S - 40)) --out "$OUT/probe.csv"
fi
if [[ $STAGES == *tune* ]]; then
  export TRITONNORM_CACHE_DIR="$OUT/tables"
  stage tune 300 tune.txt python3 -m tritonnorm tune --quick
  tar czf "$OUT/tables.tgz" -C "$OUT/tables" . && rm -rf "$OUT/tables"
fi
exit $status
