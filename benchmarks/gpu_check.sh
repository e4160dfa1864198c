#!/usr/bin/env bash
# The prepared GPU check (issue 11): everything into one folder, at most ~8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu-check-out)
#
# 1. pytest -m gpu (tests/test_gpu.py): adjointness and gradient checks on CUDA in float64,
#    CPU = CUDA to rounding, train -> resume bit for bit under deterministic algorithms, the CLI
#    end to end with device=cuda (<= GPU_TEST_TIMEOUT s, default 210);
# 2. benchmarks/gpu_bench.py: paper-scale training steps, eager / torch.compile / bf16 autocast
#    on the networks, steps/s and peak memory, a 256^2 NS forward + backward of 100 steps
#    (<= GPU_BENCH_BUDGET s, default 240, each part under its own timeout).
# Without CUDA it prints one line and exits 2, having run nothing.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/gpu-check-out}}"
PY="${PYTHON:-python3}"
TEST_TIMEOUT="${GPU_TEST_TIMEOUT:-210}"
BENCH_BUDGET="${GPU_BENCH_BUDGET:-240}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device ($PY: torch.cuda.is_available() is False or torch is missing); nothing run" >&2
    exit 2
fi

mkdir -p "$OUT_DIR"
cd "$ROOT"
# hybridsim importable without an install; deterministic cuBLAS for the bit-for-bit resume test
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=:4096:8 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
start=$(date +%s)

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    git rev-parse HEAD 2>/dev/null || echo "no git"
    nvidia-smi 2>&1 || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(0))"
} > "$OUT_DIR/environment.txt" 2>&1

echo "[gpu_check] pytest -m gpu (<= ${TEST_TIMEOUT} s)"
timeout --kill-after=10 "$TEST_TIMEOUT" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    tests/test_gpu.py --junitxml="$OUT_DIR/pytest-gpu.xml" > "$OUT_DIR/pytest-gpu.txt" 2>&1
rc_tests=$?
tail -n 5 "$OUT_DIR/pytest-gpu.txt"

echo "[gpu_check] gpu_bench.py (<= ${BENCH_BUDGET} s)"
timeout --kill-after=10 "$((BENCH_BUDGET + 30))" "$PY" benchmarks/gpu_bench.py \
    --out "$OUT_DIR/bench" --budget "$BENCH_BUDGET" > "$OUT_DIR/gpu-bench.txt" 2>&1
rc_bench=$?
cat "$OUT_DIR/bench/summary.md" 2>/dev/null || tail -n 20 "$OUT_DIR/gpu-bench.txt"

elapsed=$(( $(date +%s) - start ))
printf 'tests exit %s, bench exit %s, %s s\n' "$rc_tests" "$rc_bench" "$elapsed" | tee "$OUT_DIR/status.txt"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ]
