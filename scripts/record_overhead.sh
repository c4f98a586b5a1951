#!/usr/bin/env bash
# The recording-overhead measurements in one go (on the GPU machine, or on a CPU with the CPU
# presets): builds accdump._C if needed, then the host cost per module call, the breakdown by
# part (wall and CPU time of the calling thread), the overhead table and, on CUDA, the same at
# seq 4096 with the device time by kernel group. Logs and JSON under $OUT (or ./record_out).
#
#   bash scripts/record_overhead.sh          # ~5 minutes on the H100 after a ~2.5 minute build
set -uo pipefail
OUT=${OUT:-record_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
if ! $PY -c 'import torch, accdump._C' 2>/dev/null; then
  ( time $PY -m pip install --no-build-isolation --no-deps -e . ) > "$OUT/build.log" 2>&1 \
    || { tail -50 "$OUT/build.log"; exit 1; }
fi
cuda=$($PY -c 'import torch; print(int(torch.cuda.is_available()))')
run() {  # run NAME ARGS...: one benchmark, its log under $OUT, its table on stdout
  local name=$1
  shift
  $PY "$@" > "$OUT/$name.log" 2>&1 || echo "$name failed (see $OUT/$name.log)"
  tail -${TAIL:-16} "$OUT/$name.log"
}
run profile_capture benchmarks/profile_capture.py
run record_breakdown benchmarks/record_breakdown.py --rounds "${ROUNDS:-7}" --json "$OUT/record_breakdown.json"
run bench_record benchmarks/bench_record.py --reps "${REPS:-20}" --skip-op --json "$OUT/bench_record.json"
if [ "$cuda" = "1" ]; then
  run bench_record_seq4096 benchmarks/bench_record.py --seq 4096 --stats-only --json "$OUT/bench_record_seq4096.json"
  run profile_kernels benchmarks/profile_kernels.py --seq 4096 --json "$OUT/profile_kernels_seq4096.json"
fi
