#!/usr/bin/env bash
# One-shot CUDA check on a GPU machine: build libllama with CUDA from the carried,
# trimmed llama.cpp source (.gpu/llama.cpp, the version pinned by llama-cpp-python
# 0.3.36), then run gpu/check_cuda.py against it in dynamic library mode.
#
#   bash gpu/run_check.sh            # needs .gpu/ (see gpu/README.md), nvcc, cmake, ninja
#
# Env: GGML_CUDA_FA=ON to compile the flash-attention kernels (off by default: the
# build is much shorter), CUDA_ARCH (default 90 = H100/H200), BUILD_DIR (/tmp/build),
# JOBS (nproc), PYTHON (python3), OUT (logs and JSON are written there when set),
# SKIP_BUILD=1 (use the libllama already in BUILD_DIR).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-/tmp/build}"
CUDA_ARCH="${CUDA_ARCH:-90}"
FA="${GGML_CUDA_FA:-OFF}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 16)}"
PYTHON="${PYTHON:-python3}"
LOGDIR="${OUT:-/tmp/ferrousforge-gpu-check}"
mkdir -p "$LOGDIR"
T_START=$(date +%s)

say() { echo "[run_check $(date -u +%H:%M:%S) +$(( $(date +%s) - T_START ))s] $*"; }
die() { say "FAIL: $*"; exit 1; }

say "repo $REPO; logs in $LOGDIR"
for p in .gpu/llama.cpp/CMakeLists.txt .gpu/llama.cpp/ggml/src/ggml-cuda/CMakeLists.txt \
         .gpu/pylib/llama_cpp/llama_cpp.py .gpu/pylib/diskcache/__init__.py .gpu/tiny-llama.gguf; do
  [[ -e "$REPO/$p" ]] || die "$p missing: run this with carry [\".gpu\"] (see gpu/README.md)"
done

# ---- environment ------------------------------------------------------------------
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin /usr/local/cuda-12/bin; do
    [[ -x "$d/nvcc" ]] && export PATH="$d:$PATH" && break
  done
fi
command -v nvcc >/dev/null 2>&1 || die "nvcc not found"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || true
  nvcc --version | tail -2
  cmake --version | head -1
  echo "ninja $(ninja --version 2>&1)"
  "$PYTHON" --version
  echo "cores: $(nproc)"
} 2>&1 | tee "$LOGDIR/env.txt"

export PYTHONPATH="$REPO/.gpu/pylib:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
# Fail fast (before the long build) if the Python side cannot import.
"$PYTHON" - <<'EOF' || die "python imports (see above)"
import numpy, jinja2, typing_extensions, diskcache  # what llama_cpp's __init__ pulls in
import ferrousforge.inference.backends.llama_cpp, ferrousforge.api.request
print("python imports ok: numpy", numpy.__version__, "jinja2", jinja2.__version__)
EOF

# ---- build libllama with CUDA ---------------------------------------------------------
BUILD_S=0
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
GEN=(); command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
# The system compiler, not the host's default CXX: on the lent CUDA hosts that is a wrapper
# whose links carry libstdc++ statically, and the second C++ runtime in the Python process
# crashes llama.cpp's tokenizer (std::regex) while the vocabulary loads. KEEP_CXX=1 keeps it.
if [[ "${KEEP_CXX:-0}" != 1 && -x /usr/bin/gcc && -x /usr/bin/g++ ]]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
fi
say "compilers: CC=${CC:-default} CXX=${CXX:-default} CUDAHOSTCXX=${CUDAHOSTCXX:-default}"
say "configure (CUDA arch $CUDA_ARCH, GGML_CUDA_FA=$FA)"
T0=$(date +%s)
cmake -S "$REPO/.gpu/llama.cpp" -B "$BUILD_DIR" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
  -DGGML_CUDA_FA="$FA" -DGGML_CUDA_FA_ALL_QUANTS=OFF -DGGML_CUDA_COMPRESSION_MODE=none \
  -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_CCACHE=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
  > "$LOGDIR/configure.log" 2>&1 || { tail -40 "$LOGDIR/configure.log"; die "cmake configure"; }
grep -E "CUDA|Including|NCCL" "$LOGDIR/configure.log" | head -12
say "configure took $(( $(date +%s) - T0 ))s; building target llama with -j $JOBS"
T0=$(date +%s)
cmake --build "$BUILD_DIR" -j "$JOBS" --target llama > "$LOGDIR/build.log" 2>&1
RC=$?
BUILD_S=$(( $(date +%s) - T0 ))
if [[ $RC -ne 0 ]]; then
  grep -E "error|Error" "$LOGDIR/build.log" | head -30
  tail -20 "$LOGDIR/build.log"
  die "build failed after ${BUILD_S}s"
fi
say "BUILD OK in ${BUILD_S}s"
fi

LIBDIR="$(dirname "$(find "$BUILD_DIR" -name 'libllama.so' -print -quit)")"
[[ -f "$LIBDIR/libllama.so" ]] || die "libllama.so not found under $BUILD_DIR"
ls -la "$LIBDIR"/lib*.so* | tee "$LOGDIR/libs.txt"
[[ -e "$LIBDIR/libggml-cuda.so" ]] || say "WARNING: no libggml-cuda.so next to libllama.so"
# The ggml libraries sit next to libllama (RPATH covers it; LD_LIBRARY_PATH is a belt).
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$LIBDIR/libggml-cuda.so" 2>&1 | grep -E "cuda|cublas|not found" | tee -a "$LOGDIR/libs.txt"

# ---- the C++ runtime ------------------------------------------------------------------------
# A compiler outside the system (e.g. /opt/gcc) links against its own libstdc++, but Python
# (and numpy before libllama) load the system's: the first vocab load then segfaulted in
# llama.cpp's tokenizer (std::regex). Probe, and run with the compiler's libstdc++ if needed.
export FERROUSFORGE_LLAMA_LIB="$LIBDIR"
CXX_BIN="$(grep -oP '^CMAKE_CXX_COMPILER:\w+=\K.*' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null || echo c++)"
CXX_STDLIB="$("$CXX_BIN" -print-file-name=libstdc++.so.6 2>/dev/null || true)"
say "C++ compiler $CXX_BIN, its libstdc++: ${CXX_STDLIB:-?}; libllama resolves: $(ldd "$LIBDIR/libllama.so" | grep -o 'libstdc++[^ ]* => [^ ]*')"
OWN_RT="$("$PYTHON" -c 'import sys; from pathlib import Path
from ferrousforge.inference.backends.llama_cpp.cxx_runtime import libraries_with_own_runtime
print(" ".join(p.name for p in libraries_with_own_runtime(Path(sys.argv[1]))))' "$LIBDIR/libllama.so" 2>&1)"
say "libraries with their own C++ runtime: ${OWN_RT:-none}"
probe() { timeout 30 "$PYTHON" -X faulthandler "$REPO/gpu/probe_load.py" "$REPO/.gpu/tiny-llama.gguf" "$1" > "$LOGDIR/probe-$1.log" 2>&1; }
if ! probe vocab; then
  say "vocab-only load crashed (exit $?) with the default libstdc++"
  tail -8 "$LOGDIR/probe-vocab.log"
  if [[ -f "$CXX_STDLIB" ]]; then
    export LD_LIBRARY_PATH="$(dirname "$(readlink -f "$CXX_STDLIB")"):$LD_LIBRARY_PATH"
    if probe vocab; then say "vocab-only load OK with LD_LIBRARY_PATH=$LD_LIBRARY_PATH";
    else say "still crashes with the compiler's libstdc++"; tail -8 "$LOGDIR/probe-vocab.log"; fi
  fi
else
  say "vocab-only load OK"
fi

# ---- the Python check -------------------------------------------------------------------
say "running gpu/check_cuda.py (FERROUSFORGE_LLAMA_LIB=$LIBDIR)"
T0=$(date +%s)
timeout 240 "$PYTHON" -X faulthandler "$REPO/gpu/check_cuda.py" --model "$REPO/.gpu/tiny-llama.gguf" \
  --out "$LOGDIR" --threads 4 2>&1 | grep -v -E "^[0-9-]+ [0-9:,]+ DEBUG "
CHECK_RC=${PIPESTATUS[0]}
say "check took $(( $(date +%s) - T0 ))s, exit $CHECK_RC; build ${BUILD_S}s; total $(( $(date +%s) - T_START ))s"
if (( CHECK_RC > 128 )); then
  # Killed by a signal: narrow it down with plain bindings, one step per process.
  say "diagnostics: ulimit -s $(ulimit -s); gdb: $(command -v gdb || echo none)"
  for s in vocab cpu gpu tokenize-gpu; do
    timeout 30 "$PYTHON" -X faulthandler "$REPO/gpu/probe_load.py" "$REPO/.gpu/tiny-llama.gguf" "$s" 2>&1 | tail -12
    say "probe $s exit ${PIPESTATUS[0]}"
  done
  if command -v gdb >/dev/null 2>&1; then
    timeout 90 gdb -q -batch -ex run -ex bt -ex "info threads" --args "$PYTHON" \
      "$REPO/gpu/check_cuda.py" --model "$REPO/.gpu/tiny-llama.gguf" --threads 4 2>&1 \
      | grep -v -E "DEBUG|New Thread|exited" | tail -60
  fi
fi
[[ $CHECK_RC -eq 0 ]] && say "RESULT: PASS" || say "RESULT: FAIL"
exit "$CHECK_RC"
