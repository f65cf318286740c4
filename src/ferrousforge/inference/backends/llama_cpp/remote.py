"""A model on RPC workers, run in a child process behind the engine's Runner protocol.

ggml-rpc aborts its process when a worker cannot be reached or disappears, and its sockets
have no timeouts. So the llama_model and llama_context with RPC devices (and the sampler
chains that read their logits) live in a child process; the server keeps tokenization and
templates on a vocab-only load of the same file. ``RemoteRunner`` sends each engine step to
the child and waits at most ``rpc_step_timeout_s``: a child that dies (a lost worker) or
hangs (a paused one) fails the step with RemoteWorkerError; the next step starts a fresh
child, so the model recovers when its workers come back, and other models never notice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ferrousforge.engine.runner import ChunkResult, KVOp, ScheduledChunk, StepPlan
from ferrousforge.engine.sequence import SamplingLimits, Sequence
from ferrousforge.errors import RemoteWorkerError
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.inference.memory import ContextChoice

log = logging.getLogger(__name__)
LOAD_TIMEOUT_S = 600.0  # sending the weights to the workers
CHILD_MODULE = "ferrousforge.inference.backends.llama_cpp.rpc_child"


@dataclass(slots=True)
class RemoteSampler:
    """The parent's stand-in for a sequence's sampler chain (built in the child)."""

    options: Any  # InferenceOptions
    key: int = 0

    def close(self) -> None:  # the chain lives in the child; RemoteRunner.free_sampler frees it
        pass


@dataclass(slots=True)
class ChildInfo:
    """What the child reports once its model and context are up."""

    n_slots: int
    n_batch: int
    n_ctx: int
    n_ctx_seq: int
    n_ctx_total: int
    eog_ids: frozenset[int]
    supports_prefix_cache: bool
    wants_contiguous_slots: bool
    n_swa: int
    description: str


@dataclass(frozen=True, slots=True)
class EmbedderInfo:
    pooling: str
    n_out: int
    max_tokens: int
    max_seqs: int


class RemoteRunner:
    """The engine's Runner, executed by a child process. Used only from the engine thread."""

    def __init__(self, path: Path, config: BackendConfig, choice: ContextChoice) -> None:
        self.path = path
        self.config = dataclasses.replace(config, progress_callback=None)
        self.choice = choice  # the KV cells and layout for the child's context
        self._proc: Any = None
        self._conn: Any = None
        self._sent: set[int] = set()  # sequence keys whose options the child has
        self._frees: list[int] = []
        self._keys = 0
        self._lost: RemoteWorkerError | None = None
        info = self._start()
        self.info = info
        self.n_slots, self.n_batch, self.n_ctx = info.n_slots, info.n_batch, info.n_ctx_seq
        self.eog_ids = info.eog_ids
        self.supports_prefix_cache = info.supports_prefix_cache
        self.wants_contiguous_slots = info.wants_contiguous_slots
        self.n_swa = info.n_swa

    # ---- the child ---------------------------------------------------------------

    def _start(self) -> ChildInfo:
        from ferrousforge.inference.backends.llama_cpp.rpc import check_reachable

        check_reachable(self.config.rpc_servers)
        # A fresh interpreter (not fork: this process has threads and llama.cpp state), and
        # not multiprocessing's spawn, which re-runs the caller's __main__ module.
        mine, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # A lost worker aborts the child: its message, not a gdb backtrace, in the log.
                env={**os.environ, "GGML_NO_BACKTRACE": "1"},
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._proc, self._conn = proc, Connection(mine.detach())
        self._sent.clear()
        self._frees.clear()
        try:
            info = self._call(("start", str(self.path), self.config, self.choice), LOAD_TIMEOUT_S)
        except BaseException:
            self._kill()
            raise
        log.info("rpc: %s loaded on %s", self.path.name, ", ".join(self.config.rpc_servers))
        return info

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def _call(self, msg: tuple, timeout: float | None = None) -> Any:
        """Send one request; the child's answer, or RemoteWorkerError (the child is killed)."""
        if self._proc is None:
            self.info = self._start()  # after a lost worker: try again with a fresh child
        timeout = self.config.rpc_step_timeout_s if timeout is None else timeout
        t0 = time.monotonic()
        try:
            self._conn.send(msg)
            if not self._conn.poll(timeout):
                self._kill()
                raise RemoteWorkerError(
                    f"rpc: {self.path.name}: no answer from the workers "
                    f"({', '.join(self.config.rpc_servers)}) in {timeout:g} s; a worker is "
                    "stopped or unreachable (rpc_step_timeout_s)"
                )
            kind, value = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError) as e:
            code = self._proc.poll() if self._proc is not None else None
            self._kill()
            raise RemoteWorkerError(
                f"rpc: {self.path.name}: the connection to a worker "
                f"({', '.join(self.config.rpc_servers)}) was lost after "
                f"{time.monotonic() - t0:.1f} s (llama.cpp's RPC client exited with code "
                f"{code}); the next request reconnects"
            ) from e
        if kind == "err":
            raise value
        return value

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(("close",))
                self._proc.wait(10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self._kill()

    # ---- Runner ------------------------------------------------------------------

    def execute(self, plan: StepPlan) -> list[ChunkResult]:
        if self._lost is not None:
            # The child died outside a step: the scheduler still counts on its KV, and
            # failing this step is what makes the engine forget it.
            lost, self._lost = self._lost, None
            raise lost
        chunks = [self._wire(ch) for ch in plan.chunks]
        frees, self._frees = self._frees, []
        ops = [(o.kind, o.seq, o.p0, o.p1, o.src) for o in plan.kv_ops]
        return self._call(("execute", ops, chunks, frees))

    def _wire(self, ch: ScheduledChunk) -> tuple:
        seq = ch.seq
        sampler = seq.sampler
        if not sampler.key:
            self._keys += 1
            sampler.key = self._keys
        options = None
        if sampler.key not in self._sent:
            self._sent.add(sampler.key)
            options = sampler.options
        lim = seq.limits
        return (
            sampler.key,
            seq.slot,
            ch.tokens,
            ch.pos0,
            ch.sample,
            ch.all_logits,
            ch.n_draft,
            len(seq.output_ids),
            (lim.logprobs, lim.ignore_eos, lim.min_tokens),
            options,
            seq.prompt_ids if ch.all_logits else None,
        )

    def _on_child(self, default: Any, *msg: Any) -> Any:
        """A call between steps: with no child there is no KV to edit (``default``); a child
        lost here fails the next step instead of the scheduler's bookkeeping."""
        if self._proc is None:
            return default
        try:
            return self._call_between_steps(("runner", *msg))
        except RemoteWorkerError as e:
            log.error("%s", e)
            return default

    # ---- Embedder (the embedding context lives in the child too) ------------------

    def embedder_info(self) -> EmbedderInfo:
        """Make the child's embedding context (on the workers' weights); its limits."""
        return self._call_between_steps(("embedder_info",), LOAD_TIMEOUT_S)

    def embed(self, inputs: list[list[int]]) -> list:
        return self._call_between_steps(("embed", inputs))

    def _call_between_steps(self, msg: tuple, timeout: float | None = None) -> Any:
        """A call outside the engine's steps: a child lost here took the generation KV with
        it, so the next step fails (the scheduler forgets that KV) before a new child runs.
        A child that could not even start had no KV to lose."""
        had_child = self._proc is not None
        try:
            return self._call(msg, timeout)
        except RemoteWorkerError as e:
            if had_child:
                self._lost = e
            raise

    def free_sampler(self, seq: Sequence) -> None:
        key = getattr(seq.sampler, "key", 0)
        if key and key in self._sent:
            self._sent.discard(key)
            self._frees.append(key)

    def release_slot(self, slot: int, keep: int) -> None:
        self._on_child(None, "release_slot", slot, keep)

    def save_state(self, slot: int, max_bytes: int) -> bytes | bytearray | None:
        return self._on_child(None, "save_state", slot, max_bytes)

    def restore_state(self, slot: int, state: bytes | bytearray) -> bool:
        return self._on_child(False, "restore_state", slot, bytes(state))

    def save_slot_file(self, slot: int, path: str, tokens: list[int]) -> int:
        return self._on_child(0, "save_slot_file", slot, path, tokens)

    def load_slot_file(self, slot: int, path: str) -> tuple[int, list[int]]:
        return self._on_child((0, []), "load_slot_file", slot, path)

    def reset(self) -> None:
        self._on_child(None, "reset")


# ---- the child process ------------------------------------------------------------


class _Count:
    """Stands for a sequence's output ids in the child: the runner needs only their count."""

    __slots__ = ("n",)

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class _Child:
    def __init__(self, path: str, config: BackendConfig, choice: ContextChoice) -> None:
        from ferrousforge.inference.backend import AcceleratorType
        from ferrousforge.inference.backends.llama_cpp.context import LlamaContext
        from ferrousforge.inference.backends.llama_cpp.library import load_library
        from ferrousforge.inference.backends.llama_cpp.model import LlamaModel
        from ferrousforge.inference.backends.llama_cpp.rpc import rpc_devices
        from ferrousforge.inference.backends.llama_cpp.runner import LlamaRunner

        lib = load_library(config.library_path)
        self.lib = lib
        self.config = config
        devices = rpc_devices(lib, config.rpc_servers)
        self.model = LlamaModel(lib, Path(path), config, AcceleratorType.Cpu(), devices=devices)
        self.context = LlamaContext(lib, self.model, config, choice)
        self.runner = LlamaRunner(self.context)
        self.seqs: dict[int, Sequence] = {}
        self.bad: dict[int, BaseException] = {}  # a sampler that could not be built
        self.embedder: Any = None  # made on the first embedding request

    def _embedder(self) -> Any:
        """The embedding context, made at first use (also in a child started again after a
        lost worker)."""
        from ferrousforge.inference.backends.llama_cpp.embedder import LlamaEmbedder

        if self.embedder is None:
            self.embedder = LlamaEmbedder(self.lib, self.model, self.config)
        return self.embedder

    def embedder_info(self) -> EmbedderInfo:
        e = self._embedder()
        return EmbedderInfo(e.pooling, e.n_out, e.max_tokens, e.max_seqs)

    def embed(self, inputs: list[list[int]]) -> list:
        return self._embedder().embed(inputs)

    def info(self) -> ChildInfo:
        r, c = self.runner, self.context
        return ChildInfo(
            r.n_slots,
            r.n_batch,
            c.n_ctx,
            c.n_ctx_seq,
            c.n_ctx,
            frozenset(r.eog_ids),
            r.supports_prefix_cache,
            r.wants_contiguous_slots,
            r.n_swa,
            self.model.description,
        )

    def _seq(self, w: tuple) -> tuple[Sequence, bool]:
        key, slot, _t, _p, _s, _a, _d, n_out, (logprobs, ignore_eos, min_tokens), opts, prompt = w
        seq = self.seqs.get(key)
        if seq is None:
            seq = Sequence(key, [], SamplingLimits())
            seq.output_ids = _Count()  # type: ignore[assignment]
            self.seqs[key] = seq
            if opts is not None:
                self._build_sampler(key, seq, opts)
        seq.slot = slot
        seq.output_ids.n = n_out  # type: ignore[attr-defined]
        seq.limits.logprobs, seq.limits.ignore_eos = logprobs, ignore_eos
        seq.limits.min_tokens = min_tokens
        if prompt is not None:
            seq.prompt_ids = prompt
        return seq, key in self.bad

    def _build_sampler(self, key: int, seq: Sequence, opts) -> None:
        from ferrousforge.inference.backends.llama_cpp.sampler import SamplerChain

        vocab = self.model.vocab
        budget = self.config.sample_budget_ms / 1000 if self.config.sample_budget_ms else None
        try:
            seq.sampler = SamplerChain(
                self.lib,
                vocab.ptr,
                vocab.n_tokens,
                opts,
                self.context.n_ctx_seq,
                budget_s=budget,
                piece=lambda t: vocab.piece(t, True),
            )
        except Exception as e:  # the request fails, as a bad grammar fails locally
            self.bad[key] = e

    def execute(self, ops: list, chunks: list, frees: list[int]) -> list[ChunkResult]:
        for key in frees:
            seq = self.seqs.pop(key, None)
            self.bad.pop(key, None)
            if seq is not None:
                self.runner.free_sampler(seq)
        plan = StepPlan([KVOp(*o) for o in ops])
        failed: list[int] = []
        for i, w in enumerate(chunks):
            seq, bad = self._seq(w)
            _k, _s, tokens, pos0, sample, all_logits, n_draft = w[:7]
            if bad:
                failed.append(i)
                sample = False
            plan.chunks.append(ScheduledChunk(seq, tokens, pos0, sample, all_logits, n_draft))
        results = self.runner.execute(plan)
        for i in failed:
            results[i].error = self.bad[chunks[i][0]]
        return results


def child_main(conn: Connection) -> None:
    """The child's loop: one request, one answer, until told to close or the pipe ends."""
    logging.basicConfig(level=logging.WARNING)
    child: _Child | None = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        op = msg[0]
        if op == "close":
            return
        try:
            if op == "start":
                child = _Child(*msg[1:])
                value: Any = child.info()
            elif op in ("execute", "embedder_info", "embed"):
                assert child is not None
                value = getattr(child, op)(*msg[1:])
            else:
                assert child is not None and op == "runner"
                value = getattr(child.runner, msg[1])(*msg[2:])
            conn.send(("ok", value))
        except Exception as e:
            _send_error(conn, e)


def _send_error(conn, e: Exception) -> None:
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:  # an exception that cannot cross the pipe: its text can
        e = RemoteWorkerError(f"{type(e).__name__}: {e}")
    conn.send(("err", e))


# ---- the parent's side of a loaded remote model ------------------------------------


class VocabLease:
    """A vocab-only load of the model's file: tokenizer, template and metadata."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def release(self) -> None:
        self.model.close()


class RemoteEmbedder:
    """The engine's Embedder for a model on rpc workers: the child's embedding context."""

    def __init__(self, runner: RemoteRunner) -> None:
        self._runner = runner
        info = runner.embedder_info()
        self.pooling, self.n_out = info.pooling, info.n_out
        self.max_tokens, self.max_seqs = info.max_tokens, info.max_seqs

    def embed(self, inputs: list[list[int]]) -> list:
        return self._runner.embed(inputs)

    def close(self) -> None:
        """Nothing here: the context is the child's, closed with it."""


class RemoteContext:
    """What a LoadedModel asks of its context, answered by the child's."""

    def __init__(self, runner: RemoteRunner) -> None:
        self.runner = runner
        self.n_ctx = runner.info.n_ctx
        self.n_ctx_seq = runner.info.n_ctx_seq
        self.n_seq_max = runner.info.n_slots

    def close(self) -> None:
        self.runner.close()
