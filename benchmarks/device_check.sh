#!/usr/bin/env bash
# The GPU check, for a machine with a GPU and no network (Python 3.12, torch + CUDA preinstalled,
# with cmake, ninja, pybind11, pytest, pytest-timeout and hypothesis). The CUTLASS headers travel as
# a wheel: before the run, `pip download --no-deps nvidia-cutlass==4.2.0.0 -d .whl`, else the Hopper
# FP8 GEMM is not built and the script stops.
#
# Builds with CUDA on for the GPU's architecture alone, runs the CUDA cases of the kernel tests
# (tests/ops: every kernel against its reference on the GPU; the CPU suite runs in CI; a case runs
# when its test id says cuda or hopper, so a GPU-only test must say cuda in its name), one process
# per test file so that a sticky CUDA error stays in its file; reruns the first failure of each
# failing file under compute-sanitizer; then the GPU benchmarks. Everything goes to $OUT (default
# ./device-out) in at most 8 files. The benchmarks default to the full-size cases behind the open
# GPU targets (attention, word connector, dictionary, token divergence, FP8 GEMM); set LMK_BENCH_ARGS
# to change the benchmark's arguments (e.g. --quick for every family) and LMK_BENCH_TIMEOUT its time
# limit in seconds (default 240; rows printed before a timeout are kept); LMK_TESTS=0 skips the tests
# (a profiling run of unchanged kernels). Last, the tests of the kernels changed since the last GPU
# run go under compute-sanitizer's memcheck (LMK_MEMCHECK_TIMEOUT seconds each, three at once,
# default 90; 0 skips them). benchmarks/profile_cuda.py then tells where a case's time goes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$SECONDS
mark() { echo "[$((SECONDS - start)) s] $*" | tee -a "$OUT/env.txt"; }

site=/tmp/lmk-site
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$OUT/env.txt"
arch=$(python3 -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}a' if m >= 9 else f'{m}{n}')")
mark "configure for sm_$arch"
# No link-time optimisation: it only speeds up the CPU code, and costs a minute of link here.
cmake -S . -B build-device -G Ninja -DLMK_CUDA=on -DLMK_CUDA_ARCHITECTURES="$arch" \
  -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF -DLMK_CUTLASS_INCLUDE="$site/cutlass_library/source/include" \
  -DPython_EXECUTABLE="$(command -v python3)" >"$OUT/build.log" 2>&1 || { tail -n 30 "$OUT/build.log"; exit 1; }
cmake --build build-device -j "$(nproc)" >>"$OUT/build.log" 2>&1 || { grep -B2 -A8 "error" "$OUT/build.log" | head -n 60; exit 1; }
if [[ $arch == 90a ]] && ! grep -q "LMK_WITH_SM90_GEMM=1" build-device/build.ninja; then
  echo "no CUTLASS headers: carry the nvidia-cutlass wheel in .whl/" | tee -a "$OUT/build.log"; exit 1
fi
mark "built"
# How the module links libstdc++ (the GPU machine's toolchain once linked it statically).
{ readelf -d build-device/_C*.so | grep NEEDED; grep -m2 -o "LINK_FLAGS = .*\|LINK_LIBRARIES = .*" build-device/build.ninja; } >>"$OUT/env.txt"
cp build-device/_C*.so python/lmkernels/
cp build-device/_C*.so "$OUT/"
export PYTHONPATH=$PWD/python
python3 -m lmkernels.cli info | tee -a "$OUT/env.txt"

if [[ ${LMK_TESTS:-1} != 0 ]]; then
  mark "tests"
  # pytest-timeout, where installed, turns a hung kernel into one failed test.
  export per_test_limit=$(python3 -c "import pytest_timeout" 2>/dev/null && echo --timeout=60)
  export logs=/tmp/lmk-tests
  mkdir -p "$logs"
  ls tests/ops/test_*.py | xargs -P 9 -I{} sh -c 'log="$logs/$(basename {} .py).log"
    timeout 120 python3 -m pytest {} -q -p no:warnings $per_test_limit -rf -k "cuda or hopper" >"$log" 2>&1
    echo "exit $? {}" >>"$log"'
  for f in "$logs"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done >"$OUT/tests.log"
  grep -h "^exit\|passed\|failed" "$logs"/*.log | tee -a "$OUT/env.txt"
  mark "tests done"

  failing=$(grep -h "^FAILED" "$logs"/*.log | sed 's/^FAILED \([^ ]*\).*/\1/' | awk -F'::' '!seen[$1]++' | head -n 4)
  if [[ -n $failing ]]; then
    # compute-sanitizer names an out-of-bounds or misaligned access and its kernel: what a failure in
    # a first run on a GPU most often is.
    mark "memcheck: $failing"
    echo "$failing" | xargs -P 4 -I{} sh -c 'log="/tmp/mc-$(echo "{}" | md5sum | cut -c1-8).log"
      timeout 90 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest "{}" -q -x -p no:warnings >"$log" 2>&1
      echo "exit $? {}" >>"$log"'
    for f in /tmp/mc-*.log; do echo "=== $(tail -n 1 "$f")"; grep -v "^\s*$" "$f" | head -n 120; done >"$OUT/memcheck.log"
    mark "memcheck done"
  fi
fi

bench_args=${LMK_BENCH_ARGS:---filter attention,word_connector,dictionary,token_divergence,fp8_gemm}
mark "bench $bench_args"
# shellcheck disable=SC2086
timeout "${LMK_BENCH_TIMEOUT:-240}" python3 -m lmkernels.cli bench --device cuda $bench_args --json "$OUT/bench_cuda.json" \
  >"$OUT/bench_cuda.txt" 2>&1
tail -n 40 "$OUT/bench_cuda.txt"

# The kernels changed since the last GPU run, under memcheck whether or not their tests passed: an
# out-of-bounds write can pass a test. After the benchmarks, so that they come first;
# LMK_MEMCHECK_TIMEOUT=0 skips it. (2026-11-28 afternoon: the dictionary's eight-query lanes.)
memcheck_tests=("tests/ops/test_dictionary_score.py::test_every_query_count"
  "tests/ops/test_dictionary_score.py::test_row_table_matches_reference")
if [[ ${LMK_MEMCHECK_TIMEOUT:-90} != 0 ]]; then
  mark "memcheck of the new kernels"
  printf '%s\n' "${memcheck_tests[@]}" | xargs -P 3 -I{} sh -c 'log="/tmp/mcn-$(echo "{}" | md5sum | cut -c1-8).log"
    timeout "${LMK_MEMCHECK_TIMEOUT:-90}" compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest "{}" -q \
      -p no:warnings -k "cuda or hopper" >"$log" 2>&1
    echo "exit $? {}" >>"$log"'
  for f in /tmp/mcn-*.log; do echo "=== $(tail -n 1 "$f")"; grep -v "^\s*$" "$f" | tail -n 60; done >"$OUT/memcheck_new.log"
  grep -h "^exit\|ERROR SUMMARY\|passed\|failed" /tmp/mcn-*.log | tee -a "$OUT/env.txt"
fi
mark "done"
