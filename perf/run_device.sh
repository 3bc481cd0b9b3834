#!/usr/bin/env bash
# Everything a GPU session checks and measures, in one call of at most 9 minutes (540 s):
# each stage has a budget (seconds, below), and the budgets add up to less than that.
#
#   tests    the test suite, compiled for the GPU (CUDA-graph and compile tests included)
#   sweep    `tritonnorm bench`: every norm at real-model shapes, GPU time (CUDA-graph replay
#            over inputs rotated through 3x the L2) and host time, against torch eager,
#            torch.compile, apex and liger where present, tritonnorm eager and compiled
#   models   training steps of ResNet-50, an SD-UNet down block, a Llama layer and a ViT-B
#            block, with the norm kernels' share of each step
#   host     host µs per eager call at tiny shapes (`bench --suite host`)
#   profile  Nsight Compute on the 6 cases worst against torch and the 4 largest (perf/ncu_profile.py)
#   summary  summary.md: ratios per norm and pass, the 5 worst cases and their bound, the steps
# Optional stages (STAGES="... fused probe tune"): the fused epilogues, probe.py, a quick tune.
#
# Results under $OUT (default perf/out), at most 8 files (the device tool returns no more):
#   env.txt      GPU, driver, torch and triton; torch's RMSNorm backend; each stage's exit and time
#   pytest.txt   the test suite's log
#   log.txt      the logs of every other stage
#   summary.md   the page to read first (perf/summary.py)
#   bench.csv    the sweep's rows          models.csv   the model steps
#   profile.csv  ncu's metrics per kernel  results.tgz  everything else (PNGs, md tables, host.csv)
# Unpack with: tar xzf results.tgz -C perf/results/<gpu>/<commit>/
#
# Usage on the device machine:  bash perf/run_device.sh
#                               bash perf/run_device.sh --dry-run   (the plan; no GPU needed)
set -uo pipefail
OUT=${OUT:-perf/out}
STAGES=${STAGES:-"tests sweep models host profile summary"}
# Stage budgets (s).  SETUP_S covers the install and env.txt.
SETUP_S=${SETUP_S:-20}; TESTS_S=${TESTS_S:-110}; SWEEP_S=${SWEEP_S:-180}; MODELS_S=${MODELS_S:-95}
HOST_S=${HOST_S:-25}; PROFILE_S=${PROFILE_S:-80}; SUMMARY_S=${SUMMARY_S:-10}
FUSED_S=${FUSED_S:-90}; PROBE_S=${PROBE_S:-120}; TUNE_S=${TUNE_S:-300}
LIMIT_S=540
# Norm order of the sweep: a sweep cut by its budget covers the first cases of every norm.
NORMS=${NORMS:-"layer rms group batch batch_eval instance"}
NORM_ARGS=$(printf -- "--norm %s " $NORMS)
# The sweep and the model steps stop starting new cases this long before their limit, so
# the case running then can finish.
TAIL_S=35

budget() {  # the budget of a stage by name
  case $1 in
    tests) echo "$TESTS_S";; sweep) echo "$SWEEP_S";; models) echo "$MODELS_S";;
    host) echo "$HOST_S";; profile) echo "$PROFILE_S";; summary) echo "$SUMMARY_S";;
    fused) echo "$FUSED_S";; probe) echo "$PROBE_S";; tune) echo "$TUNE_S";;
  esac
}

if [[ ${1:-} == --dry-run ]]; then
  total=$SETUP_S
  echo "plan: stages [$STAGES], out $OUT"
  echo "  setup     ${SETUP_S} s  install, env.txt"
  for s in $STAGES; do
    b=$(budget "$s"); total=$((total + b))
    printf "  %-9s %4s s\n" "$s" "$b"
  done
  echo "total budget: ${total} s of ${LIMIT_S} s ($( [ "$total" -le "$LIMIT_S" ] && echo fits || echo "DOES NOT FIT"))"
  python3 - "$NORMS" <<'EOF'
import sys
import torch
from tritonnorm.tools.bench import COMPILED_CASES, SWEEP, jobs
from tritonnorm.tools.models import MODELS
norms = sys.argv[1].split()
cases = jobs(norms, [torch.float32, torch.bfloat16], quick=False, tiny=False)
print(f"sweep cases ({len(cases)}, in this order; the passes of each; torch eager, tritonnorm, "
      f"apex and liger on every case, torch.compile and tritonnorm+compile on the first "
      f"{COMPILED_CASES} of each norm):")
for norm, shape, dtype, layout in cases:
    print(f"  {norm:<11}{'x'.join(map(str, shape)):<16}{str(dtype)[6:]:<10}{layout:<6}"
          f"{' '.join(SWEEP[norm][2])}")
print("model steps (torch, tritonnorm, tritonnorm fuse, then each under torch.compile):")
for name, (_, shape, layouts, _, _) in MODELS.items():
    print(f"  {name:<10}{'x'.join(map(str, shape)):<18}{' '.join(layouts)}  bfloat16")
print("profile: ncu on the 6 sweep cases worst against torch and the 4 largest others")
EOF
  [ "$total" -le "$LIMIT_S" ]
  exit
fi

mkdir -p "$OUT/results"
export PYTHONUNBUFFERED=1
status=0
t_start=$SECONDS
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 - <<'EOF'
import importlib.metadata as md, os, torch, triton
print("torch", torch.__version__, "triton", triton.__version__)
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"
cute = version("nvidia-cutlass-dsl")
native_jit = os.environ.get("TORCH_DISABLE_NATIVE_JIT", "") != "1"
print(f"nvidia-cutlass-dsl: {cute}; TORCH_DISABLE_NATIVE_JIT={os.environ.get('TORCH_DISABLE_NATIVE_JIT', '')}")
print("torch eager F.rms_norm backend:",
      "CuTe-DSL kernel (torch's native JIT)" if cute != "absent" and native_jit else "ATen")
for peer in ("liger-kernel", "apex"):
    print(f"{peer}: {version(peer)}")
EOF
} 2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
# Peers that the GPU image lacks travel as wheels in .whl/ (liger-kernel is pure Python:
# `pip download --no-deps liger-kernel -d .whl` here, carry .whl there).
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -3
fi
echo "setup: $((SECONDS - t_start)) s" | tee -a "$OUT/env.txt"

stage() {  # stage NAME LOG COMMAND...: run within the stage's budget, log, record the exit
  local name=$1 log=$2; shift 2
  local t0=$SECONDS limit
  limit=$(budget "$name")
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log" | tail -25
  local rc=${PIPESTATUS[0]}
  echo "$name: exit $rc after $((SECONDS - t0)) s (budget $limit s)" | tee -a "$OUT/env.txt"
  [ "$rc" = 0 ] || status=1
}
R="$OUT/results"
for s in $STAGES; do
  case $s in
    tests)   # 16 CPU cores compile kernels in parallel; slow-marked tests stay out (as on CI)
      stage tests pytest.txt python3 -m pytest -q -n 12 --durations=15;;
    sweep)
      stage sweep log.txt python3 -m tritonnorm bench --suite sweep $NORM_ARGS \
        --budget-s $((SWEEP_S - TAIL_S)) --out "$R";;
    models)
      stage models log.txt python3 -m tritonnorm bench --suite models --dtype bfloat16 \
        --budget-s $((MODELS_S - TAIL_S)) --out "$R";;
    host)
      stage host log.txt python3 -m tritonnorm bench --suite host --out "$R";;
    profile)
      stage profile log.txt python3 perf/ncu_profile.py --bench "$R/bench.csv" --out "$R/profile.csv" \
        --budget-s $((PROFILE_S - 30));;
    fused)
      stage fused log.txt python3 -m tritonnorm bench --suite fused --dtype bfloat16 --out "$R";;
    probe)
      stage probe log.txt python3 perf/probe.py --budget-s $((PROBE_S - 40)) --out "$R/probe.csv";;
    tune)
      TRITONNORM_CACHE_DIR="$R/tables" stage tune log.txt python3 -m tritonnorm tune --quick;;
    summary)
      title="$(head -2 "$OUT/env.txt" | tail -1 | cut -d, -f1), $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
      stage summary log.txt python3 perf/summary.py "$R" --title "$title" --dest "$OUT/summary.md";;
  esac
done
for f in bench.csv models.csv profile.csv; do
  [ -f "$R/$f" ] && mv "$R/$f" "$OUT/$f"
done
tar czf "$OUT/results.tgz" -C "$R" . && rm -rf "$R"
echo "total: $((SECONDS - t_start)) s" | tee -a "$OUT/env.txt"
exit $status
