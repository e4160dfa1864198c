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
# OUT_DIR receives six files (the device tool returns at most eight): status.txt, environment.txt,
# pytest-gpu.txt, bench-summary.md, bench-summary.json and check.tar.gz (every log, JUnit XML and
# per-part record). Missing Python packages are installed from ./.whl when it exists
# (benchmarks/gpu_wheels.sh builds it). Without CUDA it prints one line and exits 2, having run
# and written nothing; without hybridsim's dependencies, one line and exit 3.
# GPU_CHECK_CPU_DRY_RUN=1 runs the whole flow on the CPU at tiny sizes (about 2 minutes).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-$ROOT/gpu-check-out}}"
PY="${PYTHON:-python3}"
TEST_TIMEOUT="${GPU_TEST_TIMEOUT:-210}"
BENCH_BUDGET="${GPU_BENCH_BUDGET:-240}"

# GPU_CHECK_CPU_DRY_RUN=1: the same flow on the CPU at tiny sizes, to check this script itself
DRY="${GPU_CHECK_CPU_DRY_RUN:-0}"
BENCH_ARGS=()
if [ "$DRY" = 1 ]; then
    export HYBRIDSIM_GPU_TEST_DEVICE=cpu
    BENCH_ARGS=(--device cpu --tiny --modes eager bf16 --repeats 2)
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device ($PY: torch.cuda.is_available() is False or torch is missing); nothing run" >&2
    exit 2
fi

cd "$ROOT"
# hybridsim importable without an install; deterministic cuBLAS for the bit-for-bit resume test
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$ROOT/.whl" ] && ls "$ROOT"/.whl/*.whl > /dev/null 2>&1; then
    SITE="$(mktemp -d)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
        "$ROOT"/.whl/*.whl > /dev/null 2>&1 && export PYTHONPATH="$PYTHONPATH:$SITE"
fi
missing=$("$PY" -c "
import importlib.util as u
need = ['hydra', 'omegaconf', 'h5py', 'rich', 'matplotlib', 'numpy', 'pytest']
print(' '.join(n for n in need if u.find_spec(n) is None))")
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python packages: $missing (run benchmarks/gpu_wheels.sh here and carry .whl)" >&2
    exit 3
fi
export CUBLAS_WORKSPACE_CONFIG=:4096:8 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" PYTHONUNBUFFERED=1

mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK" ${SITE:+"$SITE"}' EXIT
start=$(date +%s)
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    git rev-parse HEAD 2>/dev/null || echo "no git"
    nvidia-smi 2>&1 || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU (dry run)')"
} > "$WORK/environment.txt" 2>&1

echo "[gpu_check] pytest -m gpu (<= ${TEST_TIMEOUT} s)"
timeout --kill-after=10 "$TEST_TIMEOUT" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    tests/test_gpu.py --junitxml="$WORK/pytest-gpu.xml" > "$WORK/pytest-gpu.txt" 2>&1
rc_tests=$?
tail -n 5 "$WORK/pytest-gpu.txt"

echo "[gpu_check] gpu_bench.py (<= ${BENCH_BUDGET} s)"
timeout --kill-after=10 "$((BENCH_BUDGET + 30))" "$PY" benchmarks/gpu_bench.py \
    --out "$WORK/bench" --budget "$BENCH_BUDGET" "${BENCH_ARGS[@]}" > "$WORK/gpu-bench.txt" 2>&1
rc_bench=$?
cat "$WORK/bench/summary.md" 2>/dev/null || tail -n 20 "$WORK/gpu-bench.txt"

elapsed=$(( $(date +%s) - start ))
printf 'tests exit %s, bench exit %s, %s s\n' "$rc_tests" "$rc_bench" "$elapsed" > "$WORK/status.txt"
cat "$WORK/status.txt"
cp "$WORK/status.txt" "$WORK/environment.txt" "$WORK/pytest-gpu.txt" "$OUT_DIR/"
cp "$WORK/bench/summary.md" "$OUT_DIR/bench-summary.md" 2>/dev/null || true
cp "$WORK/bench/summary.json" "$OUT_DIR/bench-summary.json" 2>/dev/null || true
tar -czf "$OUT_DIR/check.tar.gz" -C "$WORK" .
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ]
