"""Streaming one answer to the terminal, shared by `run` and `chat`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from ferrousforge.api.request import InferenceOptions
from ferrousforge.engine.engine import RequestOutput


@dataclass(slots=True)
class Answer:
    text: str
    final: RequestOutput

    def figures(self) -> str:
        """One line: tokens, tokens/s, time to first token, prompt reuse."""
        f = self.final
        tps = (f.completion_tokens - 1) / f.generation_s if f.generation_s > 0 else 0.0
        cached = (
            f" | {f.cached_tokens}/{f.prompt_tokens} prompt tokens cached"
            if f.cached_tokens
            else ""
        )
        return (
            f"{f.completion_tokens} tokens | {tps:.1f} tokens/s | time to first token "
            f"{f.ttft_s:.2f} s{cached}"
        )


def options_from(args) -> InferenceOptions:
    return InferenceOptions(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )


async def stream_answer(
    backend, lm, prompt_ids: list[int], options: InferenceOptions, out: TextIO = sys.stdout
) -> Answer:
    """Print the answer as it comes; Ctrl-C stops it (and frees the slot)."""
    (stream,) = backend.submit(lm.handle, prompt_ids, options)
    parts: list[str] = []
    final = None
    try:
        async for o in stream:
            parts.append(o.text)
            out.write(o.text)
            out.flush()
            if o.finish_reason is not None:
                final = o
    finally:
        stream.abort()
    out.write("\n")
    assert final is not None
    return Answer("".join(parts), final)
