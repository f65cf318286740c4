"""`ferrousforge serve --ray` autoscaling on queue length: a local Ray instance that starts
with one engine replica, adds the second while clients keep more requests in flight than
--target-ongoing-requests, and goes back to one once they stop. No request fails meanwhile.

Its own module (its own Ray instance, after test_ray_serve's is gone); run by `make test-ray`.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx

from tests.live_server import LiveServer, live_server

# test_ray_serve skips without Ray; its marks (slow: only `make test-ray`) are these too.
from tests.test_ray_serve import AUTH, KEY, REPLICA, _descendants, pytestmark  # noqa: F401

SCALE_WAIT_S = 150  # Serve averages queue lengths over a 30 s window before it decides


def _replicas(server: LiveServer) -> int:
    text = httpx.get(server.url + "/metrics", headers=AUTH, timeout=30).text
    line = next(ln for ln in text.splitlines() if ln.startswith("ferrousforge_replicas "))
    return int(line.split()[1])


def _until(server: LiveServer, n: int) -> float:
    """Seconds until /metrics counts ``n`` replicas (fails after SCALE_WAIT_S)."""
    t0 = time.monotonic()
    while _replicas(server) != n:
        assert time.monotonic() - t0 < SCALE_WAIT_S, f"not {n} replica(s) after {SCALE_WAIT_S} s"
        time.sleep(1)
    return time.monotonic() - t0


class Load:
    """``clients`` threads posting completions back to back until stopped; every status and
    serving replica recorded."""

    def __init__(self, server: LiveServer, clients: int) -> None:
        self.url = server.url + "/v1/completions"
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.replicas: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(k,)) for k in range(clients)]

    def _client(self, k: int) -> None:
        with httpx.Client(headers=AUTH, timeout=60) as http:
            i = 0
            while not self.stop.is_set():
                body = {"prompt": f"Client {k}, request {i}:", "max_tokens": 32,
                        "ignore_eos": True, "temperature": 0}  # fmt: skip
                r = http.post(self.url, json=body)
                self.statuses.append(r.status_code)
                self.replicas.append(r.headers.get(REPLICA, ""))
                i += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def test_autoscaling_adds_a_replica_under_load_and_removes_it_when_idle() -> None:
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "1"}
    seen: list[int] = []
    try:
        with live_server(
            "--ray", "--min-replicas", "1", "--max-replicas", "2", "--target-ongoing-requests",
            "1", "--upscale-delay", "1", "--downscale-delay", "5", "--threads", "1",
            "--parallel", "2", "--api-key", KEY, env=env, ready_s=240,
        ) as server:  # fmt: skip
            seen = _descendants(server.proc.pid)
            _until(server, 1)
            with Load(server, clients=4) as load:
                up_s = _until(server, 2)
                seen += _descendants(server.proc.pid)  # the new replica's worker too
                mark = len(load.replicas)
                time.sleep(5)  # requests now reach the new replica too
                after = set(load.replicas[mark:])
            assert load.statuses and set(load.statuses) == {200}, set(load.statuses)
            assert len(after) == 2, after
            down_s = _until(server, 1)
            r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                           headers=AUTH, timeout=60)  # fmt: skip
            assert r.status_code == 200
            print(f"scaled up after {up_s:.0f} s of load, down after {down_s:.0f} s idle")
    finally:
        for pid in set(seen):  # anything Ray left behind after the server's own shutdown
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
