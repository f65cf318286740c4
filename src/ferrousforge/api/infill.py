"""POST /infill's prompt: fill-in-the-middle with the model's FIM tokens, as llama-server
builds it (the repository-level pattern of https://arxiv.org/pdf/2409.12186):

    [FIM_REP]myproject\\n [FIM_SEP]file0\\n text0 ... [FIM_SEP]filename\\n
    [FIM_PRE]prefix[FIM_SUF]suffix[FIM_MID]prompt

The code here works on token ids, so it is tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

NONE = -1  # llama.cpp's LLAMA_TOKEN_NULL
# Between extra chunks of a model without a file separator token ("\n\n--- snippet ---\n\n").
CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"


@dataclass(frozen=True, slots=True)
class FimTokens:
    pre: int
    suf: int
    mid: int
    rep: int = NONE
    sep: int = NONE
    bos: int = NONE  # put first when the model adds a BOS
    add_bos: bool = False

    @classmethod
    def of(cls, vocab) -> FimTokens:
        """The vocabulary's FIM tokens; ValueError (a 400) naming those a model lacks."""
        missing = [
            name
            for name, t in (
                ("prefix", vocab.fim_pre),
                ("suffix", vocab.fim_suf),
                ("middle", vocab.fim_mid),
            )
            if t == NONE
        ]
        if missing:
            raise ValueError(
                "infill: not supported by this model: it has no fill-in-the-middle "
                f"{', '.join(missing)} token (tokenizer.ggml.fim_*_token_id in the GGUF)"
            )
        return cls(
            vocab.fim_pre,
            vocab.fim_suf,
            vocab.fim_mid,
            vocab.fim_rep,
            vocab.fim_sep,
            vocab.bos,
            vocab.add_bos,
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """What bounds each part: prefix and suffix fit one batch (3:1), the extra files fill
    what the context has left after a batch and twice the output."""

    n_batch: int
    n_predict: int
    n_ctx: int


def infill_prompt(
    fim: FimTokens,
    tokenize: Callable[[str], list[int]],
    prefix: str,
    suffix: str,
    extra: list[tuple[str, str]],
    prompt_ids: list[int],
    budget: Budget,
) -> list[int]:
    """The token ids of one infill prompt (``tokenize`` adds no special tokens)."""
    extra_ids: list[int] = []
    if fim.rep != NONE:
        extra_ids += [fim.rep, *tokenize("myproject\n")]
    for filename, text in extra:
        if fim.sep != NONE:
            extra_ids += [fim.sep, *tokenize(filename + "\n")]
        else:
            extra_ids += tokenize(CHUNK_SEPARATOR)
        extra_ids += tokenize(text)
    if fim.sep != NONE:
        extra_ids += [fim.sep, *tokenize("filename\n")]

    pre_ids, suf_ids = tokenize(prefix), tokenize(suffix)
    n_pre = min(len(pre_ids), 3 * (budget.n_batch // 4))
    n_suf = min(len(suf_ids), max(0, budget.n_batch // 4 - (2 + len(prompt_ids))))
    n_predict = max(budget.n_predict, 0)
    n_extra = min(max(0, budget.n_ctx - budget.n_batch - 2 * n_predict), len(extra_ids))

    head = [fim.pre, *pre_ids[len(pre_ids) - n_pre :], *prompt_ids]
    tail = [fim.suf, *suf_ids[:n_suf]]
    out = [fim.bos] if fim.add_bos and fim.bos != NONE else []
    out = extra_ids[len(extra_ids) - n_extra :] + out + head + tail
    out.append(fim.mid)
    return out
