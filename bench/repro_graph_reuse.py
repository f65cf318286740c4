"""Regression check: engine steps reuse llama.cpp's compute graph as raw decoding does.

Until 891135d, once a request had finished, a new one took the least recently used
slot, so a step's batch listed sequence ids out of order (e.g. 1..7, 0). With one KV
stream per sequence llama.cpp then split the step into two ubatches and rebuilt its
graph every decode (llama_perf_context().n_reused stopped growing): 20-35% slower
llama_decode at 2-8 sequences than raw. Now slots fill lowest-first and the batch is
in slot order; every case below should show about as many reuses as raw.

    .venv/bin/python bench/repro_graph_reuse.py
    LLAMA_GRAPH_RESULT_DEBUG=2 .venv/bin/python bench/repro_graph_reuse.py -v  # llama.cpp's view
"""

from __future__ import annotations

import asyncio
import logging
import sys

from ferrousforge.bench.engine_bench import EngineBenchConfig, _config, _engine_run, _Loaded
from ferrousforge.bench.prompts import token_prompts
from ferrousforge.inference.backends.llama_cpp.library import load_library
from ferrousforge.models.default_model import default_model_path


async def reuse_counts(prefix_cache: bool, warm_request: bool, n: int = 8) -> tuple[int, int]:
    """(engine graph reuses, raw graph reuses) over one run of n sequences x 64 tokens."""
    lib = load_library()
    cfg = EngineBenchConfig(model=default_model_path())
    config = _config(cfg, n, n * 256)
    config.prefix_cache = prefix_cache
    loaded = await _Loaded.open(cfg.model, config)
    try:
        if warm_request:  # one short request that finishes before the measured run
            await _engine_run(loaded.backend, loaded.handle, token_prompts(1, 8, 49152, seed=9), 4)
        prompts = token_prompts(n, 128, loaded.vocab.n_tokens, seed=1)
        eng, raw = loaded.engine.runner.ctx, loaded.raw_ctx  # type: ignore[attr-defined]
        e0, r0 = lib.llama_perf_context(eng.ptr).n_reused, lib.llama_perf_context(raw.ptr).n_reused
        loaded.raw.run(prompts, 64)
        await _engine_run(loaded.backend, loaded.handle, prompts, 64)
        return (
            lib.llama_perf_context(eng.ptr).n_reused - e0,
            lib.llama_perf_context(raw.ptr).n_reused - r0,
        )
    finally:
        await loaded.close()


async def main() -> None:
    for prefix_cache in (False, True):
        for warm in (False, True):
            e, r = await reuse_counts(prefix_cache, warm)
            print(
                f"prefix_cache={prefix_cache!s:5} earlier request finished={warm!s:5} "
                f"graph reuses over 63 generation steps: engine {e:3d}, raw {r:3d}"
            )


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG if "-v" in sys.argv else logging.WARNING)
    asyncio.run(main())
