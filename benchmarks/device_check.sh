#!/usr/bin/env bash
# The GPU check, for a machine with a GPU and no network (Python 3.12, torch + CUDA preinstalled,
# with cmake, ninja, pybind11, scikit-build-core, pytest, hypothesis and pytest-benchmark; any
# missing wheel can be carried in .whl/, and the CUTLASS headers must be: before the run,
# `pip download --no-deps nvidia-cutlass==4.2.0.0 -d .whl`, else the Hopper FP8 GEMM is not built
# and the script stops). Builds with CUDA on, runs the CUDA cases of the kernel
# tests (tests/ops: every kernel against its reference on the GPU; the CPU suite runs in CI) and the
# GPU benchmarks, and writes everything to $OUT (default ./device-out).
# Finishes in a few minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/lmk-site .whl/*.whl && export PYTHONPATH=/tmp/lmk-site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

arch=$(python3 -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}a' if m >= 9 else f'{m}{n}')")
cmake -S . -B build-device -G Ninja -DLMK_CUDA=on -DLMK_CUDA_ARCHITECTURES="$arch" \
  -DPython_EXECUTABLE="$(command -v python3)" 2>&1 | tee "$OUT/build.log" | tail -n 3
cmake --build build-device 2>&1 | tee -a "$OUT/build.log" | tail -n 3 || exit 1
if [[ $arch == 90a ]] && ! grep -q "LMK_WITH_SM90_GEMM=1" build-device/build.ninja; then
  echo "no CUTLASS headers: carry the nvidia-cutlass wheel in .whl/" | tee -a "$OUT/build.log"; exit 1
fi
cp build-device/_C*.so python/lmkernels/
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}

python3 -m lmkernels.cli info | tee "$OUT/info.txt"
timeout 300 python3 -m pytest tests/ops -q -k "cuda or hopper" 2>&1 | tee "$OUT/tests.log" | tail -n 15
if [[ ${PIPESTATUS[0]} -ne 0 ]]; then
  # The failed cases again under compute-sanitizer, which names an out-of-bounds or misaligned
  # access and its kernel: what a failure in a first run on a GPU most often is.
  timeout 150 compute-sanitizer --tool memcheck --print-limit 10 python3 -m pytest tests/ops -q -x --lf \
    -k "cuda or hopper" 2>&1 | tee "$OUT/memcheck.log" | tail -n 30
fi
timeout 200 python3 -m lmkernels.cli bench --device cuda --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt"
