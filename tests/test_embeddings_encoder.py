"""Embeddings and ranking with an encoder (BERT) model: a tiny random BERT GGUF that
tests/tiny_bert.py writes, so the non-causal encoder graph, the WordPiece tokenizer
([CLS] ... [SEP]), CLS and mean pooling and a rank head all run, through the library call
and over HTTP."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest
from live_server import live_server
from tiny_bert import CLS, N_CTX_TRAIN, N_EMBD, SEP, write_tiny_bert

from ferrousforge.inference.backend import BackendConfig
from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend

pytestmark = pytest.mark.integration

TEXTS = ["the cat sat on the tree.", "a dog ran to the river", "ships sail at sea!", "tax law"]
DOCS = ["the cat sat.", "tax law of france", "a kitten and a cat", "red ships", "the moon"]
CONFIG = dict(num_threads=2, context_size=256, max_parallel=1, embedding_batch=256)


@pytest.fixture(scope="session")
def bert_files(tmp_path_factory) -> dict[str, Path]:
    """Three tiny BERTs with the same encoder weights: mean pooling, CLS pooling, reranker."""
    d = tmp_path_factory.mktemp("tiny-bert")
    return {
        "mean": write_tiny_bert(d / "bert-mean.gguf", pooling="mean"),
        "cls": write_tiny_bert(d / "bert-cls.gguf", pooling="cls"),
        "rank": write_tiny_bert(d / "bert-rank.gguf", rank=True),
    }


async def _load(path: Path, **overrides):
    backend = LlamaCppBackend()
    handle = await backend.load_model(path, BackendConfig(**{**CONFIG, **overrides}))
    return backend, handle


@pytest.fixture
async def mean_bert(bert_files):
    backend, handle = await _load(bert_files["mean"])
    yield backend, handle
    await backend.unload_model(handle)


async def test_encoder_vectors_have_the_model_width_and_unit_length(mean_bert):
    backend, handle = mean_bert
    r = await backend.embed(handle, TEXTS)
    assert r.vectors.shape == (len(TEXTS), N_EMBD)
    assert np.all(np.isfinite(r.vectors))
    assert np.allclose(np.linalg.norm(r.vectors, axis=1), 1.0, atol=1e-5)
    # different texts, different vectors
    sims = r.vectors @ r.vectors.T
    assert np.all(sims[~np.eye(len(TEXTS), dtype=bool)] < 0.999)


async def test_wordpiece_tokenization_wraps_inputs_in_cls_and_sep(mean_bert):
    backend, handle = mean_bert
    ids = backend.embedding_inputs(handle, ["the cat sat."])[0]
    assert ids[0] == CLS and ids[-1] == SEP
    assert len(ids) == 6  # [CLS] the cat sat . [SEP]
    r = await backend.embed(handle, ["the cat sat.", "sailing"])
    assert r.token_counts == [6, len(backend.embedding_inputs(handle, ["sailing"])[0])]
    assert r.prompt_tokens == sum(r.token_counts)
    by_ids = await backend.embed(handle, [ids])
    assert float(by_ids.vectors[0] @ r.vectors[0]) > 0.9999


async def test_a_batch_equals_each_input_alone(mean_bert):
    backend, handle = mean_bert
    together = await backend.embed(handle, TEXTS)
    for i, text in enumerate(TEXTS):
        alone = await backend.embed(handle, [text])
        assert float(alone.vectors[0] @ together.vectors[i]) > 0.999


async def test_inputs_over_the_training_context_need_truncate(mean_bert):
    backend, handle = mean_bert
    long = "the cat " * N_CTX_TRAIN  # 2 tokens a repeat: far over the 128 positions
    with pytest.raises(ValueError, match="truncate"):
        await backend.embed(handle, [long])
    cut = await backend.embed(handle, [long, "a dog"], truncate=True)
    assert cut.token_counts[0] == N_CTX_TRAIN
    assert np.allclose(np.linalg.norm(cut.vectors, axis=1), 1.0, atol=1e-5)
    # The text is cut, not the [SEP] the tokenizer appended: [CLS] the cat ... [SEP]
    ids = backend.embedding_inputs(handle, [long], truncate=True)[0]
    full = backend.loaded(handle).vocab.tokenize(long, add_special=True, parse_special=False)
    assert len(full) > N_CTX_TRAIN and full[-1] == SEP
    assert ids == full[: N_CTX_TRAIN - 1] + [SEP] and ids[0] == CLS
    as_ids = await backend.embed(handle, [ids])
    assert float(as_ids.vectors[0] @ cut.vectors[0]) > 0.9999
    with pytest.raises(ValueError, match="cannot rank"):
        await backend.rerank(handle, "cats", ["a", "b"])


async def test_cls_pooling_differs_from_mean_pooling(bert_files, mean_bert):
    backend, handle = mean_bert
    mean = (await backend.embed(handle, TEXTS)).vectors
    cls_backend, cls_handle = await _load(bert_files["cls"])
    try:
        cls = (await cls_backend.embed(cls_handle, TEXTS)).vectors
    finally:
        await cls_backend.unload_model(cls_handle)
    assert cls.shape == mean.shape
    assert np.all(np.einsum("ij,ij->i", cls, mean) < 0.99)
    # the same pooling asked for in the config, over the mean-pooling file: the same vectors
    over_backend, over_handle = await _load(bert_files["mean"], pooling="cls")
    try:
        over = (await over_backend.embed(over_handle, TEXTS)).vectors
    finally:
        await over_backend.unload_model(over_handle)
    assert np.all(np.einsum("ij,ij->i", cls, over) > 0.9999)


async def test_vectors_have_the_declared_output_width(tmp_path):
    # A model with dense output layers (LFM2-ColBERT: 1024 -> 128) declares a narrower
    # <arch>.embedding_length_out; llama.cpp's rows have that width, and so must ours.
    path = write_tiny_bert(tmp_path / "narrow.gguf", embedding_length_out=N_EMBD // 2)
    backend, handle = await _load(path)
    try:
        pooled = await backend.embed(handle, TEXTS)
    finally:
        await backend.unload_model(handle)
    assert pooled.vectors.shape == (len(TEXTS), N_EMBD // 2)
    backend, handle = await _load(path, pooling="none")
    try:
        per_token, counts = await backend.embed_per_token(handle, TEXTS)
    finally:
        await backend.unload_model(handle)
    assert [m.shape for m in per_token] == [(n, N_EMBD // 2) for n in counts]


async def test_a_reranker_scores_query_document_pairs(bert_files):
    backend, handle = await _load(bert_files["rank"])
    try:
        lm = backend.loaded(handle)
        r = await backend.rerank(handle, "a cat", DOCS)
        assert r.vectors.shape == (len(DOCS), 1)
        assert len(set(np.round(r.vectors[:, 0], 5))) == len(DOCS)  # a score per document
        # [CLS] query [SEP] document, as llama-server builds the pair
        pair = backend.rank_inputs(handle, "a cat", ["the moon"])[0]
        assert pair[0] == lm.vocab.bos == CLS and SEP in pair
        again = await backend.rerank(handle, "a cat", DOCS[::-1])
        assert np.allclose(again.vectors[::-1], r.vectors, atol=1e-5)  # order-independent
        with pytest.raises(ValueError, match="rerank"):
            await backend.embed(handle, ["a cat"])
    finally:
        await backend.unload_model(handle)


def _reference(path: Path, ids: list[int], pooling: str) -> np.ndarray:
    """The tiny BERT's forward pass in numpy (as llama.cpp's bert graph computes it)."""
    t = {x.name: np.asarray(x.data, dtype=np.float64) for x in gguf.GGUFReader(path).tensors}

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * t[name + ".weight"] + t[name + ".bias"]

    def lin(x, name):  # numpy rows are outputs: y = x W^T + b
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    def gelu(x):  # ggml's tanh approximation
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    n = len(ids)
    x = t["token_embd.weight"][ids] + t["token_types.weight"][0] + t["position_embd.weight"][:n]
    x = norm(x, "token_embd_norm")
    heads = 2
    for i in range(2):
        b = f"blk.{i}"
        q, k, v = (lin(x, f"{b}.attn_{c}").reshape(n, heads, -1) for c in "qkv")
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", p, v).reshape(n, -1)
        x = norm(lin(att, f"{b}.attn_output") + x, f"{b}.attn_output_norm")
        ffn = lin(gelu(lin(x, f"{b}.ffn_up")), f"{b}.ffn_down")
        x = norm(ffn + x, f"{b}.layer_output_norm")
    if pooling == "rank":
        return lin(np.tanh(lin(x[0], "cls")), "cls.output")
    pooled = x.mean(0) if pooling == "mean" else x[0]
    return pooled / np.linalg.norm(pooled)


async def test_encoder_and_pooling_match_a_numpy_forward_pass(bert_files):
    for kind in ("mean", "cls"):
        backend, handle = await _load(bert_files[kind])
        try:
            ids = backend.embedding_inputs(handle, TEXTS)
            got = (await backend.embed(handle, TEXTS)).vectors
        finally:
            await backend.unload_model(handle)
        for row, seq in zip(got, ids, strict=True):
            assert float(row @ _reference(bert_files[kind], seq, kind)) > 0.999, kind
    backend, handle = await _load(bert_files["rank"])
    try:
        pairs = backend.rank_inputs(handle, "a cat", DOCS)
        got = (await backend.rerank(handle, "a cat", DOCS)).vectors[:, 0]
    finally:
        await backend.unload_model(handle)
    want = [float(_reference(bert_files["rank"], seq, "rank")[0]) for seq in pairs]
    assert np.allclose(got, want, atol=1e-3)


def test_an_embedding_batch_under_256_tokens_does_not_abort(bert_files):
    # In a child process: the failure is a C abort, which would end the test run.
    code = textwrap.dedent(
        f"""
        import asyncio
        from ferrousforge.inference.backend import BackendConfig
        from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend

        async def main():
            b = LlamaCppBackend()
            cfg = BackendConfig(num_threads=2, context_size=256, max_parallel=1,
                                embedding_batch=128)
            h = await b.load_model({str(bert_files["mean"])!r}, cfg)
            r = await b.embed(h, ["the cat sat."])
            print("shape", r.vectors.shape)
            await b.unload_model(h)

        asyncio.run(main())
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"shape (1, {N_EMBD})" in proc.stdout


# ---- over HTTP ------------------------------------------------------------------------


def _serve(path: Path):
    return live_server("--model", str(path), "--ctx-size", "256", "--parallel", "1")


@pytest.fixture(scope="module")
def mean_server(bert_files):
    with _serve(bert_files["mean"]) as s:
        yield s


@pytest.fixture(scope="module")
def rank_server(bert_files):
    with _serve(bert_files["rank"]) as s:
        yield s


def _post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + route, json=body, timeout=60)


def test_http_embeddings_from_an_encoder(mean_server):
    r = _post(mean_server, "/v1/embeddings", {"input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    vecs = np.array([d["embedding"] for d in body["data"]])
    assert vecs.shape == (len(TEXTS), N_EMBD)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] > 2 * len(TEXTS)  # [CLS] and [SEP] each
    one = _post(mean_server, "/v1/embeddings", {"input": TEXTS[2]}).json()
    assert float(np.dot(one["data"][0]["embedding"], vecs[2])) > 0.999


def test_http_rerank_on_an_embedding_model_is_a_400(mean_server):
    for route in ("/v1/rerank", "/rerank"):
        r = _post(mean_server, route, {"query": "a cat", "documents": DOCS})
        assert r.status_code == 400, r.text
        assert "cannot rank" in r.json()["error"]["message"]


def test_http_chat_on_an_encoder_is_a_clear_error_and_the_server_goes_on(mean_server):
    r = _post(
        mean_server,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert 400 <= r.status_code < 600, r.text
    assert r.json()["error"]["message"]
    again = _post(mean_server, "/v1/embeddings", {"input": "the cat"})
    assert again.status_code == 200
    assert httpx.get(mean_server.url + "/health", timeout=10).status_code == 200


def test_http_completions_on_an_encoder_are_refused(mean_server):
    r = _post(mean_server, "/v1/completions", {"prompt": "the cat", "max_tokens": 4})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]


async def test_http_rerank_sorts_by_relevance_like_the_library(rank_server, bert_files):
    backend, handle = await _load(bert_files["rank"])
    try:
        expected = (await backend.rerank(handle, "a cat", DOCS)).vectors[:, 0]
    finally:
        await backend.unload_model(handle)
    for route in ("/v1/rerank", "/rerank"):
        r = _post(rank_server, route, {"query": "a cat", "documents": DOCS})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert sorted(x["index"] for x in results) == list(range(len(DOCS)))
        scores = [x["relevance_score"] for x in results]
        assert scores == sorted(scores, reverse=True)
        for x in results:
            assert x["relevance_score"] == pytest.approx(float(expected[x["index"]]), abs=1e-4)
            assert "document" not in x
    top = _post(
        rank_server,
        "/v1/rerank",
        {"query": "a cat", "documents": DOCS, "top_n": 2, "return_documents": True},
    ).json()["results"]
    best = np.argsort(-expected)[:2]
    assert [x["index"] for x in top] == [int(i) for i in best]
    assert [x["document"]["text"] for x in top] == [DOCS[i] for i in best]


def test_http_rerank_takes_jina_and_cohere_document_objects(rank_server):
    as_texts = _post(rank_server, "/v1/rerank", {"query": "a cat", "documents": DOCS}).json()
    as_objects = _post(
        rank_server,
        "/v1/rerank",
        {"query": "a cat", "documents": [{"text": d} for d in DOCS], "return_documents": True},
    )
    assert as_objects.status_code == 200, as_objects.text
    results = as_objects.json()["results"]
    assert [x["index"] for x in results] == [x["index"] for x in as_texts["results"]]
    assert [x["document"] for x in results] == [{"text": DOCS[x["index"]]} for x in results]
    image = _post(rank_server, "/v1/rerank", {"query": "a cat", "documents": [{"image": "x.png"}]})
    assert image.status_code == 400, image.text
    assert image.json()["error"]["param"].startswith("documents")
    assert "only texts" in image.json()["error"]["message"]


def test_http_embeddings_on_a_reranker_is_a_400(rank_server):
    r = _post(rank_server, "/v1/embeddings", {"input": "a cat"})
    assert r.status_code == 400, r.text
    assert "/v1/rerank" in r.json()["error"]["message"]
