"""Embeddings with the bundled model (mean pooling over a generative model): the library
call, then /v1/embeddings through the openai SDK and LangChain, and /v1/rerank's refusal."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest
from live_server import live_server, write_models_config
from model_traits import chat_template_for_tests

from ferrousforge.inference.backend import BackendConfig, BackendInput
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend
from ferrousforge.inference.gguf import read_gguf
from ferrousforge.models.memory import estimate_memory

pytestmark = pytest.mark.integration

TEXTS = [f"Note {i}: the {('red', 'green', 'blue')[i % 3]} ship sails at dawn." for i in range(64)]


@pytest.fixture
async def backend_and_handle(model_path):
    backend = LlamaCppBackend()
    config = BackendConfig(num_threads=2, context_size=1024, max_parallel=2, embedding_batch=512)
    handle = await backend.load_model(model_path, config)
    yield backend, handle
    await backend.unload_model(handle)


async def test_vectors_have_the_model_width_and_unit_length(backend_and_handle):
    backend, handle = backend_and_handle
    lm = backend.loaded(handle)
    r = await backend.embed(handle, ["The cat sat.", "A dog ran."])
    assert r.vectors.shape == (2, lm.model.n_embd)
    assert np.allclose(np.linalg.norm(r.vectors, axis=1), 1.0, atol=1e-5)
    assert r.prompt_tokens == sum(r.token_counts) and all(n > 2 for n in r.token_counts)
    raw = await backend.embed(handle, ["The cat sat."], normalize=False)
    assert not np.isclose(np.linalg.norm(raw.vectors[0]), 1.0)
    assert float(raw.vectors[0] @ r.vectors[0]) / np.linalg.norm(raw.vectors[0]) > 0.9999


async def test_a_batch_equals_each_input_alone_in_few_decodes(backend_and_handle):
    backend, handle = backend_and_handle
    stats = backend.loaded(handle).engine.stats
    before = stats.embedding_decodes
    together = await backend.embed(handle, TEXTS)
    decodes = stats.embedding_decodes - before
    assert decodes <= 3, decodes  # ~1000 tokens in 512-token decodes, not 64 calls
    for i in (0, 17, 42, 63):
        alone = await backend.embed(handle, [TEXTS[i]])
        assert float(alone.vectors[0] @ together.vectors[i]) > 0.999


async def test_similar_texts_are_closer_than_unrelated_ones(backend_and_handle):
    backend, handle = backend_and_handle
    v = (await backend.embed(handle, ["I love cats", "I adore kittens", "Tax law 1998"])).vectors
    assert v[0] @ v[1] > v[0] @ v[2]


async def test_token_ids_dimensions_and_length_limits(backend_and_handle):
    backend, handle = backend_and_handle
    ids = backend.tokenize(handle, "The cat sat.")
    by_ids = await backend.embed(handle, [ids])
    by_text = await backend.embed(handle, ["The cat sat."])
    assert float(by_ids.vectors[0] @ by_text.vectors[0]) > 0.9999
    short = await backend.embed(handle, ["The cat sat."], dimensions=64)
    assert short.vectors.shape == (1, 64) and np.isclose(np.linalg.norm(short.vectors[0]), 1)
    with pytest.raises(ValueError, match="dimensions"):
        await backend.embed(handle, ["x"], dimensions=100_000)
    long = "word " * 600  # over the 512-token embedding batch
    with pytest.raises(ValueError, match="truncate"):
        await backend.embed(handle, [long])
    cut = await backend.embed(handle, [long], truncate=True)
    assert cut.token_counts == [512]
    with pytest.raises(ValueError, match="cannot rank"):
        await backend.rerank(handle, "q", ["a", "b"])


async def test_each_pooling_setting_pools_the_models_hidden_states(model_path):
    # A generative model has no pooling of its own: `pooling` picks it. Packed together in
    # one decode, each input's vector is the mean of its hidden states, its last one, or its
    # first one, as pooling "none" (a vector per token) shows them.
    texts = ["The cat sat on the mat.", "Ships", "A much longer sentence about ships at sea."]
    config = dict(num_threads=2, context_size=256, max_parallel=1, embedding_batch=256)

    async def load(pooling: str):
        backend = LlamaCppBackend()
        return backend, await backend.load_model(
            model_path, BackendConfig(**config, pooling=pooling)
        )

    backend, handle = await load("none")
    try:
        rows, _ = await backend.embed_per_token(handle, texts)
    finally:
        await backend.unload_model(handle)
    pick = {"mean": lambda m: m.mean(0), "last": lambda m: m[-1], "cls": lambda m: m[0]}
    got = {}
    for pooling, reduce in pick.items():
        backend, handle = await load(pooling)
        try:
            got[pooling] = (await backend.embed(handle, texts)).vectors
        finally:
            await backend.unload_model(handle)
        for vec, m in zip(got[pooling], rows, strict=True):
            want = reduce(m.astype(np.float64))
            assert float(vec @ want) / np.linalg.norm(want) > 0.999, pooling
    assert float(got["mean"][0] @ got["last"][0]) < 0.99  # the setting is not ignored


async def test_generation_still_works_beside_the_embedding_context(backend_and_handle):
    from ferrousforge.api.request import InferenceOptions
    from ferrousforge.inference.backend import BackendInput

    backend, handle = backend_and_handle
    await backend.embed(handle, ["warm"])
    out = await backend.infer(
        handle,
        BackendInput.Text("The capital of France is"),
        InferenceOptions(max_tokens=4, temperature=0, ignore_eos=True),
    )
    # greedy and past EOS: the generation context decodes all four tokens
    assert out.usage.completion_tokens == 4
    assert out.text


async def test_an_embedding_only_model_embeds_and_refuses_to_generate(model_path):
    both = BackendConfig(num_threads=2, max_parallel=4, context_size=4096, embedding_batch=512)
    only = BackendConfig(**{**_fields(both), "embedding_only": True})
    est_only, est_both = estimate_memory(model_path, only), estimate_memory(model_path, both)
    assert est_only.kv_bytes < est_both.kv_bytes / 10  # one small slot of generation KV
    # ...and the embedding context it will make, a row of logits per token of a batch
    n_vocab = read_gguf(model_path).vocab_size
    assert est_only.embedding_bytes > 512 * 4 * n_vocab and est_both.embedding_bytes == 0
    backend = LlamaCppBackend()
    handle = await backend.load_model(model_path, only)
    try:
        lm = backend.loaded(handle)
        assert lm.context.n_ctx < 4096 and lm.context.n_seq_max == 1  # no generation KV to speak of
        r = await backend.embed(handle, ["The cat sat.", "A dog ran."])
        assert r.vectors.shape == (2, lm.model.n_embd_out)
        with pytest.raises(ValueError, match="embedding-only"):
            await backend.infer(handle, BackendInput.Text("Hello"))
    finally:
        await backend.unload_model(handle)


def _fields(config: BackendConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def test_one_model_of_a_config_file_can_be_embedding_only(model_path, tmp_path):
    models = [
        {"alias": "chat", "path": str(model_path)},
        {"alias": "embed", "path": str(model_path), "embedding": True},
    ]
    if chat_template_for_tests() is not None:  # a model without a template of its own
        models[0]["chat_template"] = chat_template_for_tests()
    config = write_models_config(tmp_path / "models.toml", models)
    with live_server("--config", str(config), "--ctx-size", "1024", "--parallel", "1") as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        for name in ("chat", "embed"):
            assert len(c.embeddings.create(input="hello", model=name).data[0].embedding) > 0
        ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert c.chat.completions.create(model="chat", **ask).choices[0].message is not None
        r = httpx.post(s.url + "/v1/chat/completions", json={"model": "embed", **ask}, timeout=30)
        assert r.status_code == 501 and "embeddings only" in r.json()["error"]["message"]
        msg = {"model": "embed", "max_tokens": 2, "messages": ask["messages"]}
        r = httpx.post(s.url + "/v1/messages", json=msg, timeout=30)
        assert r.status_code == 501 and r.json()["type"] == "error"  # Anthropic's shape


@pytest.fixture(scope="module")
def server():
    template = chat_template_for_tests()  # for /v1/responses and /v1/messages
    extra = ["--chat-template", template] if template is not None else []
    with live_server(
        "--parallel", "2", "--ctx-size", "1024", "--embedding-batch", "512", *extra
    ) as s:
        yield s


def test_openai_sdk_embeddings_float_and_base64(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    r = c.embeddings.create(input=["The cat sat.", "A dog ran."], model=_model(server))
    assert len(r.data) == 2 and [d.index for d in r.data] == [0, 1]
    assert r.usage.prompt_tokens > 4 and r.usage.total_tokens == r.usage.prompt_tokens
    floats = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": "The cat sat.", "encoding_format": "float"},
        timeout=60,
    ).json()["data"][0]["embedding"]
    b64 = httpx.post(
        server.url + "/v1/embeddings",
        json={"input": "The cat sat.", "encoding_format": "base64"},
        timeout=60,
    ).json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert np.allclose(decoded, floats, atol=1e-6)
    # The SDK asked for base64 (and embedded two inputs together: a batch may move the
    # last digits on some models' kernels, so compare directions)
    assert float(np.dot(r.data[0].embedding, floats)) > 0.9999
    short = c.embeddings.create(input="The cat sat.", model=_model(server), dimensions=32)
    assert len(short.data[0].embedding) == 32


def _model(server) -> str:
    return httpx.get(server.url + "/v1/models").json()["data"][0]["id"]


def test_bad_embedding_requests_are_400s(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        c.embeddings.create(input="x", model=_model(server), dimensions=10_000)
    with pytest.raises(openai.BadRequestError, match="truncate"):
        c.embeddings.create(input="word " * 600, model=_model(server))
    r = httpx.post(server.url + "/v1/embeddings", json={"input": []}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(input="x", model="no-such-model")
    r = httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30)
    assert r.status_code == 400 and "cannot rank" in r.json()["error"]["message"]


def test_langchain_openai_embeddings(server):
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model=_model(server),
        base_url=server.url + "/v1",
        api_key="none",
        check_embedding_ctx_length=False,  # it would tokenize with tiktoken otherwise
    )
    docs = emb.embed_documents(["cats purr", "ships sail", "kittens meow"])
    query = emb.embed_query("a kitten")
    assert len(docs) == 3 and len(query) == len(docs[0])
    alone = emb.embed_query("ships sail")
    assert float(np.dot(alone, docs[1])) > 0.999  # the texts were sent, not tiktoken's ids
    assert np.isclose(np.linalg.norm(query), 1.0, atol=1e-4)
    # A document longer than one embedding decode: cut by the server when asked.
    long = "word " * 600
    with pytest.raises(openai.BadRequestError, match="truncate"):
        emb.embed_documents([long])
    cutting = OpenAIEmbeddings(
        model=_model(server),
        base_url=server.url + "/v1",
        api_key="none",
        check_embedding_ctx_length=False,
        model_kwargs={"extra_body": {"truncate": True}},
    )
    assert len(cutting.embed_documents([long])[0]) == len(query)


def _metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_256_inputs_in_one_request_take_a_handful_of_decodes(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    texts = [f"item {i}: a {('red', 'green', 'blue')[i % 3]} ship" for i in range(256)]
    before = _metric(server, "ferrousforge_embedding_decodes_total")
    r = c.embeddings.create(input=texts, model=_model(server))
    decodes = _metric(server, "ferrousforge_embedding_decodes_total") - before
    assert [d.index for d in r.data] == list(range(256))
    # ~2300 tokens in 512-token decodes: 5 of them, not 256
    assert decodes <= r.usage.prompt_tokens // 512 + 1, decodes
    alone = c.embeddings.create(input=texts[200], model=_model(server)).data[0].embedding
    assert float(np.dot(alone, r.data[200].embedding)) > 0.999


def test_metrics_count_embeddings_responses_and_messages(server):
    names = [
        "ferrousforge_embedding_requests_total",
        "ferrousforge_embedding_inputs_total",
        "ferrousforge_embedding_decodes_total",
        "ferrousforge_embedding_latency_seconds_count",
        "ferrousforge_requests_finished_total",
        "llamacpp:n_decode_total",
    ]
    before = {n: _metric(server, n) if n.startswith("ferrous") else _bare(server, n) for n in names}
    httpx.post(server.url + "/v1/embeddings", json={"input": ["a", "b", "c"]}, timeout=60)
    ask = {"max_output_tokens": 2, "input": "hi"}
    assert httpx.post(server.url + "/v1/responses", json=ask, timeout=60).status_code == 200
    msg = {
        "model": _model(server),
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert httpx.post(server.url + "/v1/messages", json=msg, timeout=60).status_code == 200
    after = {n: _metric(server, n) if n.startswith("ferrous") else _bare(server, n) for n in names}
    grew = {n: after[n] - before[n] for n in names}
    assert grew["ferrousforge_embedding_requests_total"] == 1
    assert grew["ferrousforge_embedding_inputs_total"] == 3
    assert grew["ferrousforge_embedding_decodes_total"] >= 1
    assert grew["ferrousforge_embedding_latency_seconds_count"] == 1
    assert grew["ferrousforge_requests_finished_total"] == 2  # the response and the message
    assert grew["llamacpp:n_decode_total"] >= 3


def _bare(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
