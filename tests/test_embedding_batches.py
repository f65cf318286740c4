"""Embedding requests in the engine, without llama.cpp: packing inputs into few decodes,
oldest request first, between generation steps, and failures that stay with their requests."""

from __future__ import annotations

import asyncio
import threading
from collections import deque

import numpy as np
import pytest
from scripted_runner import ScriptedRunner, ScriptedSampler, piece

from ferrousforge.engine.embeddings import EmbedJob, next_batch
from ferrousforge.engine.engine import Engine
from ferrousforge.engine.sequence import SamplingLimits


class FakeEmbedder:
    """Each input's vector is [len, first id, sum]; records every decode's inputs."""

    def __init__(self, max_tokens: int = 64, max_seqs: int = 8, fail_on: int | None = None):
        self.max_tokens, self.max_seqs = max_tokens, max_seqs
        self.calls: list[list[list[int]]] = []
        self.fail_on = fail_on
        self.thread: threading.Thread | None = None

    def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        self.thread = threading.current_thread()
        self.calls.append(inputs)
        if self.fail_on is not None and any(self.fail_on in x for x in inputs):
            raise RuntimeError("decode failed")
        return [np.array([len(x), x[0], sum(x)], dtype=np.float32) for x in inputs]


def vec(x: list[int]) -> list[float]:
    return [len(x), x[0], sum(x)]


@pytest.fixture
def make_engine():
    engines = []

    def make(embedder: FakeEmbedder, **kw) -> Engine:
        e = Engine(ScriptedRunner(**kw), piece, embedder_factory=lambda: embedder)
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.shutdown()


def job(inputs, loop) -> EmbedJob:
    return EmbedJob(inputs, loop.create_future(), loop)


async def test_batches_fill_tokens_and_sequences_oldest_job_first():
    loop = asyncio.get_running_loop()
    a = job([[1] * 30, [2] * 30, [3] * 30], loop)
    b = job([[4] * 2] * 3, loop)
    jobs = deque([a, b])
    first = next_batch(jobs, max_tokens=64, max_seqs=8)
    assert [(j is a, i) for j, i in first] == [(True, 0), (True, 1)]  # 60 of 64 tokens
    second = next_batch(jobs, max_tokens=64, max_seqs=2)
    assert [(j is a, i) for j, i in second] == [(True, 2), (False, 0)]
    b.future.cancel()  # its caller left: its other inputs are never decoded
    assert next_batch(jobs, 64, 8) == [] and list(jobs) == [a]


async def test_many_inputs_take_few_decodes_and_keep_their_order(make_engine):
    emb = FakeEmbedder(max_tokens=64, max_seqs=16)
    engine = make_engine(emb)
    inputs = [[i + 1] * (1 + i % 7) for i in range(64)]
    vectors = await engine.add_embedding(inputs)
    assert [v.tolist() for v in vectors] == [vec(x) for x in inputs]
    assert len(emb.calls) == 5  # 256 tokens in 64-token decodes, at most 16 inputs each
    assert sum(len(c) for c in emb.calls) == 64
    assert emb.thread.name.startswith("ferrousforge-")  # the engine thread owns it
    st = engine.stats
    assert (st.embedding_decodes, st.embedding_inputs, st.embedding_requests) == (5, 64, 1)


async def test_concurrent_requests_share_decodes(make_engine):
    emb = FakeEmbedder(max_tokens=64, max_seqs=64)
    engine = make_engine(emb)
    results = await asyncio.gather(*(engine.add_embedding([[k + 1, k + 2]]) for k in range(20)))
    assert [r[0].tolist() for r in results] == [vec([k + 1, k + 2]) for k in range(20)]
    assert len(emb.calls) <= 3  # not one decode per request


async def test_generation_goes_on_between_embedding_decodes(make_engine):
    emb = FakeEmbedder(max_tokens=8, max_seqs=1)  # 40 decodes for this request
    engine = make_engine(emb)
    steps: list[int] = []  # generation steps done when each embedding decode runs
    inner = emb.embed
    emb.embed = lambda inputs: (steps.append(engine.stats.decode_steps), inner(inputs))[1]
    stream = engine.add_request([5, 6], SamplingLimits(max_tokens=30), ScriptedSampler())
    embedded = engine.add_embedding([[i + 1] * 8 for i in range(40)])
    tokens = 0
    async for out in stream:
        tokens += len(out.token_ids)
    await embedded
    assert tokens == 30 and len(steps) == 40
    # Interleaved: generation steps ran between the embedding decodes, not all before or after.
    assert steps[0] < steps[-1] and len(set(steps)) > 10


async def test_a_failed_decode_fails_only_the_requests_in_it(make_engine):
    emb = FakeEmbedder(max_tokens=4, max_seqs=1, fail_on=99)
    engine = make_engine(emb)
    bad = engine.add_embedding([[99, 1]])
    good = engine.add_embedding([[7, 8]])
    with pytest.raises(RuntimeError, match="decode failed"):
        await bad
    assert (await good)[0].tolist() == vec([7, 8])
    assert (await engine.add_embedding([[3]]))[0].tolist() == vec([3])  # still serving


async def test_a_model_without_embeddings_refuses_at_once():
    engine = Engine(ScriptedRunner(), piece)
    try:
        with pytest.raises(ValueError, match="no embeddings"):
            engine.add_embedding([[1]])
    finally:
        engine.shutdown()


async def test_shutdown_fails_pending_embeddings(make_engine):
    from ferrousforge.errors import EngineStoppedError

    emb = FakeEmbedder(max_tokens=1, max_seqs=1)
    engine = make_engine(emb)
    engine.shutdown()
    with pytest.raises(EngineStoppedError):
        await engine.add_embedding([[1]])
