"""LlamaRunner: executes one engine step as one llama_decode over a shared batch."""

from __future__ import annotations

import time

import numpy as np

from ferrousforge.engine.runner import ChunkResult, KVCacheFull, LogprobEntry, StepPlan
from ferrousforge.engine.sequence import Sequence
from ferrousforge.errors import DecodeError, NativeCallError
from ferrousforge.inference.backends.llama_cpp.batch import TokenBatch
from ferrousforge.inference.backends.llama_cpp.context import LlamaContext, as_float_array

# A slot file's token list holds a slot's tokens plus llama-server's packing around them.
SLOT_FILE_EXTRA_TOKENS = 8


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = float(x.max())
    return x - (m + float(np.log(np.exp(x - m).sum())))


def logprob_entry(logits: np.ndarray, token: int, top_n: int) -> LogprobEntry:
    lp = log_softmax(logits.astype(np.float64, copy=False))
    top: list[tuple[int, float]] = []
    if top_n:
        idx = np.argpartition(-lp, top_n)[:top_n]
        idx = idx[np.argsort(-lp[idx])]
        top = [(int(i), float(lp[i])) for i in idx]
    return LogprobEntry(int(token), float(lp[token]), top)


class LlamaRunner:
    """The engine's Runner on a LlamaContext. Used only from the engine thread."""

    def __init__(self, ctx: LlamaContext) -> None:
        self.ctx = ctx
        self.vocab = ctx.model.vocab
        self.n_slots = ctx.n_seq_max
        self.n_batch = ctx.n_batch
        self.n_ctx = ctx.n_ctx_seq
        self.n_kv_cells = ctx.n_ctx if ctx.kv_unified else ctx.n_ctx_seq * ctx.n_seq_max
        self.n_vocab = ctx.n_vocab
        self.eog_ids = self.vocab.eog_ids
        self._eog = np.array(sorted(self.eog_ids), dtype=np.int32)
        # Recurrent state cannot be truncated at an arbitrary position.
        self.supports_prefix_cache = not ctx.model.is_recurrent
        # One KV stream per sequence: a step is one ubatch only over consecutive ids.
        self.wants_contiguous_slots = not ctx.kv_unified and self.supports_prefix_cache
        self.n_swa = ctx.model.n_swa
        self.batch = TokenBatch(ctx._lib, self.n_batch)

    def execute(self, plan: StepPlan) -> list[ChunkResult]:
        ctx = self.ctx
        for op in plan.kv_ops:
            if op.kind == "rm":
                ctx.seq_rm(op.seq, op.p0, op.p1)
            else:
                ctx.seq_cp(op.src, op.seq, op.p0, op.p1)
        b = self.batch
        b.clear()
        # With separate KV streams llama.cpp makes one ubatch (a full pass over the weights)
        # per run of consecutive sequence ids in batch order: add the chunks by slot.
        starts = [0] * len(plan.chunks)
        for i in sorted(range(len(plan.chunks)), key=lambda i: plan.chunks[i].seq.slot):
            ch = plan.chunks[i]
            mode = "all" if ch.all_logits or ch.n_draft else ("last" if ch.sample else "none")
            starts[i] = b.add(ch.tokens, ch.seq.slot, ch.pos0, mode)
        rc = ctx.decode(b.as_struct())
        if rc == 1:
            raise KVCacheFull()
        if rc != 0:
            raise DecodeError(f"llama_decode failed with code {rc}")
        return [
            self._results(ch.seq, ch, start) for ch, start in zip(plan.chunks, starts, strict=True)
        ]

    def _results(self, seq: Sequence, ch, start: int) -> ChunkResult:
        res = ChunkResult()
        if ch.all_logits:
            res.prompt_logprobs = self._prompt_logprobs(seq, ch, start)
        if not ch.sample:
            return res
        # Sample after the last known token, then after each draft token while the samples
        # agree with the draft: exactly the tokens one-at-a-time decoding would sample.
        draft = ch.draft
        first = start + len(ch.tokens) - 1 - len(draft)
        top_n = seq.limits.logprobs
        if top_n is not None:
            res.logprobs = []
        n_out = len(seq.output_ids)
        lim = seq.limits
        for i in range(len(draft) + 1):
            row = first + i
            raw = None
            if top_n is not None:  # from the raw logits, before grammar and sampler chain
                raw = as_float_array(self.ctx.logits_row(row), self.n_vocab).copy()
            banned = lim.ignore_eos or n_out + i < lim.min_tokens
            t0 = time.thread_time()  # CPU time: the sampling's own cost, not the machine's load
            try:
                if seq.sampler.plain_greedy:
                    token = self._argmax(row, banned)
                else:
                    token = seq.sampler.sample(self.ctx.ptr, row, self._eog if banned else None)
            except NativeCallError as e:
                res.error = e  # this sequence fails; the sampler is not used again
                return res
            finally:
                res.sample_s = max(res.sample_s, time.thread_time() - t0)
            if token is None:  # a completed grammar: nothing more may follow
                res.exhausted = True
                return res
            res.tokens.append(token)
            if raw is not None:
                res.logprobs.append(logprob_entry(raw, token, top_n or 0))  # type: ignore[union-attr]
            if i == len(draft) or token != draft[i] or token in self.eog_ids:
                return res
        return res

    def _argmax(self, row: int, ban_eog: bool) -> int:
        """Greedy pick from the raw logits: the first of the highest, as llama.cpp's greedy."""
        logits = as_float_array(self.ctx.logits_row(row), self.n_vocab)
        token = int(logits.argmax())
        if ban_eog and token in self.eog_ids:
            logits = logits.copy()
            logits[self._eog] = -np.inf
            token = int(logits.argmax())
        return token

    def _prompt_logprobs(self, seq: Sequence, ch, start: int) -> list[LogprobEntry]:
        prompt = seq.prompt_ids
        out = []
        top_n = seq.limits.logprobs or 0
        for i in range(len(ch.tokens)):
            target_pos = ch.pos0 + i + 1
            if target_pos >= len(prompt):
                break
            logits = as_float_array(self.ctx.logits_row(start + i), self.n_vocab)
            out.append(logprob_entry(logits, prompt[target_pos], top_n))
        return out

    def release_slot(self, slot: int, keep: int) -> None:
        self.ctx.seq_rm(slot, keep, -1)

    def save_state(self, slot: int, max_bytes: int) -> bytearray | None:
        return self.ctx.seq_state(slot, max_bytes)

    def restore_state(self, slot: int, state: bytes | bytearray) -> bool:
        if self.ctx.set_seq_state(slot, state):
            return True
        self.ctx.seq_rm(slot, -1, -1)  # whatever part of it was loaded
        return False

    def save_slot_file(self, slot: int, path: str, tokens: list[int]) -> int:
        return self.ctx.save_seq_file(slot, path, tokens)

    def load_slot_file(self, slot: int, path: str) -> tuple[int, list[int]]:
        self.ctx.seq_rm(slot, -1, -1)  # the file's state replaces the slot's
        got = self.ctx.load_seq_file(slot, path, self.n_ctx + SLOT_FILE_EXTRA_TOKENS)
        if not got[0]:
            self.ctx.seq_rm(slot, -1, -1)  # whatever part of it was loaded
        return got

    def free_sampler(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            seq.sampler.close()

    def reset(self) -> None:
        self.ctx.clear()
