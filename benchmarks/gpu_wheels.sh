#!/usr/bin/env bash
# Wheels of hybridsim's dependencies that the lent GPU machine's image lacks (it has torch,
# numpy, h5py, rich, matplotlib, pytest; not Hydra), into ./.whl, for the device tool's `carry`.
# Run here, where pip reaches a registry; benchmarks/gpu_check.sh installs them there.
#
#   bash benchmarks/gpu_wheels.sh && echo /.whl/ >> .git/info/exclude
#   device run: carry [".whl"], command "bash benchmarks/gpu_check.sh $OUT"
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl \
    "hydra-core==1.3.*" "omegaconf==2.3.*"
# antlr4-python3-runtime 4.9.3 (omegaconf's parser) is published as a source archive only; it
# is pure Python, so a wheel built here installs anywhere
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
ls .whl
