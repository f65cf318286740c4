"""The real app and model in-process: request preparation off the event loop, full-context
scoring, the `n` capacity limit and /tokenize counting as generation does."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from model_traits import chat_template_for_tests

from ferrousforge.api.app import create_app
from ferrousforge.models.registry import ModelSpec, backend_config
from ferrousforge.settings import ServerSettings

pytestmark = pytest.mark.server

PARALLEL, MAX_WAITING, CTX = 2, 1, 256  # CTX tokens per request


@dataclass
class Served:
    client: httpx.AsyncClient
    app: object

    @property
    def pool(self):
        return self.app.state.ff.pool

    @property
    def lm(self):
        return next(iter(self.pool.loaded.values()))


@contextlib.asynccontextmanager
async def _serve(model_path: Path, chat_template: str | None = None) -> AsyncIterator[Served]:
    settings = ServerSettings(
        parallel=PARALLEL, ctx_size=CTX * PARALLEL, max_waiting=MAX_WAITING, threads=2
    )
    spec = ModelSpec("m", model_path, backend_config(settings, None), chat_template)
    app = create_app(settings, [spec])
    async with app.router.lifespan_context(app):
        for _ in range(600):
            if app.state.ff.ready or app.state.ff.load_error:
                break
            await asyncio.sleep(0.05)
        assert app.state.ff.ready, app.state.ff.load_error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            yield Served(c, app)


@pytest.fixture
async def served(model_path: Path) -> AsyncIterator[Served]:
    # these tests chat about something else: a model without a template gets a generic one
    async with _serve(model_path, chat_template_for_tests()) as s:
        yield s


class SlowRender:
    """Wraps backend.plan_chat: a conversation saying 'slow' blocks until released."""

    def __init__(self, backend) -> None:
        self.inner = backend.plan_chat
        self.started = threading.Event()
        self.release = threading.Event()
        self.done: list[str] = []

    def __call__(self, handle, chat, *rest):
        if chat.messages[-1]["content"] == "slow":
            self.started.set()
            self.release.wait(timeout=30)  # bounded, so old code fails instead of hanging
            self.done.append("slow prepared")
        return self.inner(handle, chat, *rest)


async def _until(flag: threading.Event) -> None:
    for _ in range(600):
        if flag.is_set():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the slow request never started")


async def _wait_idle(s: Served) -> None:
    for _ in range(400):
        if s.lm.engine.in_flight == 0 and s.lm.engine.scheduler.busy_slots() == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{s.lm.engine.in_flight} requests still hold the engine")


def _chat(content: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}


async def test_an_expensive_setup_delays_only_its_own_request(served: Served) -> None:
    slow = SlowRender(served.pool.backend)
    served.pool.backend.plan_chat = slow
    big = asyncio.create_task(served.client.post("/v1/chat/completions", json=_chat("slow")))
    await _until(slow.started)
    health = await served.client.get("/health")
    small = await served.client.post("/v1/chat/completions", json=_chat("Hi"))
    tokens = await served.client.post("/tokenize", json={"content": "Hello"})
    order = [*slow.done, "others answered"]
    slow.release.set()
    r = await big
    assert health.status_code == 200 and small.status_code == 200 and tokens.status_code == 200
    assert order == ["others answered"]  # they did not wait for the slow preparation
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


async def test_a_client_gone_during_preparation_leaves_no_slot_behind(served: Served) -> None:
    slow = SlowRender(served.pool.backend)
    served.pool.backend.plan_chat = slow
    long = _chat("slow", max_tokens=200, ignore_eos=True)
    big = asyncio.create_task(served.client.post("/v1/chat/completions", json=long))
    await _until(slow.started)
    big.cancel()  # the client leaves while the template is still rendering
    await asyncio.gather(big, return_exceptions=True)
    slow.release.set()  # the preparation then finishes and submits its request
    stats = served.lm.engine.stats
    for _ in range(1200):
        if stats.requests_aborted + stats.requests_finished:
            break
        await asyncio.sleep(0.05)
    assert (stats.requests_aborted, stats.requests_finished) == (1, 0)  # not run to its end
    await _wait_idle(served)
    for _ in range(PARALLEL + MAX_WAITING):  # every slot and queue place is usable again
        r = await served.client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert r.status_code == 200, r.text
    assert served.pool.entries["m"].leases == 0  # nor does it keep the model from unloading


async def test_a_response_holds_its_model_until_it_ends_and_then_lets_go(served: Served) -> None:
    """Each request leases its model from before it is prepared until its response ends
    (the last chunks still read the vocabulary); every path gives the lease back."""
    entry = served.pool.entries["m"]
    leases = []
    release = served.pool.release
    engine = served.lm.engine

    def spy(mid: str) -> None:  # at each release: the leases held, and requests in the engine
        leases.append((entry.leases, engine.in_flight))
        release(mid)

    served.pool.release = spy  # type: ignore[method-assign]
    try:
        r = await served.client.post("/v1/chat/completions", json=_chat("Hi", logprobs=True))
        assert r.status_code == 200
        body = {**_chat("Hi", logprobs=True), "stream": True}
        async with served.client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert [line async for line in r.aiter_lines()][-2] == "data: [DONE]"
        r = await served.client.post("/v1/chat/completions", json=_chat("Hi", max_tokens=10**6))
        assert r.status_code == 400  # refused while preparing
    finally:
        served.pool.release = release  # type: ignore[method-assign]
    # One lease each, given back once, and only after the engine was done with the request
    # (released at submission, the model could unload under the response's last chunks).
    assert leases == [(1, 0)] * 3 and entry.leases == 0


async def test_prompt_filling_the_whole_context_can_be_scored(served: Served) -> None:
    ids = await served.client.post("/tokenize", json={"content": "the sea is blue. " * 200})
    prompt = ids.json()["tokens"][:CTX]
    r = await served.client.post(
        "/v1/completions",
        json={"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0},
    )
    assert r.status_code == 200, r.text
    lps = r.json()["choices"][0]["logprobs"]
    assert len(lps["tokens"]) == CTX and lps["token_logprobs"][0] is None
    assert all(lp is not None for lp in lps["token_logprobs"][1:])
    # one more token than fits is still refused, and so is a full prompt that asks for output
    over = await served.client.post(
        "/v1/completions", json={"prompt": [*prompt, prompt[0]], "echo": True, "max_tokens": 0}
    )
    assert over.status_code == 400 and over.json()["error"]["code"] == "context_length_exceeded"
    full = await served.client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
    assert full.status_code == 400


async def test_n_beyond_what_the_server_can_ever_hold_is_400_not_503(served: Served) -> None:
    limit = PARALLEL + MAX_WAITING
    r = await served.client.post("/v1/chat/completions", json=_chat("Hi", n=limit + 1))
    assert r.status_code == 400 and "Retry-After" not in r.headers
    err = r.json()["error"]
    assert err["param"] == "n" and str(limit) in err["message"]
    r = await served.client.post(
        "/v1/completions", json={"prompt": ["a", "b"], "n": limit - 1, "max_tokens": 1}
    )
    assert r.status_code == 400 and "2 prompts" in r.json()["error"]["message"]
    ok = await served.client.post(
        "/v1/completions", json={"prompt": "a", "n": limit, "max_tokens": 1}
    )
    assert ok.status_code == 200 and len(ok.json()["choices"]) == limit


async def test_tokenize_counts_a_chat_as_generation_does(model_path: Path) -> None:
    """A template that writes the BOS itself on a model that adds one: one BOS, not two."""
    template = (
        "{{ bos_token }}Chat:\n{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    )
    async with _serve(model_path, chat_template=template) as s:
        vocab = s.lm.vocab
        if not vocab.add_bos:  # the default model adds none: make it behave like one that does
            _add_bos(vocab)
        msgs = [{"role": "user", "content": "Say hi"}]
        counted = (await s.client.post("/tokenize", json={"messages": msgs})).json()
        r = await s.client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 1})
        assert r.status_code == 200, r.text
        assert counted["count"] == r.json()["usage"]["prompt_tokens"]
        assert counted["tokens"][:2] != [vocab.bos, vocab.bos]


def _add_bos(vocab) -> None:
    plain = vocab.tokenize

    def tokenize(text, add_special=True, parse_special=False):
        ids = plain(text, add_special=add_special, parse_special=parse_special)
        return [vocab.bos, *ids] if add_special else ids

    vocab.tokenize, vocab.add_bos = tokenize, True
