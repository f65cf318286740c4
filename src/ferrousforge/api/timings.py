"""llama-server's ``timings`` object, from an engine stream's final output."""

from __future__ import annotations

from ferrousforge.engine.engine import RequestOutput


def _rates(n: int, ms: float) -> tuple[float, float]:
    """(ms per token, tokens per second); 0 where nothing was measured (no division by 0)."""
    return (ms / n if n else 0.0), (1e3 * n / ms if ms > 0 else 0.0)


def timings(final: RequestOutput) -> dict[str, float | int]:
    """``prompt_*``: the prompt tokens evaluated (the cached ones are ``cache_n``) and the time
    to the first token; ``predicted_*``: the tokens generated and the time from the first to
    the last, as llama-server reports them."""
    prompt_n = max(0, final.prompt_tokens - final.cached_tokens)
    prompt_ms = final.ttft_s * 1e3
    predicted_n = final.completion_tokens
    predicted_ms = final.generation_s * 1e3
    p_tok, p_sec = _rates(prompt_n, prompt_ms)
    g_tok, g_sec = _rates(predicted_n, predicted_ms)
    return {
        "cache_n": final.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": p_tok,
        "prompt_per_second": p_sec,
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": g_tok,
        "predicted_per_second": g_sec,
    }


def combined_timings(finals: list[RequestOutput], n: int = 1) -> dict[str, float | int]:
    """One ``timings`` for several choices (``n`` per prompt, which they share): the tokens
    add up, the times are the longest."""
    heads = finals[::n]
    return timings(
        RequestOutput(
            "",
            [],
            prompt_tokens=sum(f.prompt_tokens for f in heads),
            completion_tokens=sum(f.completion_tokens for f in finals),
            cached_tokens=sum(f.cached_tokens for f in heads),
            ttft_s=max(f.ttft_s for f in finals),
            generation_s=max(f.generation_s for f in finals),
        )
    )
