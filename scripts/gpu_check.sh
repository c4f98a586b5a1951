#!/usr/bin/env bash
# On the GPU machine: build accdump._C against its torch, run every test (CUDA ones included)
# and the benchmarks; logs and JSON under $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' | tee -a "$OUT/gpu.txt"
( time python3 -m pip install --no-build-isolation --no-deps -e . ) > "$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
tail -3 "$OUT/build.log"
python3 -m accdump.cli.main selfcheck 2>&1 | tee "$OUT/selfcheck.log"
python3 -m pytest -q -ra -x ${PYTEST_ARGS:-tests} 2>&1 | tee "$OUT/pytest.log" | tail -25
if [ "${BENCH:-1}" = "1" ]; then
  python3 benchmarks/bench_ops.py --json "$OUT/bench_ops.json" ${BENCH_ARGS:-} > "$OUT/bench_ops.log" 2>&1
  python3 benchmarks/bench_record.py --json "$OUT/bench_record.json" > "$OUT/bench_record.log" 2>&1
  python3 benchmarks/bench_compare.py --json "$OUT/bench_compare.json" > "$OUT/bench_compare.log" 2>&1
  tail -30 "$OUT/bench_ops.log"; tail -12 "$OUT/bench_record.log"; tail -3 "$OUT/bench_compare.log"
fi
