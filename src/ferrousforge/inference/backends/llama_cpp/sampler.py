"""SamplerChain: one llama.cpp sampler chain per sequence, built from InferenceOptions."""

from __future__ import annotations

import ctypes
import logging
import math
import random
import time
from collections.abc import Callable
from types import ModuleType

from ferrousforge.api.request import InferenceOptions
from ferrousforge.errors import GrammarError, NativeCallError
from ferrousforge.inference.backends.llama_cpp.gbnf import check_grammar
from ferrousforge.inference.backends.llama_cpp.handle import NativeHandle
from ferrousforge.inference.backends.llama_cpp.lazy_grammar import TriggerWatcher, replay_pattern
from ferrousforge.inference.backends.llama_cpp.library import (
    log_lines_since,
    log_mark,
    native_guard,
)

log = logging.getLogger(__name__)


class SamplerChain(NativeHandle):
    """Owns a llama_sampler chain; frees it exactly once.

    Order follows llama.cpp's common sampler: logit bias, penalties, DRY, then
    top-k / typical / top-p / min-p / XTC, temperature, and the final pick
    (greedy, mirostat or seeded distribution). A grammar is a sampler of its own
    beside the chain (``grammar``), checked against the chain's pick in the guard
    (guard.cpp ``ff_sample``); without the guard it goes first in the chain.

    ``n_ctx`` caps the penalty and DRY windows (-1 means the whole context). With
    ``budget_s``, a grammar whose first constrained step alone takes longer is
    rejected here, in the caller's thread, before it can slow the engine.

    With ``opts.grammar_trigger`` the grammar is lazy: ``piece`` (token -> bytes, special
    tokens rendered) feeds a TriggerWatcher, and the grammar is created when it fires.
    """

    _what = "sampler"

    def __init__(
        self,
        lib: ModuleType,
        vocab_ptr,
        n_vocab: int,
        opts: InferenceOptions,
        n_ctx: int = 4096,
        budget_s: float | None = None,
        piece: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(lib)
        self._keep: list[object] = []  # ctypes arrays the chain points into
        self.best_k = 0  # see _build
        self._guard = native_guard()
        self.grammar = None  # a separate llama_sampler, freed with the chain
        self._vocab = vocab_ptr
        self._lazy: tuple[bytes, TriggerWatcher] | None = None
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = lib.llama_sampler_chain_init(params)
        self._ptr = chain
        try:
            if opts.grammar and opts.grammar_trigger is not None:
                self._init_lazy(vocab_ptr, n_vocab, opts, budget_s, piece)
            elif opts.grammar:
                self._init_grammar(vocab_ptr, n_vocab, opts.grammar, budget_s)
            self._build(vocab_ptr, n_vocab, opts, n_ctx)
        except BaseException:
            self.close()
            raise
        self.seed = opts.seed
        self.options = opts  # what GET /slots shows as the request's params
        # A bare greedy pick keeps no state: the runner may take the argmax of the logits
        # itself (tens of microseconds) instead of llama_sampler_sample, which first copies
        # the whole vocabulary into a candidate array.
        # (Bias, penalties and DRY are samplers in the chain; a grammar is self.grammar or
        # pending in self._lazy, or in the chain without the guard.)
        self.plain_greedy = (
            opts.greedy
            and self.grammar is None
            and self._lazy is None
            and lib.llama_sampler_chain_n(chain) == 1
        )

    def _init_lazy(self, vocab_ptr, n_vocab, opts: InferenceOptions, budget_s, piece) -> None:
        """Check the grammar now (parse, cost), create it when the trigger fires."""
        trigger = opts.grammar_trigger
        assert trigger is not None and opts.grammar is not None
        self._init_grammar(vocab_ptr, n_vocab, opts.grammar, budget_s)
        if not self._guard.active:  # llama.cpp's own lazy grammar, first in the chain
            # The eager grammar _init_grammar just put first in the chain: swap it out.
            self._lib.llama_sampler_free(self._lib.llama_sampler_chain_remove(self._ptr, 0))
            g = self._guard.grammar_init_lazy(
                vocab_ptr, opts.grammar.encode(), "|".join(trigger.patterns).encode()
            )
            if not g:
                raise GrammarError("grammar: llama.cpp rejected the lazy grammar")
            self._lib.llama_sampler_chain_add(self._ptr, g)
            return
        self._lib.llama_sampler_free(self.grammar)
        self.grammar = None
        if piece is None:
            raise ValueError("grammar_trigger: needs the vocabulary's token pieces")
        self._lazy = (opts.grammar.encode(), TriggerWatcher(trigger, piece))

    def _init_grammar(self, vocab_ptr, n_vocab: int, text: str, budget_s: float | None) -> None:
        check_grammar(text)
        mark = log_mark()
        try:
            g = self._guard.grammar_init(vocab_ptr, text.encode())
        except NativeCallError as e:
            raise GrammarError(f"grammar: {e}") from e
        if not g:
            why = "; ".join(log_lines_since(mark, 5))
            raise GrammarError(
                f"grammar: could not parse the GBNF grammar ({why or 'syntax error'})"
            )
        if not self._guard.active:
            self._lib.llama_sampler_chain_add(self._ptr, g)
            return
        self.grammar = ctypes.cast(g, type(self._ptr))  # typed like the chain, for free()
        # CPU time of this thread, not wall time: on a busy machine other threads would
        # inflate the wall clock and refuse a grammar that is cheap. A probe over budget is
        # timed once more (the faster counts): a busy host can slow one, not a costly grammar.
        took = math.inf
        for _ in range(2):
            t0 = time.thread_time()
            try:
                allowed = self._guard.grammar_probe(g, n_vocab)
            except NativeCallError as e:
                raise GrammarError(f"grammar: {e}") from e
            took = min(took, time.thread_time() - t0)
            if allowed == 0 or budget_s is None or took <= budget_s:
                break
        if allowed == 0:
            raise GrammarError("grammar: no token can start a sentence of this grammar")
        if budget_s is not None and took > budget_s:
            raise GrammarError(
                f"grammar: one constrained sampling step takes {took * 1000:.0f} ms, over the "
                f"per-token sampling budget of {budget_s * 1000:.0f} ms; simplify the grammar"
            )

    def _add(self, smpl) -> None:
        if not smpl:
            raise ValueError("sampler: llama.cpp rejected the sampler parameters")
        self._lib.llama_sampler_chain_add(self._ptr, smpl)

    def _build(self, vocab_ptr, n_vocab: int, o: InferenceOptions, n_ctx: int) -> None:
        lib = self._lib

        def last_n(n: int) -> int:
            # -1 is the whole context, as in llama.cpp; a window never exceeds it (llama.cpp
            # allocates the window up front, so 2^30 would cost gigabytes).
            return n_ctx if n < 0 else min(n, n_ctx)

        if o.logit_bias:
            bad = [t for t in o.logit_bias if not 0 <= int(t) < n_vocab]
            if bad:
                raise ValueError(f"logit_bias: token id {bad[0]} is outside the vocabulary")
            arr = (lib.llama_logit_bias * len(o.logit_bias))(
                *(lib.llama_logit_bias(int(t), float(b)) for t, b in o.logit_bias.items())
            )
            self._keep.append(arr)
            self._add(lib.llama_sampler_init_logit_bias(n_vocab, len(o.logit_bias), arr))
        if o.repeat_penalty != 1.0 or o.presence_penalty or o.frequency_penalty:
            self._add(
                lib.llama_sampler_init_penalties(
                    n_vocab,
                    last_n(o.repeat_last_n),
                    o.repeat_penalty,
                    o.frequency_penalty,
                    o.presence_penalty,
                )
            )
        if o.dry_multiplier > 0:
            breakers = [s.encode() for s in o.dry_sequence_breakers]
            arr = (ctypes.c_char_p * len(breakers))(*breakers)
            self._keep.append(arr)
            self._add(
                lib.llama_sampler_init_dry(
                    vocab_ptr,
                    o.dry_multiplier,
                    o.dry_base,
                    o.dry_allowed_length,
                    last_n(o.dry_penalty_last_n),
                    arr,
                    len(breakers),
                )
            )
        # The chain's pick depends only on the `keep` best tokens the grammar allows when
        # nothing before the selection changes logits: the guard then constrains those
        # first instead of the whole vocabulary (ff_sample).
        plain = lib.llama_sampler_chain_n(self._ptr) == 0
        if o.greedy:
            self.best_k = 1 if plain else 0
            self._add(lib.llama_sampler_init_greedy())
            return
        self.best_k = o.top_k if plain and o.top_k > 0 and not o.mirostat else 0
        seed = o.seed if o.seed is not None else random.getrandbits(32)
        if o.mirostat == 1:
            self._add(lib.llama_sampler_init_temp(o.temperature))
            self._add(
                lib.llama_sampler_init_mirostat(n_vocab, seed, o.mirostat_tau, o.mirostat_eta, 100)
            )
            return
        if o.mirostat == 2:
            self._add(lib.llama_sampler_init_temp(o.temperature))
            self._add(lib.llama_sampler_init_mirostat_v2(seed, o.mirostat_tau, o.mirostat_eta))
            return
        if o.top_k > 0:
            self._add(lib.llama_sampler_init_top_k(o.top_k))
        if o.typical_p < 1.0:
            self._add(lib.llama_sampler_init_typical(o.typical_p, 1))
        if o.top_p < 1.0:
            self._add(lib.llama_sampler_init_top_p(o.top_p, 1))
        if o.min_p > 0.0:
            self._add(lib.llama_sampler_init_min_p(o.min_p, 1))
        if o.xtc_probability > 0.0:
            self._add(lib.llama_sampler_init_xtc(o.xtc_probability, o.xtc_threshold, 1, seed))
        self._add(lib.llama_sampler_init_temp(o.temperature))
        self._add(lib.llama_sampler_init_dist(seed))

    def sample(self, ctx_ptr, row: int, banned=None) -> int | None:
        """Sample (and accept) the next token from output row ``row`` of the last decode.

        None when no token is allowed (a completed grammar); NativeCallError if llama.cpp
        threw, after which this sampler must not be used again.
        """
        token = self._guard.sample(self.ptr, self.grammar, ctx_ptr, row, banned, self.best_k)
        if self._lazy is not None and token is not None:
            self._watch(token)
        return token

    def _watch(self, token: int) -> None:
        assert self._lazy is not None
        text, watcher = self._lazy
        found = watcher.push(token)
        if found is None:
            return
        self._lazy = None
        tokens, offset = found
        g = self._guard.grammar_init_lazy(self._vocab, text, replay_pattern(offset))
        if not g:
            log.warning("lazy grammar: llama.cpp rejected the grammar at its trigger")
            return
        try:
            for t in tokens:  # the first one wakes it; the rest are checked by the grammar
                self._guard.sampler_accept(g, t)
        except NativeCallError as e:
            # The text that completed the trigger already breaks the grammar (a marker
            # followed by something else in one token): this output stays unconstrained,
            # and the parser returns whatever it is as text, never as a call.
            log.info("lazy grammar: the trigger's own text does not parse (%s)", e)
            self._lib.llama_sampler_free(ctypes.cast(g, type(self._ptr)))
            return
        self.grammar = ctypes.cast(g, type(self._ptr))

    def _free(self, ptr) -> None:
        if self.grammar is not None:
            self._lib.llama_sampler_free(self.grammar)
            self.grammar = None
        self._lib.llama_sampler_free(ptr)
