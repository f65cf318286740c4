"""A model-free Runner for scheduler and engine tests.

The "model" is a pure function of (request's first prompt token, position), so
any token that lands in the wrong request is detectable. It keeps each slot's KV
as the token ids it holds (so a chunk that does not continue its slot's contents, e.g.
after a wrong restore, fails an assertion) and a cell count to exercise the cache-full
path. Saved states (the host prompt cache) are the token ids, packed. A chunk with
drafted tokens is verified as llama.cpp's runner does: one sample per row, up to the
first that differs from the draft; its KV keeps every decoded position until the
scheduler trims it.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from ferrousforge.engine.runner import ChunkResult, KVCacheFull, StepPlan
from ferrousforge.engine.sequence import Sequence

EOG = 0
VOCAB = 1000


def scripted_token(seq_key: int, position: int) -> int:
    """Deterministic next token; never EOG (tests choose when EOG happens)."""
    return 1 + (seq_key * 31 + position * 7) % (VOCAB - 1)


@dataclass
class ScriptedSampler:
    """Per-sequence script: optional forced tokens by output index, e.g. {3: EOG}.

    At output index ``fail_at`` sampling raises ``error``; at ``exhausted_at`` no token
    is allowed (a completed grammar); ``sample_s`` is the time each sample reports, or at
    the output indices in ``sample_s_at``.
    """

    forced: dict[int, int] = field(default_factory=dict)
    closed: bool = False
    fail_at: int | None = None
    error: BaseException | None = None
    exhausted_at: int | None = None
    sample_s: float = 0.0
    sample_s_at: dict[int, float] = field(default_factory=dict)

    def close(self) -> None:
        assert not self.closed, "sampler freed twice"
        self.closed = True


class ScriptedRunner:
    def __init__(
        self, n_slots: int = 4, n_batch: int = 16, n_ctx: int = 256, kv_capacity: int | None = None
    ) -> None:
        self.n_slots = n_slots
        self.n_batch = n_batch
        self.n_ctx = n_ctx
        self.eog_ids = frozenset({EOG})
        self.supports_prefix_cache = True
        self.wants_contiguous_slots = True
        self.kv_capacity = kv_capacity  # total cells; None = unlimited
        self.n_swa = 0
        self.kv: dict[int, int] = {}  # slot -> cells held (positions 0..n-1)
        self.contents: dict[int, list[int]] = {}  # slot -> the token ids those cells hold
        self.saves: list[tuple[int, int]] = []  # (slot, tokens) per save_state
        self.restores: list[tuple[int, int]] = []  # (slot, tokens) per successful restore
        self.fail_restores = False  # restore_state refuses every state (as set_data -> 0)
        self.plans: list[StepPlan] = []
        self.decoded_tokens = 0
        self.kv_full_events = 0

    def _used(self) -> int:
        return sum(self.kv.values())

    def execute(self, plan: StepPlan) -> list[ChunkResult]:
        for op in plan.kv_ops:
            if op.kind == "rm":
                held = self.kv.get(op.seq, 0)
                self.kv[op.seq] = held if op.p0 < 0 else min(held, op.p0)
                self.contents[op.seq] = self.contents.get(op.seq, [])[: self.kv[op.seq]]
            else:
                self.kv[op.seq] = self.kv.get(op.src, 0) if op.p1 < 0 else op.p1
                self.contents[op.seq] = self.contents.get(op.src, [])[: self.kv[op.seq]]
        new = sum(len(c.tokens) for c in plan.chunks)
        if self.kv_capacity is not None and self._used() + new > self.kv_capacity:
            self.kv_full_events += 1
            raise KVCacheFull()
        self.plans.append(plan)
        results = []
        for c in plan.chunks:
            seq = c.seq
            known = len(c.tokens) - c.n_draft
            assert c.pos0 == self.kv.get(seq.slot, 0), "chunk does not continue the slot's KV"
            assert c.tokens[:known] == seq.all_ids[c.pos0 : c.pos0 + known]
            held = self.contents.get(seq.slot, [])
            assert held == seq.all_ids[: c.pos0], "the slot's KV is not this sequence's prefix"
            self.contents[seq.slot] = held + c.tokens
            self.kv[seq.slot] = c.pos0 + len(c.tokens)
            self.decoded_tokens += len(c.tokens)
            res = ChunkResult()
            if c.sample:
                draft = c.draft
                for i in range(len(draft) + 1):
                    if self._scripted_end(seq.sampler, res, seq, i):
                        break
                    token = self._next_token(seq, i)
                    res.tokens.append(token)
                    if i == len(draft) or token != draft[i] or token == EOG:
                        break
            results.append(res)
        return results

    @staticmethod
    def _next_token(seq: Sequence, i: int) -> int:
        """The token sampled after the chunk's known tokens and ``i`` accepted drafts."""
        n_out = len(seq.output_ids) + i
        forced = seq.sampler.forced if seq.sampler is not None else {}
        natural = scripted_token(seq.prompt_ids[0], seq.n_tokens + i)
        token = forced.get(n_out, natural)
        if token == EOG and (seq.limits.ignore_eos or n_out < seq.limits.min_tokens):
            token = natural
        return token

    @staticmethod
    def _scripted_end(
        sampler: ScriptedSampler | None, res: ChunkResult, seq: Sequence, i: int = 0
    ) -> bool:
        """Apply the sampler's failure / exhaustion script; True if no token comes."""
        if sampler is None:
            return False
        n_out = len(seq.output_ids) + i
        res.sample_s = sampler.sample_s_at.get(n_out, sampler.sample_s)
        if sampler.fail_at == n_out:
            res.error = sampler.error or RuntimeError("scripted sampling failure")
        elif sampler.exhausted_at == n_out:
            res.exhausted = True
        return res.error is not None or res.exhausted

    def release_slot(self, slot: int, keep: int) -> None:
        self.kv[slot] = min(self.kv.get(slot, 0), keep)
        self.contents[slot] = self.contents.get(slot, [])[: self.kv[slot]]

    def save_state(self, slot: int, max_bytes: int) -> bytes | None:
        state = array("i", self.contents.get(slot, [])).tobytes()
        if not state or len(state) > max_bytes:
            return None
        self.saves.append((slot, len(state) // 4))
        return state

    def restore_state(self, slot: int, state: bytes) -> bool:
        tokens = array("i", state).tolist()
        self.kv[slot], self.contents[slot] = 0, []
        room = self.kv_capacity is None or self._used() + len(tokens) <= self.kv_capacity
        if self.fail_restores or not room:
            return False
        self.kv[slot], self.contents[slot] = len(tokens), tokens
        self.restores.append((slot, len(tokens)))
        return True

    def save_slot_file(self, slot: int, path: str, tokens: list[int]) -> int:
        """A slot file: the token list, then the KV (the slot's token ids), as int32."""
        held = self.contents.get(slot, [])
        data = array("i", [len(tokens), *tokens, *held]).tobytes()
        with open(path, "wb") as f:
            f.write(data)
        return len(data)

    def load_slot_file(self, slot: int, path: str) -> tuple[int, list[int]]:
        self.kv[slot], self.contents[slot] = 0, []
        try:
            with open(path, "rb") as f:
                data = array("i", f.read())
        except OSError:
            return 0, []
        n = data[0] if data else -1
        if not 0 <= n < len(data):
            return 0, []
        tokens, held = data[1 : 1 + n].tolist(), data[1 + n :].tolist()
        self.kv[slot], self.contents[slot] = len(held), held
        return len(data) * 4, tokens

    def free_sampler(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            seq.sampler.close()

    def reset(self) -> None:
        self.kv.clear()
        self.contents.clear()


def piece(token: int) -> bytes:
    """Token -> bytes for the scripted vocabulary: ' t<id>'."""
    return b"" if token == EOG else f" t{token}".encode()


def expected_output(prompt: list[int], n: int) -> list[int]:
    """What a request must receive when it runs undisturbed for n tokens."""
    return [scripted_token(prompt[0], len(prompt) + i) for i in range(n)]
