#!/usr/bin/env bash
# Bounded fuzz run of the OpenAPI schema (`make fuzz`): schemathesis with a fixed seed against a
# real server on 127.0.0.1. Fails on any 5xx, or a response whose status, content type or body
# the schema does not declare, or schema-invalid data it accepts. FUZZ_EXAMPLES, FUZZ_SEED and
# FUZZ_PHASES override the defaults (add `coverage` for boundary cases: ~1,700 cases, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EXAMPLES=${FUZZ_EXAMPLES:-40}
SEED=${FUZZ_SEED:-8}
PHASES=${FUZZ_PHASES:-examples,fuzzing}
LOG=$(mktemp -t ferrousforge-fuzz.XXXXXX)
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"

# Small limits keep each generated request cheap: at most 8 tokens, 2 slots, a short queue.
"$PY" -m ferrousforge.cli.main serve --host 127.0.0.1 --port "$PORT" --threads 1 \
    --parallel 2 --ctx-size 1024 --max-waiting 4 --max-tokens-limit 8 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT

for _ in $(seq 300); do
    if "$PY" -c "import httpx, sys; sys.exit(httpx.get('$URL/health').status_code != 200)" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG"; exit 1; }
    sleep 0.2
done

start=$(date +%s)
status=0
"$(dirname "$PY")/schemathesis" run "$URL/openapi.json" \
    --seed "$SEED" --max-examples "$EXAMPLES" --workers 1 --no-shrink \
    --phases "$PHASES" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
    --request-timeout 60 --suppress-health-check all || status=$?
echo "fuzz: $(($(date +%s) - start)) s"
if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "fuzz: the server died"; tail -50 "$LOG"; exit 1
fi
if [ "$status" -ne 0 ]; then tail -30 "$LOG"; fi
rm -f "$LOG"
exit "$status"
