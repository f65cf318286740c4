"""Model-free: the engine's counters behind llama-server's ``llamacpp:`` metrics, the input
shapes llama-server's embedding routes take, and its ``embd_normalize`` norms."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from scripted_runner import ScriptedRunner, ScriptedSampler, piece

from ferrousforge.api.embedding_inputs import parse_prompts
from ferrousforge.api.metrics_llamacpp import render_llamacpp
from ferrousforge.engine.engine import Engine
from ferrousforge.engine.sequence import SamplingLimits
from ferrousforge.inference.embedding import scale_rows


@pytest.fixture
def engine():
    e = Engine(ScriptedRunner(n_slots=2, n_batch=4, n_ctx=64), piece)
    yield e
    e.shutdown()


async def run(engine, prompt, n):
    async def read():
        async for _ in engine.add_request(prompt, SamplingLimits(max_tokens=n), ScriptedSampler()):
            pass

    await asyncio.wait_for(read(), timeout=10)


def metrics(engine) -> dict[str, float]:
    lines = render_llamacpp([SimpleNamespace(engine=engine)])
    return {
        name: float(v)
        for name, v in (line.split(" ") for line in lines if not line.startswith("#"))
    }


async def test_counters_follow_what_the_engine_decoded(engine):
    await run(engine, list(range(1, 11)), 5)  # a 10-token prompt in chunks of 4
    await run(engine, [3, 4], 1)
    m = metrics(engine)
    assert m["llamacpp:prompt_tokens_total"] == 12
    assert m["llamacpp:tokens_predicted_total"] == 6
    assert m["llamacpp:n_tokens_max"] == 15
    assert m["llamacpp:n_decode_total"] == engine.stats.decode_steps >= 3 + 4
    assert m["llamacpp:requests_processing"] == 0 and m["llamacpp:requests_deferred"] == 0
    # Generation rate over the 4 tokens after the first (the 1-token request adds none).
    st = engine.stats
    assert st.generation_steps == 4
    assert m["llamacpp:predicted_tokens_seconds"] == pytest.approx(4 / st.generation_seconds)
    assert st.queue_time.n == 2
    assert m["llamacpp:kv_cache_tokens"] == engine.scheduler.kv_tokens() > 0


def test_one_prompt_per_input_in_every_shape():
    parts = {"content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}
    assert parse_prompts("x") == ["x"]
    assert parse_prompts([1, "x", 2]) == [[1, "x", 2]]  # a list holding ids is one prompt
    assert parse_prompts(["x", [1, 2], parts, {"prompt_string": "y"}]) == [
        "x", [1, 2], "a b", "y"
    ]  # fmt: skip
    for bad, named in [([], "input"), ({"content": "s"}, "input.content"),
                       ([[1, True]], "input[0][1]"), ({"other": 1}, "input")]:  # fmt: skip
        with pytest.raises(ValueError, match=named.replace("[", r"\[")):
            parse_prompts(bad)


def test_embd_normalize_norms():
    m = np.array([[3.0, -4.0], [0.0, 0.0]], dtype=np.float32)
    assert np.allclose(scale_rows(m, -1), m)
    assert np.allclose(scale_rows(m, 0)[0], [3 / 4 * 32760, -32760])
    assert np.allclose(scale_rows(m, 1)[0], [3 / 7, -4 / 7])
    assert np.allclose(scale_rows(m, 2)[0], [0.6, -0.8])
    assert np.allclose(scale_rows(m, 2)[1], [0, 0])  # a zero row stays zero
    p3 = (27 + 64) ** (1 / 3)
    assert np.allclose(scale_rows(m, 3)[0], [3 / p3, -4 / p3])
