"""Log-probabilities in OpenAI's two formats: legacy completions and chat."""

from __future__ import annotations

from ferrousforge.engine.runner import LogprobEntry


def legacy_logprobs(
    vocab,
    entries: list[LogprobEntry],
    offset: int,
    prompt: list[int] | None = None,
    prompt_entries: list[LogprobEntry] | None = None,
) -> dict:
    """Completions' {tokens, token_logprobs, top_logprobs, text_offset}.

    With an echoed ``prompt`` its tokens come first; the first has no log-probability.
    ``offset`` is the character position of the first token in the choice's text.
    ``tokens`` are what each token adds to that text, so they join to it and ``text_offset``
    points into it: a control token (a BOS the tokenizer added) adds nothing there, as in the
    echoed prompt. ``top_logprobs`` keys name candidates, control tokens by their text.
    """
    tokens: list[str] = []
    token_lps: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    if prompt:
        by_pos = [None, *(prompt_entries or [])]
        for tok, entry in zip(prompt, by_pos + [None] * (len(prompt) - len(by_pos)), strict=False):
            tokens.append(_shown(vocab, tok))
            token_lps.append(entry.logprob if entry else None)
            tops.append({vocab.token_text(t): lp for t, lp in entry.top} if entry else None)
    for e in entries:
        tokens.append(_shown(vocab, e.token))
        token_lps.append(e.logprob)
        tops.append({vocab.token_text(t): lp for t, lp in e.top})
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": token_lps,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _shown(vocab, token: int) -> str:
    """The token's text as the choice's text shows it (control tokens render as nothing)."""
    return vocab.piece(token).decode("utf-8", errors="replace")


def _token(vocab, token: int, logprob: float) -> dict:
    text = vocab.token_text(token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(vocab, entries: list[LogprobEntry]) -> dict:
    """Chat's {"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}."""
    content = [
        {
            **_token(vocab, e.token, e.logprob),
            "top_logprobs": [_token(vocab, t, lp) for t, lp in e.top],
        }
        for e in entries
    ]
    return {"content": content, "refusal": None}
