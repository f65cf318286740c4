"""Returning prompts: 16 distinct prompts, then the same 16 again, at 8 streams.

    python bench/returning_prompts.py --url cache=http://127.0.0.1:8080 \
        --url nocache=http://127.0.0.1:8081 [--url llama-server=...] [--reps 2]

Per server and repetition: round 1 sends ``--prompts`` prompts no server has seen
(``Request <n>: ...``, about ``--prompt-tokens`` tokens) through ``--concurrency`` workers,
round 2 the same prompts again; the median time to first token of each round is what a
host prompt cache changes (round 2) and must not cost (round 1). Servers take turns
(the order rotates per repetition) and never run at once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

import httpx

from ferrousforge.bench.prompts import text_prompt
from ferrousforge.bench.serve_bench import discover_model, one_request, split_url


async def one_round(client, url, model, indices, args) -> list[float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in indices:
        queue.put_nowait(i)
    ttfts: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            body = {
                "model": model,
                "prompt": text_prompt(queue.get_nowait(), args.prompt_tokens),
                "max_tokens": args.max_tokens,
                "min_tokens": args.max_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            rec = await one_request(client, url, body, 300.0)
            if not rec.ok:
                raise SystemExit(f"{url}: {rec.error}")
            ttfts.append(rec.ttft_s)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return ttfts


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", action="append", required=True, help="[NAME=]URL, repeatable")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=150)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--verbose", action="store_true", help="every request's TTFT")
    args = p.parse_args()
    servers = [split_url(u) for u in args.url]
    results: dict[str, dict[str, list[float]]] = {n: {"fresh": [], "again": []} for n, _ in servers}
    async with httpx.AsyncClient() as client:
        models = {name: await discover_model(client, url) for name, url in servers}
        for name, url in servers:  # warm-up
            await one_round(client, url, models[name], [10**6], args)
        for rep in range(args.reps):
            order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
            indices = list(range(1000 * (rep + 1), 1000 * (rep + 1) + args.prompts))
            for name, url in order:
                fresh = await one_round(client, url, models[name], indices, args)
                again = await one_round(client, url, models[name], indices, args)
                results[name]["fresh"] += fresh
                results[name]["again"] += again
                print(
                    f"rep {rep} {name}: TTFT p50 fresh {statistics.median(fresh):.3f} s, "
                    f"again {statistics.median(again):.3f} s",
                    flush=True,
                )
                if args.verbose:
                    print("  fresh", [round(t, 3) for t in fresh])
                    print("  again", [round(t, 3) for t in again])
    print(f"\n{'server':<16} {'fresh TTFT p50':>15} {'returning TTFT p50':>19}")
    for name, r in results.items():
        print(f"{name:<16} {statistics.median(r['fresh']):>13.3f} s "
              f"{statistics.median(r['again']):>17.3f} s")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
