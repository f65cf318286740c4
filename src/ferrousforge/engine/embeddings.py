"""Embedding requests in the engine: many inputs, as few decodes as the embedder allows.

An embedding request is a list of token-id inputs and one future. The engine thread packs
the pending inputs, oldest request first, into batches that fit the embedder (``max_tokens``
tokens and ``max_seqs`` sequences per decode, every input whole), runs one batch between
generation steps, and resolves a request's future once all its inputs are embedded. So 256
short inputs take a handful of decodes, and a long embedding request never stalls
generation for more than one batch at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    """What the engine needs from a backend's embedding context."""

    max_tokens: int  # tokens per decode (and so per input)
    max_seqs: int  # inputs per decode

    def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """One decode: the pooled vector (or rank scores) of each input, in order."""
        ...


@dataclass(slots=True, eq=False)
class EmbedJob:
    """One request's inputs, its results so far, and the future its caller awaits."""

    inputs: list[list[int]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    results: list[np.ndarray | None] = field(default_factory=list)
    next: int = 0  # the first input not yet scheduled
    done: int = 0
    arrival: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.inputs)

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()


Slice = tuple[EmbedJob, int]  # (job, input index)


def next_batch(jobs: deque[EmbedJob], max_tokens: int, max_seqs: int) -> list[Slice]:
    """The inputs of the next decode, oldest job first; jobs whose caller left are dropped.

    Every input fits ``max_tokens`` (the caller checked), so a batch is never empty while a
    job is pending.
    """
    batch: list[Slice] = []
    used = 0
    for job in list(jobs):
        if job.cancelled:
            jobs.remove(job)
            continue
        while job.next < len(job.inputs) and len(batch) < max_seqs:
            n = len(job.inputs[job.next])
            if used + n > max_tokens:
                return batch
            batch.append((job, job.next))
            used += n
            job.next += 1
        if len(batch) >= max_seqs:
            break
    return batch


def settle(jobs: deque[EmbedJob], batch: list[Slice], vectors: list[np.ndarray]) -> None:
    """Store a decode's vectors; resolve (on its loop) every job that is now complete."""
    for (job, i), vec in zip(batch, vectors, strict=True):
        job.results[i] = vec
        job.done += 1
        if job.done == len(job.inputs):
            if job in jobs:
                jobs.remove(job)
            job.loop.call_soon_threadsafe(_resolve, job.future, job.results)


def fail(jobs: deque[EmbedJob], batch: list[Slice], error: BaseException) -> None:
    """A decode failed: every job with an input in it fails (the others go on)."""
    for job in {job for job, _ in batch}:
        if job in jobs:
            jobs.remove(job)
        job.loop.call_soon_threadsafe(_reject, job.future, error)


def fail_all(jobs: deque[EmbedJob], error: BaseException) -> None:
    """Every pending job fails (shutdown, or no embedding context could be made)."""
    fail(jobs, [(job, 0) for job in jobs], error)


def _resolve(future: asyncio.Future, results: list) -> None:
    if not future.done():
        future.set_result(results)


def _reject(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
