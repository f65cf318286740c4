"""Engine statistics for the server's /metrics: counters and latency histograms."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Waiting for a slot: 0 while slots are free, minutes when a burst meets a full server.
QUEUE_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
                break

    def cumulative(self) -> list[tuple[float, int]]:
        out, acc = [], 0
        for b, c in zip(self.buckets, self.counts, strict=True):
            acc += c
            out.append((b, acc))
        return out


@dataclass(slots=True)
class EngineStats:
    requests_finished: int = 0
    requests_aborted: int = 0
    requests_rejected: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_prompt_tokens: int = 0
    prefix_cache_hits: int = 0
    decode_steps: int = 0
    # Wall time inside runner.execute (llama_decode and sampling) and the tokens decoded:
    # per step, compared with `bench engine`, it shows what HTTP traffic costs the decode.
    step_seconds: float = 0.0
    step_tokens: int = 0
    draft_tokens: int = 0  # speculative decoding: drafted tokens verified
    draft_accepted_tokens: int = 0  # of which accepted
    busy_slots_sum: int = 0  # over decode steps: / decode_steps is the mean batch
    busy_seqs_sum: int = 0  # the same, prefilling sequences included (llama-server's count)
    # Per finished request: prompt tokens it decoded (not reused) and the seconds from its
    # admission to its first token; output tokens after the first and the seconds they took.
    prompt_tokens_decoded: int = 0
    prompt_seconds: float = 0.0
    generation_steps: int = 0
    generation_seconds: float = 0.0
    n_tokens_max: int = 0  # longest sequence finished (prompt + output)
    embedding_requests: int = 0
    embedding_inputs: int = 0
    embedding_tokens: int = 0
    embedding_decodes: int = 0  # decodes of the embedding context (many inputs each)
    embedding_seconds: float = 0.0  # time in those decodes
    running: int = 0
    waiting: int = 0
    ttft: Histogram = field(default_factory=Histogram)
    inter_token: Histogram = field(default_factory=Histogram)
    request_latency: Histogram = field(default_factory=Histogram)
    queue_time: Histogram = field(default_factory=lambda: Histogram(QUEUE_BUCKETS))
    # Embedding and rerank requests, from arrival to their last vector.
    embedding_latency: Histogram = field(default_factory=Histogram)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def mean_busy_slots(self) -> float:
        return self.busy_slots_sum / self.decode_steps if self.decode_steps else 0.0

    def add_finished(self, n_prompt: int, n_output: int, n_tokens: int, times: SeqTimes) -> None:
        """Count a finished request's decoded prompt and output (caller holds ``lock``)."""
        self.prompt_tokens_decoded += n_prompt
        self.n_tokens_max = max(self.n_tokens_max, n_tokens)
        if times.admitted:
            self.queue_time.observe(times.admitted - times.arrival)
            if times.first_token:
                self.prompt_seconds += times.first_token - times.admitted
        if n_output > 1:  # the first token comes with the prompt's decode
            self.generation_steps += n_output - 1
            self.generation_seconds += times.last_token - times.first_token


@dataclass(slots=True)
class SeqTimes:
    """A request's perf_counter stamps (0.0: did not happen)."""

    arrival: float
    admitted: float
    first_token: float
    last_token: float
