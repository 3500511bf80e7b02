#!/usr/bin/env bash
# tests/gpu/run.sh - build torch-neat with the CUDA backend against the torch found here, then run
# the GPU checks (pytest tests/gpu), compute-sanitizer (memcheck, racecheck, initcheck) and the GPU
# benchmark. The checks and the sanitizers run once per rank-r path (NEAT_CUDA_RANK_PATH=cublas, the
# default, and fused: the shared-memory kernels of cuda/fused.cu, which also get synccheck). Meant for the lent GPU machine (never CI). Usage, from the repository root:
#
#   tests/gpu/run.sh [stage ...]      stages: build test sanitize bench (default: all four)
#
# Each stage's log goes to $OUT (default out/gpu); the script goes on after a failing stage and
# exits non-zero at the end if any failed. Environment knobs:
#   NEAT_CUDA_ARCHS   CUDA architectures to build (default: this GPU's, e.g. 90)
#   PYTEST_ARGS       extra pytest arguments (e.g. "-x -k graph")
#   BENCH_ARGS        extra benchmark arguments (e.g. "--quick")
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build test sanitize bench)
failed=()

has() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
step() { # step NAME command...: runs, logs to $OUT/NAME.log, records failure
  local name="$1"; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed+=("$name")
  return "$rc"
}

if has build; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  archs="${NEAT_CUDA_ARCHS:-$("$PY" -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}')")}"
  # No network there: no build isolation, no index. Warnings are CI's business, not this run's.
  step build "$PY" -m pip install --no-build-isolation --no-deps --no-index -v . \
    --config-settings=cmake.define.NEAT_CUDA=ON \
    --config-settings=cmake.define.NEAT_WERROR=OFF \
    --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES="$archs" \
    --config-settings=build-dir=build/gpu || { echo "build failed: stopping"; exit 1; }
  # the CUDA library must load (a CUDA major other than torch's is refused at configure time with
  # NEAT_CUDA=ON, and torch_neat warns and falls back to CPU if it fails to load anyway)
  step load "$PY" -c \
    "import sys, torch_neat; print('torch_neat HAS_CUDA =', torch_neat.HAS_CUDA); sys.exit(0 if torch_neat.HAS_CUDA else 1)"
fi

if has test; then
  # shellcheck disable=SC2086
  step pytest "$PY" -m pytest tests/gpu -q -rfE -p no:cacheprovider --junitxml="$OUT/pytest.xml" ${PYTEST_ARGS:-}
  # shellcheck disable=SC2086
  NEAT_CUDA_RANK_PATH=fused step pytest_fused "$PY" -m pytest tests/gpu -q -rfE -p no:cacheprovider \
    --junitxml="$OUT/pytest_fused.xml" ${PYTEST_ARGS:-}
fi

if has sanitize; then
  if command -v compute-sanitizer >/dev/null; then
    # No caching allocator: every workspace is its own allocation, so an overrun is caught.
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    step memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" tests/gpu/sanitize_smoke.py
    step racecheck compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" tests/gpu/sanitize_smoke.py
    # reads of device memory no one wrote (a workspace or output slice the kernels forget to fill)
    step initcheck compute-sanitizer --tool initcheck --error-exitcode 9 "$PY" tests/gpu/sanitize_smoke.py
    # the fused path: shared memory and barriers (racecheck: shared-memory hazards; synccheck: a
    # __syncthreads not every thread reaches)
    export NEAT_CUDA_RANK_PATH=fused
    for tool in memcheck racecheck synccheck initcheck; do
      step "${tool}_fused" compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" tests/gpu/sanitize_smoke.py
    done
    unset NEAT_CUDA_RANK_PATH PYTORCH_NO_CUDA_MEMORY_CACHING
  else
    echo "compute-sanitizer not found"; failed+=(sanitize)
  fi
fi

if has bench; then
  # shellcheck disable=SC2086
  step bench "$PY" benchmarks/gpu/bench_gpu.py --out "$OUT" ${BENCH_ARGS:-}
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED stages: ${failed[*]}"
  exit 1
fi
echo "all stages passed: ${stages[*]}"
