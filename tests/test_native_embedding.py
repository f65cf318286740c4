"""llama-server's embedding and rerank shapes through the real server: POST /embedding (its
non-OpenAI answer, per-token vectors with pooling none), the input shapes it takes,
``embd_normalize``, and TEI's rerank format."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from live_server import live_server

pytestmark = pytest.mark.integration

TEXT = "I believe the meaning of life is"


@pytest.fixture(scope="module")
def server():
    with live_server() as s:
        yield s


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120)


def oai_vectors(url: str, inputs) -> np.ndarray:
    r = post(url, "/v1/embeddings", {"input": inputs})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


@pytest.mark.parametrize("path", ["/embedding", "/embeddings"])
def test_native_route_answers_a_list_of_pooled_vectors(server, path):
    r = post(server.url, path, {"content": TEXT})
    assert r.status_code == 200, r.text
    [item] = r.json()
    assert item["index"] == 0
    [vec] = item["embedding"]  # a list of vectors: the pooled one
    assert np.allclose(vec, oai_vectors(server.url, TEXT)[0], atol=1e-5)


def test_embd_normalize_picks_llama_servers_norm(server):
    def vec(norm: int) -> np.ndarray:
        r = post(server.url, "/embedding", {"content": TEXT, "embd_normalize": norm})
        assert r.status_code == 200, r.text
        return np.array(r.json()[0]["embedding"][0])

    raw = vec(-1)
    assert abs(np.linalg.norm(raw) - 1) > 1e-2
    assert np.linalg.norm(vec(2)) == pytest.approx(1, abs=1e-4)
    assert np.abs(vec(1)).sum() == pytest.approx(1, abs=1e-4)
    assert np.abs(vec(0)).max() == pytest.approx(32760, rel=1e-4)  # the int16 range
    assert np.allclose(vec(3), raw / (np.abs(raw) ** 3).sum() ** (1 / 3), rtol=1e-3)
    r = post(server.url, "/v1/embeddings", {"input": TEXT, "embd_normalize": -1})
    assert np.allclose(r.json()["data"][0]["embedding"], raw, rtol=1e-4)


def test_content_parts_prompt_strings_and_mixed_ids_are_one_input_each(server):
    ids = httpx.post(server.url + "/tokenize", json={"content": "hello world"}).json()["tokens"]
    v = oai_vectors(
        server.url,
        [
            "hello world",
            {"content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]},
            {"prompt_string": "hello world"},
            ids,
        ],
    )
    assert len(v) == 4
    for row in v[1:]:
        assert np.allclose(row, v[0], atol=1e-5)
    mixed = oai_vectors(server.url, [[*ids, " again"], "hello world again"])
    assert mixed.shape[0] == 2 and float(mixed[0] @ mixed[1]) > 0.999


@pytest.mark.parametrize(
    ("input_", "named"),
    [
        ({"content": "string"}, "input.content"),
        ({"content": [{"type": "unknown"}]}, "input.content[0]"),
        ({"content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}, "images"),
        ([1, 2, None], "input[2]"),
    ],
)
def test_inputs_it_cannot_embed_are_a_400_naming_them(server, input_, named):
    r = post(server.url, "/v1/embeddings", {"input": input_})
    assert r.status_code == 400
    assert named in r.json()["error"]["message"]


def test_pooling_none_gives_a_vector_per_token_on_the_native_route_only():
    with live_server("--pooling", "none") as s:
        n = len(httpx.post(s.url + "/tokenize", json={"content": TEXT}).json()["tokens"])
        r = post(s.url, "/embedding", {"content": TEXT})
        assert r.status_code == 200, r.text
        rows = np.array(r.json()[0]["embedding"])
        assert rows.shape[0] == n and rows.shape[1] > 1
        assert all(abs(np.linalg.norm(x) - 1) > 1e-3 for x in rows)  # not normalised
        r = post(s.url, "/v1/embeddings", {"input": TEXT})
        assert r.status_code == 400
        assert "pooling" in r.json()["error"]["message"]


def test_rerank_answers_tei_requests_with_a_bare_list_cut_to_top_n():
    docs = ["Paris is in France.", "Machine learning learns from data.", "Cats sleep a lot."]
    with live_server("--reranking") as s:
        jina = post(s.url, "/rerank", {"query": "Machine learning is", "documents": docs})
        assert jina.status_code == 200, jina.text
        order = [d["index"] for d in jina.json()["results"]]
        tei = post(s.url, "/rerank", {"query": "Machine learning is", "texts": docs, "top_n": 2})
        assert tei.status_code == 200, tei.text
        body = tei.json()
        assert isinstance(body, list) and [d["index"] for d in body] == order[:2]
        assert set(body[0]) == {"index", "score"}
        r = post(s.url, "/rerank", {"query": "q", "texts": docs, "return_text": True})
        assert all(d["text"] == docs[d["index"]] for d in r.json())
        r = post(s.url, "/v1/embeddings", {"input": "x"})
        assert r.status_code == 400
