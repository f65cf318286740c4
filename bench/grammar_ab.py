"""Grammar-constrained greedy decoding, paired in one process: the guard's shortlist (the
best-scoring tokens first, ff_sample's ``keep``) against constraining the whole vocabulary.

    .venv/bin/python bench/grammar_ab.py MODEL.gguf [--runs 5]

Alternating runs of 64 JSON-schema tokens each; prints each side's tokens/s median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from ferrousforge.api.json_schema import schema_to_gbnf
from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import AcceleratorType, BackendConfig, BackendInput
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend
from ferrousforge.inference.backends.llama_cpp.sampler import SamplerChain

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"enum": ["Paris", "Lima", "Oslo"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "city", "tags"],
}
SHORTLIST = SamplerChain._build


def whole_vocabulary(self: SamplerChain, *args: object) -> None:
    SHORTLIST(self, *args)
    self.best_k = 0  # the guard constrains every token, as before the shortlist


async def main(path: Path, runs: int) -> None:
    backend = LlamaCppBackend()
    config = BackendConfig(max_parallel=1, context_size=2048)
    lm = backend.load_model_sync(path, config, AcceleratorType.Cpu())
    opts = InferenceOptions(temperature=0, max_tokens=64, grammar=schema_to_gbnf(SCHEMA))
    prompt = BackendInput.Text("Describe a person as JSON.")
    rates: dict[str, list[float]] = {"shortlist": [], "whole": []}
    await backend.infer(lm.handle, prompt, opts)  # warm-up; the prompt is cached from here
    texts = set()
    for _ in range(runs):
        for mode, build in (("shortlist", SHORTLIST), ("whole", whole_vocabulary)):
            SamplerChain._build = build  # type: ignore[method-assign]
            t0 = time.perf_counter()
            out = await backend.infer(lm.handle, prompt, opts)
            rates[mode].append(out.usage.completion_tokens / (time.perf_counter() - t0))
            texts.add(out.text)
    SamplerChain._build = SHORTLIST  # type: ignore[method-assign]
    for mode, values in rates.items():
        runs_text = ", ".join(f"{v:.1f}" for v in values)
        print(f"{mode:9s} median {statistics.median(values):6.1f} tokens/s  ({runs_text})")
    ratio = statistics.median(rates["shortlist"]) / statistics.median(rates["whole"])
    print(f"shortlist / whole: {ratio:.2f}x; same text every run: {len(texts) == 1}")
    lm.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(main(args.model, args.runs))
