"""Batched decode with one KV stream per sequence vs one unified pool, same cells.

Why --ctx-size 0 keeps streams wherever every slot gets the training context, and pools
only when a memory budget caps it (docs/server.md, "Memory: estimates and shared
weights"): in a pool every sequence's attention runs over the cells of all of them.
Eight sequences of P random prompt tokens each generate 64 tokens (greedy, ignore_eos,
prefix and host caches off), decoded together; the two layouts alternate, ROUNDS times.

    .venv/bin/python bench/kv_layout.py 128,1536 3      # prompt lengths, rounds
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import BackendConfig, BackendInput
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend
from ferrousforge.models.default_model import default_model_path

N_SEQ, N_CTX, GEN = 8, 14336, 64


async def main(prompt_lengths: list[int], rounds: int) -> None:
    backend = LlamaCppBackend()
    common = dict(context_size=N_CTX, max_parallel=N_SEQ, prefix_cache=False)
    handles = {
        unified: await backend.load_model(
            default_model_path(),
            BackendConfig(
                num_threads=2, cache_ram_mib=0, draft_max=0, kv_unified=unified, **common
            ),
        )
        for unified in (False, True)
    }
    opts = InferenceOptions(temperature=0, max_tokens=GEN, ignore_eos=True)
    rng = random.Random(1)
    walls: dict[tuple[int, bool], list[float]] = {}
    for p in prompt_lengths:
        prompts = [
            BackendInput.Tokens([1000 + i] + [rng.randrange(100, 40000) for _ in range(p - 1)])
            for i in range(N_SEQ)
        ]
        for r in range(rounds):
            for unified in (False, True) if r % 2 == 0 else (True, False):
                t0 = time.perf_counter()
                await backend.infer_batch(handles[unified], prompts, opts)
                walls.setdefault((p, unified), []).append(time.perf_counter() - t0)
    for (p, unified), runs in sorted(walls.items()):
        layout = "pool   " if unified else "streams"
        each = ", ".join(f"{w:.2f}" for w in runs)
        median = statistics.median(runs)
        print(f"{N_SEQ} x {p:5d}-token prompts + {GEN}: {layout} median {median:6.2f} s ({each})")
    for h in handles.values():
        await backend.unload_model(h)


if __name__ == "__main__":
    lengths = [int(x) for x in sys.argv[1].split(",")] if len(sys.argv) > 1 else [128, 1536]
    asyncio.run(main(lengths, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
