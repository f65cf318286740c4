"""Prompts that differ from each other from the first token, so no prefix cache helps."""

from __future__ import annotations

import random

# Common English words: almost all are one token (with their leading space) in
# the BPE vocabularies of small chat models, so n words is close to n tokens.
_WORD_TEXT = (
    "the of and to in is was for on are with as at be by this had not but what all were when "
    "we there can an your which their said if do will each about how up out them then she many "
    "some so these would other into has more her two like him see time could no make than first "
    "been its who now people my made over did down only way find use may water long little very "
    "after words called just where most know get through back much before go good new write our "
    "used me man too any day same right look think also around another came come work three word "
    "must because does part even place well such here take why things help put years different "
    "away again off went old number great tell men say small every found still between name "
    "should home big give air line set own under read last never us left end along while might "
    "next sound below saw something thought both few those always looked show large often together"
)
_WORDS = tuple(_WORD_TEXT.split())


def token_prompts(
    n: int, length: int, vocab_size: int, *, seed: int = 0, avoid: frozenset[int] = frozenset()
) -> list[list[int]]:
    """``n`` prompts of ``length`` token ids; prompt i starts with a token no other has."""
    if length < 1:
        raise ValueError("length: must be >= 1")
    rng = random.Random(seed)
    lo, hi = min(1000, vocab_size // 4), vocab_size - 1
    out = []
    for i in range(n):
        ids = [lo + i]  # distinct first token: nothing to share
        while len(ids) < length:
            t = rng.randint(lo, hi)
            if t not in avoid:
                ids.append(t)
        out.append(ids)
    return out


def text_prompt(index: int, n_words: int, *, seed: int = 0) -> str:
    """A prompt of about ``n_words`` tokens whose first words are unique to ``index``."""
    rng = random.Random(seed * 1_000_003 + index)
    words = [rng.choice(_WORDS) for _ in range(max(0, n_words - 3))]
    return f"Request {index}: " + " ".join(words)
