"""Speculative decoding (prompt lookup) on and off, interleaved, through the library.

    python bench/speculation.py [--levels 1,2,8] [--workload copy|fresh] [--rounds 3]
                                [--gen-tokens 128] [--draft-max 16] [--max-batch 8]

Loads the model once. Each round runs every level twice, speculation off then on (the
order alternates between rounds), each with its own fresh prompts, so the prefix cache
never helps. ``copy``: a prompt of generated code followed by "the same code again", whose
natural continuation copies it; ``fresh``: random English words, nothing to copy. Every
request generates exactly --gen-tokens (ignore_eos). Prints generated tokens per second
(all tokens / wall time from submit to the last token, prefill included) per mode and
level, the median over rounds, the on/off ratio, and the drafts accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import AcceleratorType, BackendConfig
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend
from ferrousforge.models.default_model import default_model_path

_COMMON = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father"
)
WORDS = _COMMON.split()
OPS = ["+", "-", "*", "//", "%"]


def copy_prompt(rng: random.Random, i: int) -> str:
    funcs = []
    for j in range(6):
        name = f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{i}_{j}"
        a, b = rng.sample(["x", "y", "z", "n", "k"], 2)
        body = f"    return {a} {rng.choice(OPS)} {b} * {rng.randrange(2, 99)}"
        funcs.append(f"def {name}({a}, {b}):\n{body}\n")
    code = "\n\n".join(funcs)
    return f"# Module {i}\n{code}\n\n# The same functions again, unchanged:\n\n" + funcs[0][:12]


def fresh_prompt(rng: random.Random, i: int) -> str:
    return f"Request {i}: " + " ".join(rng.choice(WORDS) for _ in range(120))


async def one_run(backend, lm, prompts: list[str], gen: int, draft_max: int) -> tuple[float, int]:
    opts = InferenceOptions(temperature=0, max_tokens=gen, ignore_eos=True, draft_max=draft_max)
    t0 = time.perf_counter()
    streams = [backend.submit(lm.handle, backend.tokenize(lm.handle, p), opts)[0] for p in prompts]

    async def drain(s) -> int:
        return sum([len(out.token_ids) async for out in s])

    counts = await asyncio.gather(*(drain(s) for s in streams))
    return sum(counts) / (time.perf_counter() - t0), sum(counts)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,2,8")
    ap.add_argument("--workload", choices=["copy", "fresh"], default="copy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--draft-max", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8, help="drafting while <= N generate")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    backend = LlamaCppBackend()
    cfg = BackendConfig(
        num_threads=args.threads,
        max_parallel=max(levels),
        context_size=max(levels) * 1024,
        draft_max=args.draft_max,
        draft_max_batch=args.max_batch,
    )
    lm = backend.load_model_sync(default_model_path(), cfg, AcceleratorType.Cpu())
    make = copy_prompt if args.workload == "copy" else fresh_prompt
    rng = random.Random(1)
    serial = iter(range(1, 1_000_000))
    stats = lm.engine.stats
    tps: dict[tuple[int, str], list[float]] = {}
    accepted: dict[int, list[tuple[int, int]]] = {}
    try:
        await one_run(backend, lm, [make(rng, next(serial))], 8, 0)  # warm-up
        for r in range(args.rounds):
            for n in levels:
                modes = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                for mode in modes:
                    prompts = [make(rng, next(serial)) for _ in range(n)]
                    d0, a0 = stats.draft_tokens, stats.draft_accepted_tokens
                    draft = 0 if mode == "off" else args.draft_max
                    rate, _ = await one_run(backend, lm, prompts, args.gen_tokens, draft)
                    tps.setdefault((n, mode), []).append(rate)
                    if mode == "on":
                        d, a = stats.draft_tokens - d0, stats.draft_accepted_tokens - a0
                        accepted.setdefault(n, []).append((d, a))
                    print(f"round {r} streams {n} {mode:3s}: {rate:7.1f} tok/s", flush=True)
    finally:
        lm.close()
    print(
        f"\nworkload {args.workload}, {args.gen_tokens} tokens/request, draft_max "
        f"{args.draft_max}, max_batch {args.max_batch}, {args.rounds} rounds (median tok/s)"
    )
    print("| streams | off | on | on/off | drafted | accepted |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in levels:
        off, on = statistics.median(tps[(n, "off")]), statistics.median(tps[(n, "on")])
        d = sum(x for x, _ in accepted[n])
        a = sum(y for _, y in accepted[n])
        print(f"| {n} | {off:.1f} | {on:.1f} | {on / off:.2f}x | {d} | {a} |")


if __name__ == "__main__":
    asyncio.run(main())
