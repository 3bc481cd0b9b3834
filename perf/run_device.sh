#!/usr/bin/env bash
# Everything a GPU session checks, in one call, results under $OUT (default perf/out):
#   the install, `tritonnorm check`, the test suite compiled for the GPU, and a quick
#   `tritonnorm bench` (CSV + PNG under $OUT/bench; $OUT/a/b/file is as deep as comes back).
# Usage on the device machine:  bash perf/run_device.sh
set -uo pipefail
OUT=${OUT:-perf/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
python3 -m tritonnorm check 2>&1 | tee "$OUT/check.txt"
check=${PIPESTATUS[0]}
timeout 420 python3 -m pytest -q -x -n 4 --durations=15 2>&1 | tee "$OUT/pytest.txt" | tail -40
tests=${PIPESTATUS[0]}
timeout 240 python3 -m tritonnorm bench --quick --out "$OUT/bench" 2>&1 | tee "$OUT/bench.txt" | tail -20
echo "check exit $check, pytest exit $tests" | tee -a "$OUT/env.txt"
[ "$check" = 0 ] && [ "$tests" = 0 ]
