"""The Ray serving layer's plain-Python parts (no Ray needed): route keys, the prefix index,
the in-process ASGI driver, merged metrics, the replica settings, and `serve --ray` without
Ray installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from ferrousforge.serving_ray.asgi_driver import coalesce, drive, portable_scope
from ferrousforge.serving_ray.metrics_board import MetricsBoard, merge_metrics
from ferrousforge.serving_ray.prefix_index import PrefixIndex, block_hashes
from ferrousforge.serving_ray.route_key import route_key
from ferrousforge.settings import load_settings


def _chat(*messages: tuple[str, str], model: str = "m") -> bytes:
    return orjson.dumps(
        {"model": model, "messages": [{"role": r, "content": c} for r, c in messages]}
    )


def test_a_conversations_next_turn_starts_with_its_previous_key() -> None:
    first = route_key(_chat(("system", "be brief"), ("user", "hello there")))
    second = route_key(
        _chat(
            ("system", "be brief"), ("user", "hello there"), ("assistant", "hi"), ("user", "more")
        )
    )
    assert first and second.startswith(first)
    parts = {"type": "text", "text": "hello there"}
    assert route_key(_chat(("user", [parts]))) == route_key(_chat(("user", "hello there")))  # type: ignore[arg-type]


def test_route_keys_of_other_apis_and_of_junk() -> None:
    assert "a prompt" in route_key(b'{"prompt": "a prompt", "model": "m"}')
    assert "sys" in route_key(b'{"system": "sys", "messages": [{"role": "user", "content": "x"}]}')
    assert "in" in route_key(b'{"input": "in"}')
    assert route_key(b'{"prompt": [1, 2, 3]}').endswith("1 2 3")
    for junk in (b"", b"not json", b"[1, 2]", b'{"max_tokens": 5}'):
        assert route_key(junk) == ""


def test_block_hashes_chain_so_only_a_shared_prefix_matches() -> None:
    a = block_hashes("x" * 64 + "y" * 64 + "tail", 64)
    b = block_hashes("x" * 64 + "z" * 64, 64)
    assert len(a) == 2 and len(b) == 2
    assert a[0] == b[0] and a[1] != b[1]
    assert block_hashes("short", 64) == []
    # the same second block after a different first block is a different hash
    assert block_hashes("w" * 64 + "y" * 64, 64)[1] != a[1]
    with pytest.raises(ValueError, match="block_chars"):
        block_hashes("x", 0)


def test_prefix_index_finds_the_longest_prefix_owner_among_live_replicas() -> None:
    idx = PrefixIndex(max_blocks=100)
    conv = block_hashes("s" * 64 + "t1" * 32 + "t2" * 32, 64)
    idx.record(conv[:2], "r1")  # turn 1 on r1
    idx.record(block_hashes("s" * 64 + "q" * 64, 64), "r2")  # same system prompt, on r2
    assert idx.longest_owner(conv) == ("r1", 2)
    assert idx.longest_owner(conv, alive={"r2"}) == ("r2", 1)  # r1 died: the shared block
    idx.forget(["r1"])
    assert idx.longest_owner(conv) == ("r2", 1)
    assert idx.longest_owner(block_hashes("u" * 128, 64)) == (None, 0)


def test_prefix_index_evicts_the_least_recently_used_blocks() -> None:
    idx = PrefixIndex(max_blocks=2)
    old, new = block_hashes("o" * 128, 64), block_hashes("n" * 128, 64)
    idx.record(old, "r1")
    idx.record(new, "r2")
    assert len(idx) == 2
    assert idx.longest_owner(old) == (None, 0)
    assert idx.longest_owner(new) == ("r2", 2)
    idx.record(old[:1], "r1")  # a block's chained hash stands for its whole prefix
    assert idx.longest_owner(old) == ("r1", 1)


def test_coalesce_joins_body_chunks_only() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": []}
    chunks = [{"type": "http.response.body", "body": b, "more_body": True} for b in (b"a", b"b")]
    end = {"type": "http.response.body", "body": b"c", "more_body": False}
    out = coalesce([start, *chunks, end])
    assert out == [start, {"type": "http.response.body", "body": b"abc", "more_body": False}]


async def test_drive_runs_an_asgi_app_and_adds_headers() -> None:
    seen = {}

    async def app(scope, receive, send):
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 201, "headers": [(b"a", b"1")]})
        for part in (b"x", b"y"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    scope = portable_scope({"type": "http", "method": "POST", "path": "/p", "app": object(),
                            "headers": [(b"h", b"v")]})  # fmt: skip
    assert "app" not in scope
    batches = [b async for b in drive(app, scope, b"payload", [(b"x-r", b"id")])]
    messages = [m for b in batches for m in b]
    assert seen["body"] == b"payload"
    assert messages[0]["status"] == 201 and (b"x-r", b"id") in messages[0]["headers"]
    assert b"".join(m.get("body", b"") for m in messages[1:]) == b"xy"
    assert messages[-1]["more_body"] is False


async def test_closing_drive_early_tells_the_app_the_client_left() -> None:
    events = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        events.append((await receive())["type"])

    gen = drive(app, {"type": "http"}, b"")
    await gen.__anext__()
    await gen.aclose()
    assert events == ["http.disconnect"]


def test_merged_metrics_label_every_series_with_its_replica() -> None:
    text = (
        "# HELP ff_tokens_total Tokens\n# TYPE ff_tokens_total counter\n"
        'ff_tokens_total{model="m"} 5\n# HELP llamacpp:x X\n# TYPE llamacpp:x gauge\nllamacpp:x 1\n'
    )
    board = MetricsBoard()
    board.put("r1", text)
    board.put("r2", text.replace(" 5", " 7"))
    out = merge_metrics(board.collect())
    assert out.count("# TYPE ff_tokens_total counter") == 1
    assert 'ff_tokens_total{model="m",replica="r1"} 5' in out
    assert 'ff_tokens_total{model="m",replica="r2"} 7' in out
    assert 'llamacpp:x{replica="r2"} 1' in out
    assert "ferrousforge_replicas 2" in out


def test_replica_settings_are_validated() -> None:
    s = load_settings({"ray": True, "replicas": 2, "min_replicas": 1, "max_replicas": 4})
    assert (s.replicas, s.min_replicas, s.max_replicas) == (2, 1, 4)
    with pytest.raises(ValidationError, match="min_replicas"):
        load_settings({"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ValidationError, match="replicas: must lie"):
        load_settings({"replicas": 5, "max_replicas": 2})
    with pytest.raises(ValidationError):
        load_settings({"replicas": 0})
    with pytest.raises(ValidationError, match="one --host"):
        load_settings({"ray": True, "host": "127.0.0.1,10.0.0.5"})
    assert load_settings({"host": "127.0.0.1,10.0.0.5"}).hosts == ["127.0.0.1", "10.0.0.5"]


class _FakeEngine:
    """Stands in for the EngineReplica handle: streams ``batches`` or raises ``error``."""

    def __init__(self, batches: list | None = None, error: BaseException | None = None):
        self.batches, self.error, self.calls = batches or [], error, 0

    def options(self, **_: object) -> _FakeEngine:
        return self

    @property
    def asgi(self) -> _FakeEngine:
        return self

    def remote(self, scope, body, route):
        self.calls += 1
        return self._stream()

    async def _stream(self):
        if self.error is not None:
            raise self.error
        for batch in self.batches:
            yield batch


async def _call_ingress(ingress, method: str, body: bytes = b"") -> list[dict]:
    sent: list[dict] = []
    headers = [(b"origin", b"http://localhost:3000"), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": method, "path": "/v1/chat/completions",
             "headers": headers, "query_string": b""}  # fmt: skip
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive():
        return next(messages, {"type": "http.disconnect"})

    async def send(message):
        sent.append(message)

    await ingress.asgi(scope, receive, send)
    return sent


def _origin_headers(start: dict) -> list[bytes]:
    return [v for k, v in start["headers"] if k.lower() == b"access-control-allow-origin"]


async def test_ingress_answers_of_its_own_carry_cors_headers_once() -> None:
    """413 (body over the limit), 503 (a replica died) and the preflight come from the
    ingress itself, not a replica: a browser client must still be allowed to read them."""
    pytest.importorskip("ray.serve")
    from ray.exceptions import RayError

    from ferrousforge.serving_ray.deployments import Ingress

    settings = load_settings({"cors_origins": "localhost", "max_body_bytes": 1024})
    big = await _call_ingress(Ingress(_FakeEngine(), settings), "POST", b"x" * 2000)
    dead = await _call_ingress(Ingress(_FakeEngine(error=RayError("gone")), settings), "POST")
    pre = await _call_ingress(Ingress(_FakeEngine(), settings), "OPTIONS")
    for sent, status in ((big, 413), (dead, 503), (pre, 200)):
        assert sent[0]["status"] == status
        assert _origin_headers(sent[0]) == [b"http://localhost:3000"], status
    # A replica's answer has the headers already (its app has the middleware): not twice.
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"access-control-allow-origin", b"http://localhost:3000")]}  # fmt: skip
    done = {"type": "http.response.body", "body": b"{}", "more_body": False}
    ok = await _call_ingress(Ingress(_FakeEngine([[start, done]]), settings), "POST", b"{}")
    assert ok[0]["status"] == 200 and len(_origin_headers(ok[0])) == 1


def _without_ray(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import ray` fails (a sitecustomize blocks it)."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def test_serve_ray_without_ray_names_the_extra(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", "serve", "--ray", "--port", "1"],
        env=_without_ray(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "pip install 'ferrousforge[ray]'" in proc.stderr


@pytest.mark.integration
@pytest.mark.server
def test_plain_serve_works_without_ray(tmp_path: Path) -> None:
    import httpx

    from tests.live_server import live_server

    with live_server("--parallel", "1", env=_without_ray(tmp_path)) as server:
        # A plain completion: any model serves it, with or without a chat template.
        r = httpx.post(
            server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4}, timeout=60
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
