#!/usr/bin/env bash
# FerrousForge vs llama-server vs llama-cpp-python's server, same model, threads,
# context and client, in one run. Also llama-batched-bench (llama.cpp's own
# ceiling for the engine bench's shapes) for reference.
#
#   bench/compare.sh                      # default model, 2 threads, concurrency 1,2,4,8
#   MODEL=x.gguf THREADS=4 CONCURRENCY=1,4 REQUESTS=8 ROUNDS=1 bench/compare.sh
#   SKIP=llama-cpp-python bench/compare.sh   # leave a server out (comma-separated names)
#   WORKLOAD=repetitive bench/compare.sh     # fresh (default) | repetitive | returning
#
# Prints every server's figures, then their ratios to llama-server level by level
# (for WORKLOAD=returning also the second round's TTFT, "again").
#
# Results: bench/results/<UTC time>/ (gitignored): serve.json, serve.png, serve.txt,
# batched-bench.txt, versions.txt and each server's log.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PY="${PY:-$root/.venv/bin/python}"
THREADS="${THREADS:-2}"
PARALLEL="${PARALLEL:-8}"
CTX="${CTX:-4096}"                # KV cells shared by all slots (unified), for every server
CONCURRENCY="${CONCURRENCY:-1,2,4,8}"
REQUESTS="${REQUESTS:-0}"         # per level; 0: 2 x concurrency (at least 4)
ROUNDS="${ROUNDS:-3}"             # each level this many times, servers alternating
MAX_TOKENS="${MAX_TOKENS:-128}"
PROMPT_TOKENS="${PROMPT_TOKENS:-128}"
SKIP="${SKIP:-}"
WORKLOAD="${WORKLOAD:-fresh}"     # fresh | repetitive | returning (bench/README.md)
MODEL="${MODEL:-$("$PY" -c 'from ferrousforge.models.default_model import default_model_path as d; print(d())')}"
out="$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
tools="$root/.cache/llama-tools/bin"
export LD_LIBRARY_PATH="$tools${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

"$root/bench/build_peers.sh" > "$out/build_peers.log" 2>&1 || {
  echo "building the peers failed: see $out/build_peers.log" >&2; exit 1; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_ready() {  # name url pid
  for _ in $(seq 1 240); do
    if curl -sf "$2/v1/models" > /dev/null 2>&1; then return 0; fi
    kill -0 "$3" 2>/dev/null || { echo "$1 exited: see $out/$1.log" >&2; return 1; }
    sleep 0.5
  done
  echo "$1 did not become ready in 120 s" >&2; return 1
}

urls=()
start() {  # name, then the command
  local name="$1"; shift
  local port; port="$(free_port)"
  "$@" --port "$port" > "$out/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  if wait_ready "$name" "http://127.0.0.1:$port" "$pid"; then
    urls+=(--url "$name=http://127.0.0.1:$port")
  else
    kill "$pid" 2>/dev/null || true
  fi
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "model: $MODEL"
  echo "threads=$THREADS parallel=$PARALLEL ctx=$CTX concurrency=$CONCURRENCY max_tokens=$MAX_TOKENS prompt_tokens~$PROMPT_TOKENS workload=$WORKLOAD"
  echo "llama-cpp-python: $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
  echo "llama.cpp tools: $("$tools/llama-server" --version 2>&1 | grep -m1 version || true)"
  echo "ferrousforge: $(git -C "$root" describe --always --dirty)"
} | tee "$out/versions.txt"

# llama-cpp-python's server needs its [server] extra's pure-Python packages (the `bench`
# extra of pyproject.toml); install only those, never llama-cpp-python itself.
if ! skipped llama-cpp-python && ! "$PY" -c 'import sse_starlette, starlette_context, yaml' 2>/dev/null; then
  "$PY" -m pip install --quiet 'sse-starlette>=1.6.1' 'starlette-context>=0.3.6,<0.4' 'PyYAML>=5.1' \
    || { echo "could not install llama-cpp-python's server deps: skipping it" >&2; SKIP="$SKIP,llama-cpp-python"; }
fi

# The servers idle while another is measured: the client runs them one at a time.
skipped llama-server || start llama-server "$tools/llama-server" -m "$MODEL" -t "$THREADS" \
  -tb "$THREADS" -c "$CTX" -np "$PARALLEL" --host 127.0.0.1 --no-webui
skipped llama-cpp-python || start llama-cpp-python "$PY" -m llama_cpp.server --model "$MODEL" \
  --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX" --host 127.0.0.1
skipped ferrousforge || start ferrousforge "$root/.venv/bin/ferrousforge" serve --model "$MODEL" \
  --threads "$THREADS" --parallel "$PARALLEL" --ctx-size "$CTX" --host 127.0.0.1

if [[ ${#urls[@]} -eq 0 ]]; then echo "no server started" >&2; exit 1; fi
rc=0
baseline=()
[[ " ${urls[*]} " == *" llama-server="* ]] && baseline=(--baseline llama-server)
"$PY" -m ferrousforge.bench.cli serve "${urls[@]}" --concurrency "$CONCURRENCY" \
  --requests "$REQUESTS" --rounds "$ROUNDS" --max-tokens "$MAX_TOKENS" --prompt-tokens "$PROMPT_TOKENS" \
  --workload "$WORKLOAD" "${baseline[@]}" \
  --json "$out/serve.json" --plot "$out/serve.png" | tee "$out/serve.txt" || rc=$?
cleanup; pids=()

if ! skipped batched-bench; then
  # -no-kvu: one KV stream per sequence, as both servers keep per slot; batched-bench
  # splits -c evenly between its 16 streams, so each holds one prompt + generation.
  echo; echo "llama-batched-bench (llama.cpp's ceiling for these shapes, no HTTP, no sampling):"
  "$tools/llama-batched-bench" -m "$MODEL" -t "$THREADS" -tb "$THREADS" \
    -c "$((16 * (PROMPT_TOKENS + MAX_TOKENS)))" -b 512 -ub 512 \
    -npp "$PROMPT_TOKENS" -ntg "$MAX_TOKENS" -npl 1,2,4,8,16 -no-kvu 2>&1 \
    | grep '^|' | tee "$out/batched-bench.txt"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/versions.txt"
echo "results in $out"
exit "$rc"
