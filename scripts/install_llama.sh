#!/usr/bin/env bash
# Installs the pinned llama-cpp-python into the given venv, compiled with
# CPU flags that run on this machine (see llama_cmake_args.sh).
# Built wheels are cached under ~/.cache/ferrousforge/llama-wheels/<hash of
# version+flags+CPU>, so a change of flags never silently reuses pip's cached
# wheel, and a fresh clone on the same machine skips the compile.
# After installing, a one-token decode runs in a subprocess; if the cached
# library cannot run here (SIGILL, missing symbol) it is rebuilt once.
set -euo pipefail
py="${1:?usage: install_llama.sh VENV_PYTHON}"
here="$(cd "$(dirname "$0")/.." && pwd)"
version="$(grep -oP 'llama-cpp-python==\K[0-9.]+' "$here/pyproject.toml" | head -1)"
cmake_args="$("$here/scripts/llama_cmake_args.sh")"
cpu="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-8)"
key="$(printf '%s|%s|%s|%s' "$version" "$cmake_args" "$(uname -m)" "$cpu" | sha256sum | cut -c1-16)"
cache="${FERROUSFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrousforge}"
wheels="$cache/llama-wheels/$key"

build() {
  rm -rf "$wheels"
  echo "building llama-cpp-python $version (5-15 minutes on 2 cores) with CMAKE_ARGS=$cmake_args"
  mkdir -p "$wheels.tmp"
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$py" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$wheels.tmp" "llama-cpp-python==$version"
  mv "$wheels.tmp" "$wheels"
}

if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  build
fi
installed="$("$py" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)"
stamp="$("$py" -c 'import sys; print(sys.prefix)')/.llama-wheel-key"
if [[ "$installed" != "$version" || "$(cat "$stamp" 2>/dev/null)" != "$key" ]]; then
  "$py" -m pip install --no-deps --force-reinstall --quiet "$wheels"/llama_cpp_python-*.whl
  echo "$key" > "$stamp"
fi
# The bindings' own Python dependencies (typing-extensions, numpy, ...): the
# --no-deps reinstall above skips them, and the load check below needs them.
"$py" -m pip install --quiet "$wheels"/llama_cpp_python-*.whl
# Prove the library runs on this CPU (a SIGILL kills only the child).
rc=0; "$py" "$here/scripts/check_decode.py" || rc=$?
if (( rc == 3 )); then
  exit 1
elif (( rc != 0 )); then
  echo "the cached libllama cannot run here; rebuilding it once" >&2
  build
  "$py" -m pip install --no-deps --force-reinstall --quiet "$wheels"/llama_cpp_python-*.whl
  echo "$key" > "$stamp"
  "$py" "$here/scripts/check_decode.py"
fi
