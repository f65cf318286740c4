"""Engine: one thread owns the runner (and so the llama_context) and steps it.

    step() = schedule -> runner.execute -> postprocess -> output stage -> emit

Callers on an asyncio loop submit requests with ``add_request`` and read a
``RequestStream``; the thread hands results back with call_soon_threadsafe.
No lock serialises requests: they all share each step's single decode.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferrousforge.engine import embeddings
from ferrousforge.engine.embeddings import Embedder, EmbedJob
from ferrousforge.engine.output import Detokenizer
from ferrousforge.engine.prompt_cache import PromptCache
from ferrousforge.engine.runner import ChunkResult, KVCacheFull, LogprobEntry, Runner
from ferrousforge.engine.scheduler import Scheduler
from ferrousforge.engine.sequence import FINISH_REASONS, SamplingLimits, Sequence, SequenceStatus
from ferrousforge.engine.slot_files import SlotAction, SlotCommand, run_command
from ferrousforge.engine.speculation import SpecConfig
from ferrousforge.engine.stats import EngineStats, SeqTimes
from ferrousforge.errors import EngineOverloadedError, EngineStoppedError, SamplingBudgetError

log = logging.getLogger(__name__)

SLOW_SAMPLES_TO_END = 2  # tokens in a row over sample_budget_s that end a request


@dataclass(slots=True)
class RequestOutput:
    """One delta of one request, as the engine emits it."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[LogprobEntry] | None = None
    prompt_logprobs: list[LogprobEntry] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float = 0.0
    generation_s: float = 0.0
    error: BaseException | None = None


def _push_all(items: list[_Delivery]) -> None:
    for stream, out in items:
        stream._push(out)


class RequestStream:
    """The caller's side of one request: an async iterator of RequestOutput."""

    def __init__(self, engine: Engine, seq: Sequence, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self.seq = seq
        self._loop = loop
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.finished = False

    @property
    def request_id(self) -> int:
        return self.seq.request_id

    def _push(self, out: RequestOutput) -> None:
        self._queue.put_nowait(out)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        out = await self._queue.get()
        if out.error is not None:
            self.finished = True
            raise out.error
        if out.finish_reason is not None:
            self.finished = True
        return out

    def abort(self) -> None:
        """Stop generating; the slot is freed within one step."""
        if not self.finished:
            self.finished = True
            self._engine.abort(self.seq)


_Delivery = tuple[RequestStream, RequestOutput]


class Engine:
    def __init__(
        self,
        runner: Runner,
        piece: Callable[[int], bytes],
        *,
        max_waiting: int = 256,
        prefix_cache: bool = True,
        name: str = "engine",
        sample_budget_s: float | None = None,
        spec: SpecConfig | None = None,
        host_cache_bytes: int = 0,
        embedder_factory: Callable[[], Embedder] | None = None,
    ) -> None:
        """``host_cache_bytes``: the budget of the host-RAM prompt cache (0: none).
        ``embedder_factory`` makes the embedding context, in this thread, on the first
        embedding request (None: the model serves no embeddings)."""
        self.runner = runner
        # Sampling runs on this thread between decodes: one request's slow sampling (a huge
        # grammar) would stall every other stream, so a token over budget ends its request.
        self.sample_budget_s = sample_budget_s
        host_cache = PromptCache(host_cache_bytes) if host_cache_bytes > 0 else None
        self.scheduler = Scheduler(
            runner, prefix_cache=prefix_cache, spec=spec, host_cache=host_cache
        )
        self.piece = piece
        self.max_waiting = max_waiting
        self.stats = EngineStats()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._embedder_factory = embedder_factory
        self._embedder: Embedder | None = None
        self._embeds: deque[EmbedJob] = deque()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._unfinished = 0  # requests accepted and not yet finished (any thread)
        # Sequences whose caller has not yet been told how they ended: whatever goes wrong
        # in a step, each of them gets exactly one final output or error.
        self._live: set[Sequence] = set()
        # Outputs of the current step, per caller loop, until _deliver hands them over.
        self._outbox: dict[asyncio.AbstractEventLoop, list[_Delivery]] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"ferrousforge-{name}", daemon=True)
        self._thread.start()

    # ---- caller side (any thread) -----------------------------------------

    def check_fits(self, prompt_len: int, max_tokens: int | None) -> None:
        self.scheduler.check_fits(prompt_len, max_tokens)

    def add_request(
        self,
        prompt_ids: list[int],
        limits: SamplingLimits,
        sampler: Any = None,
        *,
        share_prefix_with: Sequence | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RequestStream:
        """Queue a request. Raises EngineOverloadedError when the waiting queue is full,
        ContextOverflowError when it can never fit, EngineStoppedError after shutdown."""
        loop = loop or asyncio.get_running_loop()
        self.scheduler.check_fits(len(prompt_ids), limits.max_tokens)
        seq = Sequence(
            next(self._ids),
            list(prompt_ids),
            limits,
            sampler=sampler,
            share_prefix_with=share_prefix_with,
        )
        seq.output = Detokenizer(limits.piece or self.piece, limits.stop)
        stream = RequestStream(self, seq, loop)
        seq.sink = self._make_sink(stream, loop)
        with self._cond:
            if self._stopping:
                raise EngineStoppedError("the engine is shut down")
            if self._unfinished >= self.runner.n_slots + self.max_waiting:
                self.stats.requests_rejected += 1
                raise EngineOverloadedError(
                    f"server busy: {self._unfinished} requests in flight "
                    f"({self.runner.n_slots} slots + {self.max_waiting} waiting)",
                    retry_after=1.0,
                )
            self._unfinished += 1
            self._live.add(seq)
            self._inbox.append(("add", seq))
            self._cond.notify()
        return stream

    def abort(self, seq: Sequence) -> None:
        with self._cond:
            self._inbox.append(("abort", seq))
            self._cond.notify()

    def add_embedding(
        self, inputs: list[list[int]], loop: asyncio.AbstractEventLoop | None = None
    ) -> asyncio.Future[list]:
        """Queue token-id inputs for pooled embeddings; the future gets one vector each.

        Each input must fit one embedding decode (the caller checks ``embedder`` limits).
        Cancelling the future drops the inputs not yet embedded.
        """
        if self._embedder_factory is None:
            raise ValueError("model: this model serves no embeddings")
        loop = loop or asyncio.get_running_loop()
        job = EmbedJob(inputs, loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise EngineStoppedError("the engine is shut down")
            self._inbox.append(("embed", job))
            self._cond.notify()
        return job.future

    def slot_command(
        self,
        action: SlotAction,
        slot: int = -1,
        *,
        path: str | None = None,
        filename: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Future:
        """Run a slot command on the engine thread between steps (see slot_files): "list"
        (a SlotInfo per slot), "erase", "save" or "restore" ``slot`` to/from ``path``.
        The future gets llama-server's answer, or SlotBusyError / ValueError / OSError."""
        loop = loop or asyncio.get_running_loop()
        cmd = SlotCommand(action, slot, loop.create_future(), loop, path, filename)
        with self._cond:
            if self._stopping:
                raise EngineStoppedError("the engine is shut down")
            self._inbox.append(("slot", cmd))
            self._cond.notify()
        return cmd.future

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Cancel everything in flight and stop the thread. False if it did not stop in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def embedder(self) -> Embedder | None:
        """The embedding context, once the first embedding request made it."""
        return self._embedder

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet finished (running, waiting or still in the inbox)."""
        return self._unfinished

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _make_sink(self, stream: RequestStream, loop: asyncio.AbstractEventLoop):
        def sink(out: RequestOutput) -> None:  # engine thread only
            self._outbox.setdefault(loop, []).append((stream, out))

        return sink

    def _deliver(self) -> None:
        """Hand the step's outputs to each caller's loop in one wake-up.

        One call_soon_threadsafe per loop per step, not per token: each one writes to the
        loop's self-pipe and wakes it, CPU taken from the decode running beside it.
        """
        while self._outbox:
            outbox, self._outbox = self._outbox, {}
            for loop, items in outbox.items():
                try:
                    loop.call_soon_threadsafe(_push_all, items)
                except RuntimeError:  # the caller's loop is closed: nobody is listening
                    for stream, _ in items:  # a no-op for those already finished
                        self._finish(stream.seq, SequenceStatus.FINISHED_ABORTED)

    # ---- engine thread ------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._inbox and not self._stopping and not self._has_work():
                    if self.scheduler.has_unsaved_idle():
                        break  # idle time: save a finished prompt's KV to the host cache
                    self._cond.wait()
                inbox = list(self._inbox)
                self._inbox.clear()
                stopping = self._stopping
            if not inbox and not stopping and not self._has_work():
                self.scheduler.save_idle()  # one slot, then look at the inbox again
                continue
            for kind, item in inbox:
                if kind == "add":
                    try:
                        self.scheduler.add(item)
                    except Exception as e:  # checked by the caller already; belt and braces
                        self._reject(item, e)
                elif kind == "embed":
                    self._embeds.append(item)
                elif kind == "slot":
                    self._slot_command(item)
                else:
                    self._finish(item, SequenceStatus.FINISHED_ABORTED)
            if stopping:
                self._cancel_all()
                self._deliver()
                return
            if self.scheduler.has_work():
                try:
                    self.step()
                except Exception as e:  # never let one bad step kill the thread
                    log.exception("engine step failed; failing the running requests")
                    self._fail_running(e)
            self._deliver()
            if self._embeds:
                self._embed_step()

    def _slot_command(self, cmd: SlotCommand) -> None:
        try:
            result = run_command(cmd, self.scheduler, self.runner, self.scheduler.spec.enabled)
        except Exception as e:  # the caller's error (busy slot, bad file), not the engine's
            cmd.settle(error=e)
        else:
            cmd.settle(result)

    def _has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._embeds)

    def _embed_step(self) -> None:
        """One embedding decode between generation steps (many inputs, each whole)."""
        try:
            if self._embedder is None:
                self._embedder = self._embedder_factory()  # type: ignore[misc]
            emb = self._embedder
        except Exception as e:  # e.g. no memory for the second context: fail them all
            log.exception("could not create the embedding context")
            embeddings.fail_all(self._embeds, e)
            return
        batch = embeddings.next_batch(self._embeds, emb.max_tokens, emb.max_seqs)
        if not batch:
            return
        inputs = [job.inputs[i] for job, i in batch]
        t0 = time.perf_counter()
        try:
            vectors = emb.embed(inputs)
        except Exception as e:
            log.exception("embedding decode failed; failing its requests")
            embeddings.fail(self._embeds, batch, e)
            return
        st = self.stats
        now = time.perf_counter()
        finished = [job for job, i in batch if i == len(job.inputs) - 1]  # inputs go in order
        with st.lock:
            st.embedding_decodes += 1
            st.embedding_seconds += now - t0
            st.embedding_inputs += len(inputs)
            st.embedding_tokens += sum(len(x) for x in inputs)
            st.embedding_requests += len(finished)
            for job in finished:
                st.embedding_latency.observe(now - job.arrival)
        embeddings.settle(self._embeds, batch, vectors)

    def step(self) -> None:
        plan = self.scheduler.schedule()
        if not plan.chunks:
            if not plan.kv_ops:
                time.sleep(0.001)  # only siblings waiting on a prefill: yield briefly
            return
        t0 = time.perf_counter()
        try:
            results = self.runner.execute(plan)
        except KVCacheFull:
            self._on_kv_full()
            return
        self._record_step(plan, time.perf_counter() - t0)
        for seq, res in self.scheduler.postprocess(plan, results):
            self._emit(seq, res)
        for chunk, res in zip(plan.chunks, results, strict=True):
            self._end_if_unsampled(chunk.seq, res)

    def _end_if_unsampled(self, seq: Sequence, res: ChunkResult) -> None:
        """Finish a sequence whose sampling failed, ran over budget, or had nothing left."""
        budget = self.sample_budget_s
        if res.error is None and budget is not None:
            # A costly grammar is slow at every token; one slow token alone can be the host
            # (a busy or stolen CPU), so only a run of them ends the request.
            seq.slow_samples = seq.slow_samples + 1 if res.sample_s > budget else 0
            if seq.slow_samples >= SLOW_SAMPLES_TO_END:
                res.error = SamplingBudgetError(
                    f"sampling took {res.sample_s * 1000:.0f} ms for the last token, and over "
                    f"the per-token budget of {budget * 1000:.0f} ms (sample_budget_ms) for "
                    f"{seq.slow_samples} tokens in a row; the request was ended so that it "
                    "does not slow the others (simplify its grammar)"
                )
        if res.error is not None:
            log.warning("request %d failed while sampling: %s", seq.request_id, res.error)
            self._fail(seq, res.error)
        elif res.exhausted:
            # A completed grammar: nothing more may be generated, whatever ignore_eos says.
            self._finish(seq, SequenceStatus.FINISHED_STOPPED)

    def _on_kv_full(self) -> None:
        before = self.scheduler.preemptions
        stuck = self.scheduler.handle_kv_full()
        if self.scheduler.preemptions > before:
            self.stats.preemptions += 1
            log.info("KV cache full: preempted a sequence (it resumes by recomputation)")
        if stuck is not None:
            self._finish(stuck, SequenceStatus.FINISHED_LENGTH)

    def _record_step(self, plan, seconds: float) -> None:
        st = self.stats
        with st.lock:
            st.decode_steps += 1
            st.step_seconds += seconds
            st.step_tokens += plan.n_tokens
            st.busy_slots_sum += sum(1 for c in plan.chunks if c.sample)
            st.busy_seqs_sum += len(plan.chunks)
            st.draft_tokens = self.scheduler.drafted
            st.draft_accepted_tokens = self.scheduler.accepted
            st.running = len(self.scheduler.running)
            st.waiting = len(self.scheduler.waiting)

    def _emit(self, seq: Sequence, res: ChunkResult) -> None:
        ids = res.tokens
        logprobs = res.logprobs or None
        texts = []
        for i, token in enumerate(ids):
            text, hit_stop = seq.output.feed(token)
            texts.append(text)
            if hit_stop:  # nothing sampled after the stop string is output
                self.scheduler.drop_output(seq, len(ids) - i - 1)
                ids = ids[: i + 1]
                logprobs = logprobs[: i + 1] if logprobs else None
                seq.stop_reason = seq.output.stopped_on
                self.scheduler.finish(seq, SequenceStatus.FINISHED_STOPPED)
                break
        if ids and seq.prev_token_at:
            # Tokens accepted together share the step's interval.
            gap = (seq.last_token_at - seq.prev_token_at) / len(ids)
            for _ in ids:
                self.stats.inter_token.observe(gap)
        out = RequestOutput(
            "".join(texts), ids, logprobs=logprobs, prompt_logprobs=res.prompt_logprobs
        )
        if seq.is_finished:
            out.text += seq.output.flush()
            self._fill_final(seq, out)
        if seq.sink is not None and (out.text or ids or out.finish_reason or out.prompt_logprobs):
            seq.sink(out)

    def _fill_final(self, seq: Sequence, out: RequestOutput) -> None:
        out.finish_reason = FINISH_REASONS[seq.status]
        out.prompt_tokens = len(seq.prompt_ids)
        out.completion_tokens = len(seq.output_ids)
        out.cached_tokens = seq.n_cached_prompt
        start = seq.first_token_at or time.perf_counter()
        out.ttft_s = start - seq.arrival
        out.generation_s = max(0.0, (seq.last_token_at or start) - start)
        self._release(seq)
        st = self.stats
        with st.lock:
            st.running = len(self.scheduler.running)
            st.waiting = len(self.scheduler.waiting)
            if seq.status == SequenceStatus.FINISHED_ABORTED:
                st.requests_aborted += 1
            else:
                st.requests_finished += 1
            st.prompt_tokens += out.prompt_tokens
            st.generated_tokens += out.completion_tokens
            st.cached_prompt_tokens += out.cached_tokens
            st.prefix_cache_hits += 1 if out.cached_tokens else 0
            if seq.first_token_at:
                st.ttft.observe(out.ttft_s)
            st.add_finished(
                max(0, min(seq.n_computed, out.prompt_tokens) - out.cached_tokens),
                out.completion_tokens,
                out.prompt_tokens + out.completion_tokens,
                SeqTimes(seq.arrival, seq.admitted_at, seq.first_token_at, seq.last_token_at),
            )
            st.request_latency.observe(time.perf_counter() - seq.arrival)

    def _finish(self, seq: Sequence, status: SequenceStatus) -> None:
        if seq.is_finished:
            return
        if seq.status == SequenceStatus.WAITING and seq not in self.scheduler.waiting:
            seq.status = status  # aborted before it reached the scheduler
            self.runner.free_sampler(seq)
        else:
            self.scheduler.finish(seq, status)
        out = RequestOutput(
            seq.output.flush() if status != SequenceStatus.FINISHED_ABORTED else "", []
        )
        self._fill_final(seq, out)
        if seq.sink is not None:
            seq.sink(out)

    def _release(self, seq: Sequence) -> bool:
        """Count ``seq``'s caller as told its outcome; False if it already was."""
        with self._cond:
            if seq not in self._live:
                return False
            self._live.discard(seq)
            self._unfinished -= 1
            return True

    def _reject(self, seq: Sequence, error: Exception) -> None:
        seq.status = SequenceStatus.FINISHED_ABORTED
        self.runner.free_sampler(seq)
        if self._release(seq) and seq.sink is not None:
            seq.sink(RequestOutput("", [], error=error))

    def _fail(self, seq: Sequence, error: BaseException) -> None:
        """End one sequence (finished or not) with an error for its caller, once."""
        try:
            self.scheduler.finish(seq, SequenceStatus.FINISHED_ABORTED)  # no-op if finished
        finally:
            if self._release(seq) and seq.sink is not None:
                seq.sink(RequestOutput("", [], error=error))

    def _fail_running(self, error: Exception) -> None:
        """After a failed step: fail every started sequence whose caller is still waiting."""
        for seq in list(self._live):
            if seq.status in (SequenceStatus.WAITING, SequenceStatus.PREEMPTED):
                continue  # not started (or without KV): it can still run
            try:
                self._fail(seq, error)
            except Exception:
                log.exception("could not finish request %d cleanly", seq.request_id)
        for slot in self.scheduler.slots:
            slot.cached = []
        self.runner.reset()

    def _cancel_all(self) -> None:
        err = EngineStoppedError("the engine was shut down")
        embeddings.fail_all(self._embeds, err)
        for seq in list(self._live):
            try:
                self._fail(seq, err)
            except Exception:
                log.exception("could not finish request %d cleanly", seq.request_id)
