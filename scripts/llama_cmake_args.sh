#!/usr/bin/env bash
# Prints the CMAKE_ARGS FerrousForge builds llama.cpp with.
# Why not -march=native: on some VMs the CPU advertises AMX but executing
# `tilezero` raises SIGILL, so we never enable AMX and name every other ISA
# extension explicitly from /proc/cpuinfo. A user's own CMAKE_ARGS win.
# GGML_RPC builds libggml-rpc (the RPC backend behind `ferrousforge
# rpc-worker` and --rpc); RDMA stays off (it needs libibverbs).
set -euo pipefail
if [[ -n "${CMAKE_ARGS:-}" ]]; then
  echo "$CMAKE_ARGS"
  exit 0
fi
args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
rpc="-DGGML_RPC=ON -DGGML_RPC_RDMA=OFF"
args+=" $rpc"
arch=$(uname -m)
if [[ "$arch" == "x86_64" && -r /proc/cpuinfo ]]; then
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  has() { [[ "$flags" == *" $1 "* ]]; }
  on() { if has "$1"; then echo ON; else echo OFF; fi; }
  args+=" -DGGML_SSE42=$(on sse4_2) -DGGML_AVX=$(on avx) -DGGML_AVX2=$(on avx2)"
  args+=" -DGGML_BMI2=$(on bmi2) -DGGML_FMA=$(on fma) -DGGML_F16C=$(on f16c)"
  args+=" -DGGML_AVX_VNNI=$(on avx_vnni) -DGGML_AVX512=$(on avx512f)"
  args+=" -DGGML_AVX512_VBMI=$(on avx512vbmi) -DGGML_AVX512_VNNI=$(on avx512_vnni)"
  args+=" -DGGML_AVX512_BF16=$(on avx512_bf16)"
elif [[ "$arch" != "x86_64" ]]; then
  # Other architectures have no AMX trap: keep llama.cpp's native tuning.
  args="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF $rpc"
fi
echo "$args"
