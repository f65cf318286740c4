"""RawDecoder: llama.cpp's ceiling, measured through bare llama_decode calls.

The same work the engine does for a batch of sequences (prefill every prompt in
chunks of n_batch tokens, then one token per sequence per decode, greedy
sampling in C per sequence) with no scheduler, no threads and no Python per
token beyond filling the batch. What llama-batched-bench reports as S_TG,
plus the sampling any server must do.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ferrousforge.errors import DecodeError
from ferrousforge.inference.backends.llama_cpp.batch import TokenBatch
from ferrousforge.inference.backends.llama_cpp.context import LlamaContext


@dataclass(slots=True)
class RawRun:
    """Timings of one raw run over ``n_seqs`` sequences."""

    n_seqs: int
    prefill_s: float = 0.0
    decode_s: float = 0.0  # decode steps after every sequence had its first token
    decode_tokens: int = 0
    decode_only_s: float = 0.0  # of decode_s: inside llama_decode (the rest: sampling, Python)
    sample_s: float = 0.0  # of decode_s: inside llama_sampler_sample
    ttft_s: list[float] = field(default_factory=list)  # per sequence, from the start
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def generated(self) -> int:
        return sum(len(o) for o in self.outputs)

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s


class RawDecoder:
    """Runs prompts through one LlamaContext with bare llama_decode calls."""

    def __init__(self, ctx: LlamaContext) -> None:
        self.ctx = ctx
        self.lib = ctx._lib
        self.batch = TokenBatch(self.lib, ctx.n_batch)
        self._samplers: list = []
        self.decode_threads: set[str] = set()  # names of the threads that called llama_decode

    def close(self) -> None:
        for s in self._samplers:
            self.lib.llama_sampler_free(s)
        self._samplers.clear()

    def _sampler(self, i: int):
        while len(self._samplers) <= i:
            self._samplers.append(self.lib.llama_sampler_init_greedy())
        return self._samplers[i]

    def _decode(self) -> None:
        self.decode_threads.add(threading.current_thread().name)
        rc = self.ctx.decode(self.batch.as_struct())
        if rc != 0:
            raise DecodeError(f"llama_decode failed with code {rc}")

    def run(self, prompts: list[list[int]], n_gen: int) -> RawRun:
        """Prefill every prompt (sequence i in seq_id i), then generate n_gen tokens each."""
        self.ctx.clear()
        out = RawRun(len(prompts), outputs=[[] for _ in prompts])
        t0 = time.perf_counter()
        self._prefill(prompts, out, t0)
        out.prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        self._generate(prompts, out, n_gen)
        out.decode_s = time.perf_counter() - t1
        return out

    def _prefill(self, prompts: list[list[int]], out: RawRun, t0: float) -> None:
        b, lib, ctx_ptr = self.batch, self.lib, self.ctx.ptr
        done = [0] * len(prompts)
        seq = 0
        while seq < len(prompts):
            b.clear()
            rows: list[tuple[int, int]] = []  # (sequence, output row) to sample after decode
            while seq < len(prompts) and b.n < b.capacity:
                p = prompts[seq]
                k = min(len(p) - done[seq], b.capacity - b.n)
                last = done[seq] + k == len(p)
                start = b.add(
                    p[done[seq] : done[seq] + k], seq, done[seq], "last" if last else "none"
                )
                done[seq] += k
                if last:
                    rows.append((seq, start + k - 1))
                    seq += 1
            self._decode()
            for s, row in rows:
                out.outputs[s].append(lib.llama_sampler_sample(self._sampler(s), ctx_ptr, row))
                out.ttft_s.append(time.perf_counter() - t0)

    def _generate(self, prompts: list[list[int]], out: RawRun, n_gen: int) -> None:
        b, lib, ctx_ptr = self.batch, self.lib, self.ctx.ptr
        n = len(prompts)
        if n > b.capacity:
            raise ValueError(f"{n} sequences do not fit a batch of {b.capacity}")
        samplers = [self._sampler(i) for i in range(n)]
        # One token per sequence per step, filled as whole arrays.
        b.clear()
        b.seq_ids[:n] = np.arange(n, dtype=np.int32)
        b.logits[:n] = 1
        b.n = n
        pos = np.array([len(p) for p in prompts], dtype=np.int32)
        for _ in range(1, n_gen):
            b.token[:n] = [o[-1] for o in out.outputs]
            b.pos[:n] = pos
            pos += 1
            t0 = time.perf_counter()
            self._decode()
            t1 = time.perf_counter()
            for i in range(n):
                out.outputs[i].append(lib.llama_sampler_sample(samplers[i], ctx_ptr, i))
            out.sample_s += time.perf_counter() - t1
            out.decode_only_s += t1 - t0
            out.decode_tokens += n
