"""`ferrousforge serve --ray` end to end: a local Ray instance on loopback with two engine
replicas of the bundled model behind the ingress and the cache-aware router.

Slow (Ray's start, two model loads): run by `make test-ray`, which installs the ray extra
and sets FERROUSFORGE_RAY_TESTS=1; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live_server import LiveServer, live_server

pytest.importorskip("ray.serve")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.server,
    pytest.mark.skipif(
        os.environ.get("FERROUSFORGE_RAY_TESTS") != "1",
        reason="slow: `make test-ray` runs these (FERROUSFORGE_RAY_TESTS=1)",
    ),
]

KEY = "sk-ray-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPLICA = "x-ferrousforge-replica"
CLIENT_TIMEOUT_S = 60.0  # no client may wait longer than this, replica death included


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the Ray head, raylet, workers started by the server)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def engine_pids(server: LiveServer) -> list[int]:
    return [p for p in _descendants(server.proc.pid) if "ferrousforge:Engine" in _cmdline(p)]


@pytest.fixture(scope="module")
def ray_server() -> Iterator[LiveServer]:
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "1"}
    seen: list[int] = []
    try:
        with live_server(
            "--ray", "--replicas", "2", "--threads", "1", "--parallel", "4", "--api-key", KEY,
            env=env, ready_s=240,
        ) as server:  # fmt: skip
            seen = _descendants(server.proc.pid)
            _wait_for_replicas(server, 2)
            yield server
    finally:
        for pid in seen:  # anything Ray left behind after the server's own shutdown
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_for_replicas(server: LiveServer, n: int, wait_s: float = 90) -> None:
    """Until every replica reports its metrics (each is up and has been seen by the ingress)."""
    deadline = time.monotonic() + wait_s
    while (
        f"ferrousforge_replicas {n}"
        not in httpx.get(server.url + "/metrics", headers=AUTH, timeout=30).text
    ):
        assert time.monotonic() < deadline, f"fewer than {n} replicas after {wait_s} s"
        time.sleep(1)


def chat(messages: list[dict], max_tokens: int = 8, **extra) -> dict:
    return {"messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}


async def _post(client: httpx.AsyncClient, url: str, body: dict) -> httpx.Response:
    return await client.post(url, json=body, headers=AUTH, timeout=CLIENT_TIMEOUT_S)


def test_requests_spread_over_both_replicas(ray_server: LiveServer) -> None:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient() as client:
            bodies = [
                chat([{"role": "user", "content": f"{i}: name a colour and a fruit"}], 16)
                for i in range(8)
            ]
            url = ray_server.url + "/v1/chat/completions"
            return await asyncio.gather(*(_post(client, url, b) for b in bodies))

    seen: set[str] = set()
    for _ in range(2):  # the ingress's router may learn of the second replica a moment late
        responses = asyncio.run(main())
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        seen |= {r.headers[REPLICA] for r in responses}
    assert len(seen) == 2


def test_stream_arrives_whole_through_the_ingress(ray_server: LiveServer) -> None:
    body = chat([{"role": "user", "content": "Count to five."}], 12, stream=True)
    with httpx.stream(
        "POST", ray_server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3


def test_a_conversation_sticks_to_one_replica_and_reuses_its_cache(
    ray_server: LiveServer,
) -> None:
    messages = [
        {"role": "system", "content": "You are a patient tutor. " * 8},
        {"role": "user", "content": "Explain in one sentence why the sky is blue."},
    ]
    replicas, cached = [], []
    with httpx.Client(headers=AUTH, timeout=60) as client:
        for turn in range(4):
            r = client.post(ray_server.url + "/v1/chat/completions", json=chat(messages, 16))
            assert r.status_code == 200, r.text
            data = r.json()
            replicas.append(r.headers[REPLICA])
            cached.append(data["usage"]["prompt_tokens_details"]["cached_tokens"])
            # another conversation between the turns: the replicas must stay free to choose
            other = chat([{"role": "user", "content": f"Say {turn} backwards, {turn}."}], 4)
            assert client.post(ray_server.url + "/v1/chat/completions", json=other).is_success
            messages += [
                {"role": "assistant", "content": data["choices"][0]["message"]["content"]},
                {"role": "user", "content": f"And question {turn + 2}: why?"},
            ]
    assert len(set(replicas)) == 1, replicas
    assert all(b > a for a, b in itertools.pairwise(cached[1:])), cached
    assert cached[1] > 40, cached


def test_auth_and_errors_are_the_plain_servers(ray_server: LiveServer) -> None:
    url = ray_server.url + "/v1/chat/completions"
    r = httpx.post(url, json=chat([{"role": "user", "content": "hi"}]), timeout=30)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {
        "error": {
            "message": "missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    r = httpx.post(url, json={"messages": 5}, headers=AUTH, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["param"] == "messages"
    r = httpx.post(ray_server.url + "/v1/messages", json={}, timeout=30)  # Anthropic's shape
    assert r.status_code == 401 and r.json()["type"] == "error"
    big = b'{"prompt": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = httpx.post(ray_server.url + "/v1/completions", content=big, headers=AUTH, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(ray_server.url + "/health", timeout=30).status_code == 200


def test_metrics_merge_both_replicas(ray_server: LiveServer) -> None:
    assert httpx.get(ray_server.url + "/metrics", timeout=30).status_code == 401
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(ray_server.url + "/metrics", headers=AUTH, timeout=30).text
        if "ferrousforge_replicas 2" in text or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "ferrousforge_replicas 2" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("ferrousforge_generation_tokens_total")]
    assert len(rows) == 2 and all('replica="' in ln for ln in rows)


def test_a_replica_killed_mid_request_fails_its_clients_cleanly(ray_server: LiveServer) -> None:
    pids = engine_pids(ray_server)
    assert len(pids) == 2, pids

    async def one(client: httpx.AsyncClient, i: int) -> str:
        body = chat([{"role": "user", "content": f"{i}: write a long story."}], 200, stream=True)
        t0 = time.monotonic()
        try:
            async with client.stream(
                "POST", ray_server.url + "/v1/chat/completions", json=body, headers=AUTH,
                timeout=CLIENT_TIMEOUT_S,
            ) as r:  # fmt: skip
                text = "".join([chunk async for chunk in r.aiter_text()])
            ok = r.status_code == 200 and text.rstrip().endswith("data: [DONE]")
            outcome = "ok" if ok and '"error"' not in text else f"error {r.status_code}"
        except httpx.HTTPError as e:  # a dropped connection is an error, not a hang
            outcome = f"error {type(e).__name__}"
        assert time.monotonic() - t0 < CLIENT_TIMEOUT_S + 5
        return outcome

    async def main() -> list[str]:
        async with httpx.AsyncClient() as client:
            tasks = [asyncio.create_task(one(client, i)) for i in range(6)]
            await asyncio.sleep(3)  # every stream under way on one replica or the other
            os.kill(pids[0], signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*tasks), CLIENT_TIMEOUT_S + 10)

    outcomes = asyncio.run(main())
    assert any(o.startswith("error") for o in outcomes), outcomes  # the dead one's clients
    assert "ok" in outcomes, outcomes  # the other replica's
    # Serve notices the death and replaces the replica; requests succeed meanwhile.
    deadline = time.monotonic() + 90
    streak = 0
    body = chat([{"role": "user", "content": "hello again"}], 4)
    while streak < 4:
        assert time.monotonic() < deadline, "requests kept failing after a replica died"
        r = httpx.post(ray_server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        streak = streak + 1 if r.status_code == 200 else 0
        if r.status_code != 200:
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_stopped"
            time.sleep(1)
    deadline = time.monotonic() + 120
    while len(engine_pids(ray_server)) < 2:
        assert time.monotonic() < deadline, "the dead replica was not replaced"
        time.sleep(2)
