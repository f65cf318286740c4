"""The real server on a free port, driven by the official openai SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import jsonschema
import openai
import pytest
from live_server import live_server
from model_traits import GENERIC_CHAT_TEMPLATE, has_chat_template
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk

from ferrousforge.models.default_model import default_model

pytestmark = pytest.mark.server

KEYS = ("sk-test-one", "sk-test-two")
CTX = 1024  # tokens per request: --ctx-size is split across the --parallel slots
PARALLEL = 4
MODEL_ID, MODEL_PATH = default_model()  # what serve calls the model it serves by default


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    key: str | None

    def http(self, key: str | None = "default") -> httpx.Client:
        headers = {}
        key = self.key if key == "default" else key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def _start(args: list[str], env: dict[str, str], key: str | None) -> Iterator[Server]:
    with live_server(*args, env=env) as live:
        yield Server(live.url, live.proc, key)


def _template_config(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A model whose GGUF has no chat template is served with a generic one (the tests are
    about the API), under the same id; one with a template is served as is."""
    if has_chat_template():
        return []
    config = tmp_path_factory.mktemp("server") / "models.toml"
    config.write_text(
        f"[[models]]\nalias = {json.dumps(MODEL_ID)}\npath = {json.dumps(str(MODEL_PATH))}\n"
        f"chat_template = {json.dumps(GENERIC_CHAT_TEMPLATE)}\n"
    )
    return ["--config", str(config)]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"FERROUSFORGE_API_KEY": ",".join(KEYS)}  # keys from the env, comma-separated
    yield from _start(
        [
            *_template_config(tmp_path_factory),
            "--parallel",
            str(PARALLEL),
            "--ctx-size",
            str(CTX * PARALLEL),
            "--max-body-bytes",
            "65536",
        ],
        env,
        KEYS[0],
    )


@pytest.fixture(scope="session")
def tiny_server() -> Iterator[Server]:
    """One slot and no queue: a second concurrent request must be refused with 503."""
    yield from _start(["--parallel", "1", "--max-waiting", "0", "--ctx-size", "512"], {}, None)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS[1], max_retries=0)


@pytest.fixture
def aclient(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEYS[0], max_retries=0)


CHAT = [{"role": "user", "content": "What is the capital of France?"}]


# ---- the OpenAI SDK -------------------------------------------------------------------


def test_models_list_and_get(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_completion(client: openai.OpenAI) -> None:
    """Smoke: a completion round-trips through the SDK (exact limits: test_regressions_server)."""
    r = client.completions.create(
        model=MODEL_ID,
        prompt="The capital of France is",
        max_tokens=5,
        temperature=0,
    )
    assert len(r.choices) == 1 and r.choices[0].text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 5 and r.usage.prompt_tokens > 0
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_completion_prompt_forms(client: openai.OpenAI, server: Server) -> None:
    ids = server.http().post("/tokenize", json={"content": "Hello there"}).json()["tokens"]
    for prompt, n_choices in (["a", "b", "c"], 3), (ids, 1), ([ids, ids], 2):
        r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=2, temperature=0)
        assert [c.index for c in r.choices] == list(range(n_choices))


def test_chat(client: openai.OpenAI) -> None:
    """Smoke: a chat reply comes back in the SDK's shape."""
    r = client.chat.completions.create(model=MODEL_ID, messages=CHAT, max_tokens=12, temperature=0)
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content.strip()
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=CHAT,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert 0 < last.usage.completion_tokens <= 8
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()


def test_completion_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL_ID,
        prompt="Once upon a time",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(isinstance(c, Completion) for c in chunks)
    assert chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].text for c in chunks if c.choices)


def test_concurrent_async_streams(aclient: openai.AsyncOpenAI) -> None:
    """Smoke: concurrent SDK streams all finish (interleaving: test_engine_real)."""

    async def one(i: int) -> tuple[str, str | None]:
        stream = await aclient.chat.completions.create(
            model=MODEL_ID,
            max_tokens=6,
            temperature=0,
            stream=True,
            messages=[{"role": "user", "content": f"Count to {i + 3}"}],
        )
        text, finish = "", None
        async for c in stream:
            if c.choices:
                text += c.choices[0].delta.content or ""
                finish = c.choices[0].finish_reason or finish
        return text, finish

    async def main() -> list[tuple[str, str | None]]:
        return await asyncio.gather(*(one(i) for i in range(5)))

    results = asyncio.run(main())
    assert all(text and finish in ("stop", "length") for text, finish in results)


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "country": {"enum": ["France", "Germany", "Italy"]},
            "population_millions": {"type": "integer"},
            "capital": {"type": "boolean"},
        },
        "required": ["city", "country", "population_millions", "capital"],
    }
    r = client.chat.completions.create(
        model=MODEL_ID,
        max_tokens=80,
        temperature=0,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_n_choices(client: openai.OpenAI) -> None:
    """Smoke: n=2 gives two indexed choices (usage over choices: test_regressions_server)."""
    r = client.chat.completions.create(
        model=MODEL_ID, messages=CHAT, n=2, max_tokens=5, temperature=1.0, seed=3
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL_ID,
        messages=CHAT,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    # greedy: the chosen token is the most likely one
    assert content[0].top_logprobs[0].token == content[0].token


def test_completion_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_ID, prompt="The sky is", max_tokens=4, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == len("The sky is")
    assert all(len(t) == 3 for t in lp.top_logprobs)


def test_echo_logprobs_with_zero_max_tokens(client: openai.OpenAI, server: Server) -> None:
    """lm-eval's loglikelihood request: echo=True, max_tokens=0, logprobs=1."""
    prompt = "The capital of France is Paris"
    n_prompt = len(server.http().post("/tokenize", json={"prompt": prompt}).json()["tokens"])
    r = client.completions.create(
        model=MODEL_ID,
        prompt=prompt,
        max_tokens=0,
        echo=True,
        logprobs=1,
        temperature=0,
    )
    c = r.choices[0]
    assert c.text == prompt
    assert len(c.logprobs.token_logprobs) == n_prompt
    assert c.logprobs.token_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in c.logprobs.token_logprobs[1:])
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == n_prompt
    # with one generated token (what lm-eval actually sends) the prompt part is the same
    r1 = client.completions.create(
        model=MODEL_ID,
        prompt=prompt,
        max_tokens=1,
        echo=True,
        logprobs=1,
        temperature=0,
    )
    lps1 = r1.choices[0].logprobs.token_logprobs
    assert len(lps1) == n_prompt + 1
    assert lps1[1:n_prompt] == pytest.approx(c.logprobs.token_logprobs[1:], abs=1e-3)


# ---- raw HTTP: every error status -------------------------------------------------------


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_malformed_json_is_400(server: Server) -> None:
    with server.http() as h:
        r = h.post(
            "/v1/chat/completions",
            content=b'{"messages": [',
            headers={"Content-Type": "application/json"},
        )
    _error(r, 400)


def test_invalid_fields_are_400(server: Server) -> None:
    with server.http() as h:
        err = _error(h.post("/v1/completions", json={"prompt": "x", "temperature": -1}), 400)
        assert err["param"] == "temperature"
        err = _error(h.post("/v1/completions", json={"prompt": "x", "top_k": -5}), 400)
        assert err["param"] == "top_k"
        _error(h.post("/v1/chat/completions", json={"messages": []}), 400)
        _error(h.post("/v1/completions", json={"prompt": [999999999]}), 400)
        _error(
            h.post(
                "/v1/chat/completions",
                json={
                    "messages": CHAT,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
                },
            ),
            400,
        )


def test_grammars_that_would_exhaust_memory_are_400_and_the_server_keeps_serving(
    server: Server,
) -> None:
    # llama.cpp expands a repetition {m,n} with m > n until the process is killed.
    bad_schema = {"type": "array", "minItems": 5, "maxItems": 2}
    with server.http() as h:
        err = _error(
            h.post(
                "/v1/chat/completions",
                json={
                    "messages": CHAT,
                    "max_tokens": 4,
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "x", "schema": bad_schema},
                    },
                },
            ),
            400,
        )
        assert "minItems" in err["message"]
        err = _error(
            h.post(
                "/v1/completions",
                json={"prompt": "x", "max_tokens": 4, "grammar": 'root ::= "a"{3,1}'},
            ),
            400,
        )
        assert err["param"] == "grammar"
        ok = h.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert ok.status_code == 200


def test_unknown_model_is_404_never_a_fallback(server: Server) -> None:
    with server.http() as h:
        err = _error(
            h.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": CHAT}), 404
        )
    assert err["code"] == "model_not_found"


def test_context_overflow_is_400(server: Server) -> None:
    with server.http() as h:
        r = h.post("/v1/completions", json={"prompt": "hello " * (CTX + 50), "max_tokens": 4})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    # OpenAI's code, llama-server's type and figures
    assert err["code"] == "context_length_exceeded" and err["message"]
    assert err["type"] == "exceed_context_size_error"
    assert err["n_prompt_tokens"] > CTX and 0 < err["n_ctx"] <= CTX


def test_api_key_required_except_health(server: Server) -> None:
    with server.http(key=None) as h:
        assert h.get("/health").status_code == 200
        _error(h.get("/v1/models"), 401)
        _error(h.post("/v1/completions", json={"prompt": "x"}), 401)
    with server.http(key="wrong") as h:
        _error(h.get("/v1/models"), 401)
    with server.http(key=KEYS[1]) as h:
        assert h.get("/v1/models").status_code == 200


def test_body_too_large_is_413(server: Server) -> None:
    with server.http() as h:
        r = h.post("/v1/completions", json={"prompt": "x" * 70000})
    _error(r, 413)


def test_overload_is_503_with_retry_after(tiny_server: Server) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with tiny_server.http() as h, h.stream("POST", "/v1/completions", json=body) as s:
        lines = s.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))  # it holds the slot
        with tiny_server.http() as h2:
            r = h2.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        _error(r, 503)
        assert int(r.headers["Retry-After"]) >= 1
    # the stream was dropped mid-way: its slot must come back
    _wait_idle(tiny_server)
    with tiny_server.http() as h:
        assert h.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200


@pytest.mark.skipif(has_chat_template(), reason="the model has a chat template")
def test_chat_without_a_template_is_400(tiny_server: Server) -> None:
    with tiny_server.http() as h:
        err = _error(h.post("/v1/chat/completions", json={"messages": CHAT}), 400)
    assert err["code"] == "chat_template_error" and "no chat template" in err["message"]


# ---- disconnects, metrics and the small endpoints ---------------------------------------


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"ferrousforge_{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} missing")


def _wait_idle(server: Server) -> str:
    """Poll /metrics until no slot is busy (an abort is processed within one engine step)."""
    with server.http() as h:
        for _ in range(100):
            text = h.get("/metrics").text
            if _metric(text, "busy_slots") == 0 and _metric(text, "requests_running") == 0:
                return text
            time.sleep(0.1)
    raise AssertionError("a slot stayed busy")


def test_disconnect_mid_stream_frees_the_slot(server: Server) -> None:
    body = {"messages": CHAT, "max_tokens": 900, "ignore_eos": True, "stream": True}
    with server.http() as h:
        with h.stream("POST", "/v1/chat/completions", json=body) as s:
            got = 0
            for line in s.iter_lines():
                got += line.startswith("data:")
                if got == 3:
                    break  # leave after a few chunks
        r = h.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    text = _wait_idle(server)
    assert _metric(text, "requests_aborted_total") >= 1


def test_metrics_format(server: Server) -> None:
    with server.http() as h:
        h.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        text = h.get("/metrics").text
    assert _metric(text, "generation_tokens_total") > 0
    assert _metric(text, "prompt_tokens_total") > 0
    assert "# TYPE ferrousforge_time_to_first_token_seconds histogram" in text
    assert f'ferrousforge_request_latency_seconds_bucket{{model="{MODEL_ID}",le="+Inf"}}' in text
    assert "ferrousforge_inter_token_latency_seconds_count" in text
    assert "ferrousforge_mean_busy_slots_per_decode" in text


def test_speculative_decoding_is_counted_and_a_request_can_opt_out(server: Server) -> None:
    code = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(6))
    body = {
        "prompt": f"{code}# The same functions again:\n\ndef f0(x):\n",
        "max_tokens": 40,
        "temperature": 0,
        "ignore_eos": True,
    }
    with server.http() as h:
        before = h.get("/metrics").text
        plain = h.post("/v1/completions", json={**body, "speculative.n_max": 0}).json()
        middle = h.get("/metrics").text
        fast = h.post("/v1/completions", json=body).json()
        after = h.get("/metrics").text
        bad = h.post("/v1/completions", json={**body, "speculative.n_max": -1})
    assert _metric(middle, "draft_tokens_total") == _metric(before, "draft_tokens_total")
    assert _metric(after, "draft_accepted_tokens_total") > _metric(
        middle, "draft_accepted_tokens_total"
    )
    assert fast["choices"][0]["text"] == plain["choices"][0]["text"]  # greedy: the same text
    assert bad.status_code == 400 and "speculative.n_max" in bad.text


def test_tokenize_detokenize_and_info(server: Server) -> None:
    with server.http() as h:
        a = h.post("/tokenize", json={"content": "Hello world"}).json()
        b = h.post("/tokenize", json={"prompt": "Hello world"}).json()
        assert a["tokens"] == b["tokens"] and a["count"] == len(a["tokens"]) > 0
        back = h.post("/detokenize", json={"tokens": a["tokens"]}).json()
        assert back["content"].strip().endswith("Hello world")
        pieces = h.post("/tokenize", json={"content": "Hi", "with_pieces": True}).json()
        assert all({"id", "piece"} <= set(p) for p in pieces["tokens"])
        info = h.get("/tokenizer_info").json()
        assert info["vocab_size"] > 1000 and info["eos_token_id"] in info["eog_token_ids"]
        assert h.get("/openapi.json").json()["paths"]["/v1/chat/completions"]
        assert h.post("/tokenize", json={}).json()["tokens"] == []  # as llama-server


def test_health_is_503_until_the_model_loads(tmp_path) -> None:
    """A model that cannot load leaves /health at 503 and requests get 503, not a crash."""
    from fastapi.testclient import TestClient

    from ferrousforge.api.app import create_app
    from ferrousforge.inference.backend import BackendConfig
    from ferrousforge.models.registry import ModelSpec
    from ferrousforge.settings import ServerSettings

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    spec = ModelSpec("broken", bad, BackendConfig(num_threads=1, context_size=256))
    with TestClient(create_app(ServerSettings(), [spec])) as c:
        for _ in range(100):
            r = c.get("/health")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["status"] == "error"
        err = _error(c.post("/v1/completions", json={"prompt": "x"}), 503)
        assert err["code"] == "model_loading" and "broken" in err["message"]
        assert "Retry-After" in c.post("/v1/completions", json={"prompt": "x"}).headers


def test_non_streaming_client_that_leaves_frees_its_slot(server: Server) -> None:
    body = {"messages": CHAT, "max_tokens": 900, "ignore_eos": True}
    with server.http() as h:
        before = _metric(h.get("/metrics").text, "requests_aborted_total")
        with pytest.raises(httpx.ReadTimeout):
            h.post("/v1/chat/completions", json=body, timeout=0.5)
    text = _wait_idle(server)
    assert _metric(text, "requests_aborted_total") > before


def test_a_prompt_that_lost_its_slot_comes_back_from_host_ram(tiny_server: Server) -> None:
    """One slot: B takes A's slot, so A's second run is restored from the --cache-ram store."""
    a, b = ("Tell me about trains. " * 12, "Tell me about boats. " * 12)
    with tiny_server.http() as h:
        before = _metric(h.get("/metrics").text, "host_cache_hits_total")
        for p in (a, b):
            h.post("/v1/completions", json={"prompt": p, "max_tokens": 2})
        r = h.post("/v1/completions", json={"prompt": a, "max_tokens": 2}).json()
        text = h.get("/metrics").text
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == r["usage"]["prompt_tokens"] - 1
    assert _metric(text, "host_cache_hits_total") == before + 1
    assert _metric(text, "host_cache_restored_tokens_total") >= r["usage"]["prompt_tokens"] - 1
    assert _metric(text, "host_cache_bytes") > 0 and _metric(text, "host_cache_entries") >= 1
    assert _metric(text, "host_cache_capacity_bytes") == 8192 * 1024 * 1024
