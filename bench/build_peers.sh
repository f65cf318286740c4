#!/usr/bin/env bash
# Builds llama.cpp's own tools (llama-server, llama-bench, llama-batched-bench)
# from the llama.cpp source vendored in the pinned llama-cpp-python sdist,
# with the same CPU flags as our library. Output: .cache/llama-tools/bin.
# Never commit these binaries.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
version="$(grep -oP 'llama-cpp-python==\K[0-9.]+' "$here/pyproject.toml" | head -1)"
out="$here/.cache/llama-tools"
if [[ -x "$out/bin/llama-server" && -x "$out/bin/llama-batched-bench" && -x "$out/bin/llama-bench" ]]; then
  echo "llama.cpp tools already built in $out/bin"; exit 0
fi
src="$here/.cache/sdist"
mkdir -p "$src"
if [[ ! -d "$src/llama_cpp_python-$version" ]]; then
  python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$src"
  tar xzf "$src/llama_cpp_python-$version.tar.gz" -C "$src"
fi
cmake_args="$("$here/scripts/llama_cmake_args.sh") -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON"
# shellcheck disable=SC2086
cmake -S "$src/llama_cpp_python-$version/vendor/llama.cpp" -B "$out/build" -DCMAKE_BUILD_TYPE=Release $cmake_args
cmake --build "$out/build" -j "$(nproc)" --target llama-server llama-bench llama-batched-bench
mkdir -p "$out/bin"
cp "$out/build/bin/"* "$out/bin/" 2>/dev/null || true
ls "$out/bin"
