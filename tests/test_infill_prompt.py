"""/infill's prompt assembly on token ids (no model): llama-server's repository-level FIM
pattern, the BOS where the model adds one, the prefix:suffix budget, the 400 without FIM."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ferrousforge.api.infill import CHUNK_SEPARATOR, NONE, Budget, FimTokens, infill_prompt

PRE, SUF, MID, REP, SEP, BOS = 900, 901, 902, 903, 904, 1
WIDE = Budget(n_batch=512, n_predict=0, n_ctx=4096)


def tokenize(text: str) -> list[int]:
    """One fake token per character (its code point), so the expected ids read like text."""
    return [ord(c) for c in text]


def ids(text: str) -> list[int]:
    return tokenize(text)


def test_repository_pattern_with_extra_files():
    fim = FimTokens(PRE, SUF, MID, REP, SEP)
    got = infill_prompt(fim, tokenize, "ab", "yz", [("f.h", "x;")], ids("p"), WIDE)
    assert got == [
        REP, *ids("myproject\n"),
        SEP, *ids("f.h\n"), *ids("x;"),
        SEP, *ids("filename\n"),
        PRE, *ids("ab"), *ids("p"),
        SUF, *ids("yz"),
        MID,
    ]  # fmt: skip


def test_plain_fim_tokens_and_bos():
    fim = FimTokens(PRE, SUF, MID, bos=BOS, add_bos=True)
    got = infill_prompt(fim, tokenize, "ab", "yz", [("f", "x")], [], WIDE)
    # no file separator token: extra chunks are set apart by a text separator
    assert got == [*ids(CHUNK_SEPARATOR), *ids("x"), BOS, PRE, *ids("ab"), SUF, *ids("yz"), MID]


def test_prefix_and_suffix_fit_one_batch():
    fim = FimTokens(PRE, SUF, MID)
    budget = Budget(n_batch=16, n_predict=0, n_ctx=4096)
    got = infill_prompt(fim, tokenize, "a" * 40, "z" * 40, [], ids("p"), budget)
    # prefix: its last 3/4 of a batch; suffix: its first quarter less the prompt and 2
    assert got == [PRE, *ids("a" * 12), *ids("p"), SUF, *ids("z"), MID]


def test_extra_files_take_what_the_context_leaves():
    fim = FimTokens(PRE, SUF, MID, REP, SEP)
    budget = Budget(n_batch=8, n_predict=2, n_ctx=16)  # 16 - 8 - 2*2 = 4 extra tokens
    got = infill_prompt(fim, tokenize, "", "", [("f", "abcdef")], [], budget)
    assert got == [*ids("name\n")[-4:], PRE, SUF, MID]


def test_model_without_fim_tokens_is_refused():
    vocab = SimpleNamespace(
        fim_pre=NONE, fim_suf=NONE, fim_mid=7, fim_rep=NONE, fim_sep=NONE, bos=1, add_bos=False
    )
    with pytest.raises(ValueError, match="prefix, suffix token"):
        FimTokens.of(vocab)
