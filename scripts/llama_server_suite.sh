#!/usr/bin/env bash
# Runs llama-server's own server test suite (tools/server/tests of the llama.cpp source in
# the pinned llama-cpp-python sdist) against a server binary, with the bundled model in place
# of the suite's test models (see scripts/llama_server_suite_plugin.py).
#
#   scripts/llama_server_suite.sh llama-server  [pytest args]   # llama.cpp's own server
#   scripts/llama_server_suite.sh ferrousforge  [pytest args]   # ferrousforge-server
#
# Results: .cache/llama-server-suite/<target>.xml (JUnit); compare the two with
# scripts/llama_server_suite_report.py. Slow tests (-m slow) are left out, as tests.sh does.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:?usage: $0 llama-server|ferrousforge [pytest args]}"; shift
version="$(grep -oP 'llama-cpp-python==\K[0-9.]+' "$here/pyproject.toml" | head -1)"
sdist="$here/.cache/sdist/llama_cpp_python-$version"
out="$here/.cache/llama-server-suite"
if [[ ! -d "$sdist" ]]; then
  mkdir -p "$here/.cache/sdist"
  python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$here/.cache/sdist"
  tar xzf "$sdist.tar.gz" -C "$here/.cache/sdist"
fi
venv="${SUITE_VENV:-$out/venv}"  # the suite's own requirements, apart from ours
if [[ ! -x "$venv/bin/pytest" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$sdist/vendor/llama.cpp/tools/server/tests/requirements.txt"
fi
py="${SUITE_PYTHON:-$here/.venv/bin/python}"  # SUITE_PYTHON: run another checkout's code
mkdir -p "$out"
case "$target" in
  llama-server) "$here/bench/build_peers.sh" >/dev/null; bin="$here/.cache/llama-tools/bin/llama-server" ;;
  ferrousforge)
    [[ -n "${SUITE_PYTHON:-}" ]] || make -C "$here" --no-print-directory install >/dev/null
    # The suite starts one executable with llama-server's flags: ferrousforge-server.
    bin="$out/ferrousforge-server"
    printf '#!/bin/sh\nPYTHONPATH=%q exec %q -m ferrousforge.cli.llama_server "$@"\n' \
      "${PYTHONPATH:-}" "$py" > "$bin"
    chmod +x "$bin" ;;
  *) echo "unknown target: $target" >&2; exit 2 ;;
esac
# A fresh copy each run: the tests write into their own tmp/ folder.
rm -rf "$out/tests-$target"
cp -r "$sdist/vendor/llama.cpp/tools/server/tests" "$out/tests-$target"
cp "$here/scripts/llama_server_suite_plugin.py" "$out/tests-$target/"
model="${SUITE_MODEL:-$("$py" -c 'from ferrousforge.models.default_model import default_model_path; print(default_model_path())')}"
cd "$out/tests-$target"
status=0
PORT="${PORT:-18080}" SUITE_MODEL="$model" LLAMA_SERVER_BIN_PATH="$bin" PYTHONPATH=. \
  "$venv/bin/pytest" -p llama_server_suite_plugin -m "not slow" -q -rN \
  -n "${PYTEST_WORKERS:-0}" --junitxml="$out/$target.xml" "$@" || status=$?
echo "JUnit results: $out/$target.xml"
exit "$status"
