"""Scheduler: which tokens of which sequences go into the next decode.

Each step carries one token for every generating sequence, then prompt chunks
of prefilling sequences up to the n_batch budget (chunked prefill, so a long
prompt never stalls running streams). New requests take a free slot, reusing
the longest common token prefix already in any slot's KV (prefix cache). Busy
slots are kept contiguous (lowest free slot first; a lasting gap is closed by
moving a sequence), because llama.cpp decodes separate KV streams in one ubatch
only over consecutive sequence ids. With speculation on, a generating sequence's token
may bring drafted tokens along (engine/speculation.py); the KV of drafts that were not
accepted is dropped as soon as the step is done. With a host cache (PromptCache), a
slot's KV is saved there while the engine is idle or, at the latest, before it is lost,
and restored when a later prompt shares more of it than any slot does.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from ferrousforge.engine.prompt_cache import PromptCache, usable_prefix
from ferrousforge.engine.runner import ChunkResult, KVOp, Runner, ScheduledChunk, StepPlan
from ferrousforge.engine.sequence import Sequence, SequenceStatus
from ferrousforge.engine.speculation import SeqSpeculation, SpecConfig
from ferrousforge.errors import ContextOverflowError

log = logging.getLogger(__name__)

# Copying another slot's KV moves its whole buffer (separate streams), so only
# do it when it saves at least this many prompt tokens over the target's own cache.
MIN_COPY_GAIN = 32
# Restoring from the host cache copies the whole saved state into the slot: worth it only
# when it saves at least this many prompt tokens over the best slot (and so shorter
# sequences are not saved at all).
MIN_RESTORE_GAIN = 32
# Steps a gap between busy slots may last before the scheduler closes it by a move.
GAP_PATIENCE = 2


@dataclass(slots=True)
class Slot:
    id: int
    seq: Sequence | None = None
    cached: list[int] = field(default_factory=list)  # KV contents while free
    saved: bool = False  # ``cached`` was offered to the host cache already
    last: Sequence | None = None  # the last sequence that ran here (GET /slots shows it)

    def kv_tokens(self) -> list[int]:
        if self.seq is not None:
            return self.seq.all_ids[: self.seq.n_computed]
        return self.cached


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    def __init__(
        self,
        runner: Runner,
        prefix_cache: bool = True,
        spec: SpecConfig | None = None,
        host_cache: PromptCache | None = None,
    ) -> None:
        self.runner = runner
        self.n_batch = runner.n_batch
        self.n_ctx = runner.n_ctx
        self.prefix_cache = prefix_cache and runner.supports_prefix_cache
        # KV saved in host memory when it leaves a slot (needs the slots' prefix cache).
        self.host_cache = host_cache if self.prefix_cache else None
        self.slots = [Slot(i) for i in range(runner.n_slots)]
        # KV cells in all (one unified pool, or a stream of n_ctx per slot).
        self.kv_cells: int = getattr(runner, "n_kv_cells", self.n_ctx * runner.n_slots)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.moves = 0  # sequences moved to close a gap between busy slots
        self._gap_steps = 0
        # After a preemption, admit nothing until a running sequence finishes:
        # otherwise the victim is readmitted at once and the cache thrashes.
        self.admission_blocked = False
        # Rejected drafts must leave the KV cache: not possible in recurrent state.
        self.spec = spec if spec is not None and runner.supports_prefix_cache else SpecConfig()
        self.drafted = 0  # draft tokens verified
        self.accepted = 0  # of which the sampler accepted
        self.drafts = 0  # chunks that carried a draft (verification steps)

    # ---- admission -------------------------------------------------------

    def check_fits(self, prompt_len: int, max_tokens: int | None) -> None:
        """Reject a request that could never fit in the context, before it starts."""
        if prompt_len == 0:
            raise ValueError("prompt: must contain at least one token")
        need = prompt_len + (max_tokens or 0)
        limit = self.n_ctx if max_tokens is not None else self.n_ctx - 1  # 0: scoring only
        if need > limit:
            raise ContextOverflowError(
                f"prompt ({prompt_len} tokens) plus max_tokens ({max_tokens or 0}) exceeds the "
                f"context size of {self.n_ctx} tokens",
                n_prompt_tokens=prompt_len,
                n_ctx=self.n_ctx,
            )

    def add(self, seq: Sequence) -> None:
        self.check_fits(len(seq.prompt_ids), seq.limits.max_tokens)
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _free_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.seq is None]

    def _admit(self, seq: Sequence, plan: StepPlan, free: list[Slot]) -> None:
        target = self._choose_slot(seq, free, plan)
        free.remove(target)
        target.seq, target.cached = seq, []
        seq.slot = target.id
        seq.status = SequenceStatus.RUNNING
        seq.admitted_at = seq.admitted_at or time.perf_counter()
        self.waiting.remove(seq)
        self.running.append(seq)

    def _choose_slot(self, seq: Sequence, free: list[Slot], plan: StepPlan) -> Slot:
        """Pick a free slot and emit the KV edits that give it the longest reusable prefix:
        a free slot's own cache, a copy of another slot's KV, or a host-cache restore."""
        tokens = seq.all_ids
        # At least one token must be decoded to get logits; prompt logprobs need all of them.
        reuse = self.prefix_cache and seq.limits.cache_prompt and not seq.limits.echo_logprobs
        max_reuse = len(tokens) - 1 if reuse else 0
        own, own_len, src, src_len = self._slot_reuse(seq, tokens, max_reuse, free)
        cache = self.host_cache
        if cache is not None and max_reuse >= MIN_RESTORE_GAIN:
            failures = cache.stats.restore_failures
            restored = self._restore(
                seq, tokens, max_reuse, src_len if src else own_len, free, plan
            )
            if restored is not None:
                return restored
            if cache.stats.restore_failures != failures:  # the target slot's KV is gone
                own, own_len, src, src_len = self._slot_reuse(seq, tokens, max_reuse, free)
        if src is None:
            if len(own.cached) > own_len or not self.prefix_cache:
                if len(own.cached) > own_len:
                    self._save(own)  # the part past own_len is about to be dropped
                plan.kv_ops.append(KVOp("rm", own.id, own_len, -1))
            self._set_reused(seq, own_len)
            return own
        # Copy another slot's KV into the lowest free slot, then cut it to the prefix.
        target = min(free, key=lambda s: s.id)
        if target is not src:
            self._save(target)
        plan.kv_ops.append(KVOp("cp", target.id, -1, -1, src=src.id))
        plan.kv_ops.append(KVOp("rm", target.id, src_len, -1))
        self._set_reused(seq, src_len)
        return target

    def _slot_reuse(
        self, seq: Sequence, tokens: list[int], max_reuse: int, free: list[Slot]
    ) -> tuple[Slot, int, Slot | None, int]:
        """The free slot to take with its own reusable prefix, and a slot worth copying
        from (None if no other slot beats it by MIN_COPY_GAIN) with its prefix."""

        def value(s: Slot) -> tuple[int, int]:
            # A short shared prefix (a BOS, a chat header) saves less than it costs to leave
            # a gap between busy slots: with separate KV streams llama.cpp splits a step into
            # one ubatch per run of consecutive sequence ids. So below MIN_COPY_GAIN the
            # lowest free slot wins, which keeps the busy ones contiguous.
            n = min(common_prefix_len(s.cached, tokens), max_reuse)
            return (n if n >= MIN_COPY_GAIN else 0, -s.id)

        own = max(free, key=value)
        own_len = min(common_prefix_len(own.cached, tokens), max_reuse)
        src, src_len = None, own_len + MIN_COPY_GAIN - 1
        if max_reuse > src_len or seq.share_prefix_with is not None:
            if seq.share_prefix_with is not None:
                src_len = own_len  # n > 1 siblings always share the leader's prompt
            for s in self.slots:
                n = min(common_prefix_len(s.kv_tokens(), tokens), max_reuse)
                if n > src_len and s is not own:
                    src, src_len = s, n
        return own, own_len, src, src_len

    def _restore(
        self,
        seq: Sequence,
        tokens: list[int],
        max_reuse: int,
        slot_best: int,
        free: list[Slot],
        plan: StepPlan,
    ) -> Slot | None:
        """Restore the host cache's best entry into a free slot if it beats ``slot_best``
        by MIN_RESTORE_GAIN tokens; None if not worth it or the restore failed."""
        cache = self.host_cache
        assert cache is not None
        entry, n = cache.longest_prefix(tokens)
        if entry is None:
            return None
        n = usable_prefix(entry.n_tokens, min(n, max_reuse), self.runner.n_swa)
        if n < slot_best + MIN_RESTORE_GAIN:
            return None
        # The restore runs now, before this step's planned KV edits: never overwrite a
        # slot that one of them still copies from.
        sources = {op.src for op in plan.kv_ops if op.kind == "cp"}
        candidates = [s for s in free if s.id not in sources]
        if not candidates:
            return None
        target = min(candidates, key=lambda s: s.id)
        self._save(target)
        target.cached = []
        if not self.runner.restore_state(target.id, entry.state):
            # No room in the KV cache, or a state the context refuses: prefill instead.
            log.warning("could not restore %d cached tokens into slot %d", n, target.id)
            cache.stats.restore_failures += 1
            cache.discard(entry)
            return None
        cache.touch(entry, n)
        plan.kv_ops.append(KVOp("rm", target.id, n, -1))
        self._set_reused(seq, n)
        return target

    def has_unsaved_idle(self) -> bool:
        """Whether a free slot holds KV that the host cache has not been offered yet."""
        return self.host_cache is not None and any(
            s.seq is None and s.cached and not s.saved for s in self.slots
        )

    def save_idle(self) -> bool:
        """Save one free slot's KV to the host cache; False when there was none to save.

        The engine calls this while it has nothing else to do. A save costs a few ms per
        slot; done here, a returning prompt later pays only its restore, instead of a wave
        of new requests each paying the save of the slot it takes before its first token.
        """
        for s in self.slots:
            if s.seq is None and s.cached and not s.saved:
                self._save(s)
                return True
        return False

    def _save(self, slot: Slot) -> None:
        """Copy an idle slot's KV to the host cache before it is overwritten or dropped."""
        cache = self.host_cache
        tokens = slot.cached
        if cache is None or slot.saved:
            return
        slot.saved = True
        if len(tokens) < max(cache.min_tokens, MIN_RESTORE_GAIN) or cache.covers(tokens):
            return
        state = self.runner.save_state(slot.id, cache.capacity_bytes)
        if state is not None:
            cache.put(tokens, state)

    @staticmethod
    def _set_reused(seq: Sequence, n: int) -> None:
        seq.n_computed = n
        if seq.status == SequenceStatus.WAITING:  # first admission, not a resumed preemption
            seq.n_cached_prompt = n

    # ---- the step --------------------------------------------------------

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        free = [] if self.admission_blocked else self._free_slots()
        for seq in list(self.waiting):
            if not free:
                break
            sibling = seq.share_prefix_with
            if sibling is not None and not sibling.is_finished and not sibling.prefill_done:
                continue  # n > 1: copy the sibling's prompt KV once it exists
            if seq.limits.slot is not None:  # pinned: only that slot, once it is free
                pinned = [s for s in free if s.id == seq.limits.slot]
                if pinned:
                    free.remove(pinned[0])
                    self._admit(seq, plan, pinned)
                continue
            self._admit(seq, plan, free)
        if self.runner.wants_contiguous_slots:
            self._compact(plan)
        budget = self.n_batch
        # Generating sequences first: one token each keeps every stream moving, plus the
        # drafts while few sequences share the step (what the one-token rows leave).
        generating = [seq for seq in self.running if seq.n_pending == 1]
        drafting = self.spec.enabled and len(generating) <= self.spec.max_batch
        spare = budget - len(generating)
        for seq in generating:
            if budget <= 0:
                break
            draft = self._draft(seq, spare) if drafting and spare > 0 else []
            spare -= len(draft)
            self._add_chunk(plan, seq, 1, draft)
            budget -= 1 + len(draft)
        for seq in self.running:
            if seq.n_pending > 1 and budget > 0:
                k = min(seq.n_pending, budget)
                self._add_chunk(plan, seq, k)
                budget -= k
        return plan

    def _compact(self, plan: StepPlan) -> None:
        """Move the highest busy sequence into the lowest free slot below it, until no gap.

        A gap (slots 0 and 2 busy, 1 free) makes llama.cpp decode each step in one more
        ubatch, a full pass over the weights, for as long as it lasts; one copy of the
        sequence's KV stream costs less than a single such pass. A gap is left alone for
        GAP_PATIENCE steps first: under steady load the next request fills it for free.
        """
        if not self._has_gap():
            self._gap_steps = 0
            return
        self._gap_steps += 1
        if self._gap_steps <= GAP_PATIENCE:
            return
        self._gap_steps = 0
        while self._has_gap():
            free = [s for s in self.slots if s.seq is None]
            movable = [  # a sequence pinned to its slot (id_slot) stays there
                s
                for s in self.slots
                if s.seq is not None and s.seq.limits.slot is None and s.id > free[0].id
            ]
            if not movable:
                break
            src, dst = movable[-1], free[0]
            seq = src.seq
            self._save(dst)  # its idle KV is about to be overwritten by the move
            plan.kv_ops.append(KVOp("cp", dst.id, -1, -1, src=src.id))
            plan.kv_ops.append(KVOp("rm", src.id, 0, -1))
            dst.seq, dst.cached = seq, []
            src.seq, src.cached = None, []
            seq.slot = dst.id  # type: ignore[union-attr]
            self.moves += 1

    def _has_gap(self) -> bool:
        busy = [s.id for s in self.slots if s.seq is not None]
        return bool(busy) and busy[-1] + 1 > len(busy)

    def _draft(self, seq: Sequence, room: int) -> list[int]:
        """Guessed tokens to verify after ``seq``'s pending one (none if not worth it)."""
        cfg = self.spec
        asked = seq.limits.draft_max
        limit = min(cfg.draft_max if asked is None else asked, room, self.n_ctx - seq.n_tokens)
        if seq.limits.max_tokens is not None:  # the step yields up to len(draft) + 1 tokens
            limit = min(limit, seq.limits.max_tokens - len(seq.output_ids) - 1)
        if limit < cfg.draft_min:
            return []
        if seq.spec is None:
            seq.spec = SeqSpeculation(cfg)
        draft = seq.spec.draft(seq.prompt_ids, seq.output_ids, limit)
        return draft if len(draft) >= cfg.draft_min else []

    def _add_chunk(
        self, plan: StepPlan, seq: Sequence, k: int, draft: list[int] | None = None
    ) -> None:
        start = seq.n_computed
        ids = seq.all_ids
        tokens = ids[start : start + k]
        sample = start + k == len(ids) and seq.limits.max_tokens != 0
        all_logits = seq.limits.echo_logprobs and start < len(seq.prompt_ids)
        chunk = ScheduledChunk(seq, tokens, start, sample, all_logits)
        if draft:
            chunk.tokens += draft
            chunk.n_draft = len(draft)
        plan.chunks.append(chunk)

    def postprocess(
        self, plan: StepPlan, results: list[ChunkResult]
    ) -> list[tuple[Sequence, ChunkResult]]:
        """Advance sequences past the decoded chunks; apply token-level stop rules.

        Returns the sequences with something to report: sampled tokens, prompt
        log-probabilities, or a finish. Several tokens of one sequence (accepted drafts)
        meet the stop rules one by one, as if they had come in separate steps; ``res``
        keeps only those that became output.
        """
        sampled = []
        now = time.perf_counter()
        for chunk, res in zip(plan.chunks, results, strict=True):
            seq = chunk.seq
            seq.n_computed += len(chunk.tokens) - chunk.n_draft
            if seq.limits.max_tokens == 0 and seq.n_computed >= len(seq.prompt_ids):
                # Prompt-only request (e.g. echo with prompt logprobs): done after prefill.
                self.finish(seq, SequenceStatus.FINISHED_LENGTH)
                sampled.append((seq, res))
                continue
            if chunk.n_draft:
                self._verify(chunk, res)
            if not chunk.sample or not res.tokens or seq.is_finished:
                if res.prompt_logprobs is not None:
                    sampled.append((seq, res))
                continue
            if seq.first_token_at == 0.0:
                seq.first_token_at = now
            seq.prev_token_at, seq.last_token_at = seq.last_token_at, now
            status = self._append_output(seq, res)
            if chunk.n_draft and seq.n_computed > seq.n_tokens:  # stopped inside the draft
                seq.n_computed = seq.n_tokens
                self.runner.release_slot(seq.slot, seq.n_computed)  # type: ignore[arg-type]
            if status is not None:
                self.finish(seq, status)
            sampled.append((seq, res))
        return sampled

    def _verify(self, chunk: ScheduledChunk, res: ChunkResult) -> None:
        """Count the draft tokens the sampler accepted; drop the KV of the others."""
        seq, draft = chunk.seq, chunk.draft
        accepted = 0
        while accepted < len(res.tokens) and accepted < len(draft):
            if res.tokens[accepted] != draft[accepted]:
                break
            accepted += 1
        seq.n_computed += accepted
        self.drafted += len(draft)
        self.accepted += accepted
        self.drafts += 1
        if seq.spec is not None:
            asked = seq.limits.draft_max
            cap = self.spec.draft_max if asked is None else min(asked, self.spec.draft_max)
            seq.spec.update(len(draft), accepted, cap)
        if accepted < len(draft) and seq.slot is not None:
            self.runner.release_slot(seq.slot, seq.n_computed)

    def _append_output(self, seq: Sequence, res: ChunkResult) -> SequenceStatus | None:
        """Append sampled tokens until a stop rule; the finish status, if one applied."""
        eog = self.runner.eog_ids
        max_tokens = seq.limits.max_tokens
        for i, token in enumerate(res.tokens):
            if token in eog and not seq.bans_eog:
                _keep(res, i)  # the end-of-generation token is not part of the output
                return SequenceStatus.FINISHED_STOPPED
            seq.output_ids.append(token)
            if (max_tokens is not None and len(seq.output_ids) >= max_tokens) or (
                seq.n_tokens >= self.n_ctx
            ):
                _keep(res, i + 1)
                return SequenceStatus.FINISHED_LENGTH
        return None

    def drop_output(self, seq: Sequence, n: int) -> None:
        """Forget the last ``n`` output tokens (sampled in one step past a stop string)."""
        if n <= 0:
            return
        del seq.output_ids[-n:]
        if seq.n_computed > seq.n_tokens:
            seq.n_computed = seq.n_tokens
            if seq.slot is not None:
                self.runner.release_slot(seq.slot, seq.n_computed)

    # ---- finishing, aborting, preempting ----------------------------------

    def finish(self, seq: Sequence, status: SequenceStatus) -> None:
        if seq.is_finished:
            return
        seq.status = status
        if seq in self.running:
            self.running.remove(seq)
            self.admission_blocked = False
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.slot is not None:
            slot = self.slots[seq.slot]
            slot.seq, slot.last = None, seq
            if self.prefix_cache:
                slot.cached, slot.saved = seq.all_ids[: seq.n_computed], False
            else:
                slot.cached = []
                self.runner.release_slot(slot.id, 0)
            seq.slot = None
        self.runner.free_sampler(seq)

    def handle_kv_full(self) -> Sequence | None:
        """The KV cache had no room: drop idle prefix caches, else preempt the newest sequence.

        Returns the sequence that must be failed (it alone cannot fit), else None.
        """
        idle = [s for s in self.slots if s.seq is None and s.cached]
        if idle:
            for s in idle:
                self._save(s)
                self.runner.release_slot(s.id, 0)
                s.cached = []
            return None
        if len(self.running) <= 1:
            return self.running[0] if self.running else None
        victim = self.running[-1]  # most recently admitted: least work lost
        self.running.remove(victim)
        slot = self.slots[victim.slot]  # type: ignore[index]
        slot.cached, slot.saved = victim.all_ids[: victim.n_computed], False
        self._save(slot)  # its work comes back from the host cache when it resumes
        self.runner.release_slot(slot.id, 0)
        slot.seq, slot.cached = None, []
        victim.slot = None
        victim.n_computed = 0
        victim.status = SequenceStatus.PREEMPTED
        self.waiting.appendleft(victim)
        self.admission_blocked = True
        self.preemptions += 1
        return None

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.seq is not None)

    def kv_tokens(self) -> int:
        """Tokens whose KV the slots hold now, reused prefixes of free slots included.
        Read from other threads (for /metrics): a snapshot, not exact during a step."""
        n = 0
        for s in self.slots:
            seq = s.seq
            n += seq.n_computed if seq is not None else len(s.cached)
        return n


def _keep(res: ChunkResult, n: int) -> None:
    """Cut a result to its first ``n`` tokens (a stop rule ended the sequence there)."""
    del res.tokens[n:]
    if res.logprobs is not None:
        del res.logprobs[n:]
