"""The two Ray Serve deployments: ``Ingress`` (reads the request, picks no replica itself)
and ``EngineReplica`` (the same FastAPI app as ``ferrousforge serve``, driven in-process).

Serve's HTTP proxy never shows a request body to a router, so the ingress reads it, computes
the route key's block hashes, and calls the engines through a handle; the cache-aware
router (router.py) picks the replica from those hashes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError, RayError
from starlette.types import Message, Receive, Scope, Send

from ferrousforge.api.auth import APIKeyMiddleware
from ferrousforge.api.cors import CORSMiddleware, cors_options
from ferrousforge.api.errors import error_response, shaped_for
from ferrousforge.api.limits import BodyLimitMiddleware
from ferrousforge.api.sse import event
from ferrousforge.errors import EngineStoppedError
from ferrousforge.models.registry import ModelSpec
from ferrousforge.serving_ray.asgi_driver import drive, portable_scope
from ferrousforge.serving_ray.metrics_board import merge_metrics
from ferrousforge.serving_ray.prefix_index import DEFAULT_BLOCK_CHARS, block_hashes
from ferrousforge.serving_ray.route_key import route_key
from ferrousforge.settings import ServerSettings

log = logging.getLogger(__name__)

REPLICA_HEADER = b"x-ferrousforge-replica"
BOARD_NAMESPACE = "ferrousforge"  # where the launcher creates the metrics board
METRICS_PUSH_S = 2.0  # how often each engine replica hands its /metrics text to the board


class EngineReplica:
    """One replica: loads the models once and serves the whole API over ASGI calls."""

    async def __init__(
        self, settings: ServerSettings, specs: list[ModelSpec], board_name: str | None = None
    ) -> None:
        from ferrousforge.api.app import create_app

        logging.getLogger("ferrousforge").setLevel(getattr(logging, settings.log_level.upper()))
        self._app = create_app(settings, specs)
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        state = self._app.state.ff
        while not state.ready:  # Serve routes to a replica only once __init__ returns
            if state.load_error:
                raise RuntimeError(state.load_error)
            await asyncio.sleep(0.05)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._id_header = (REPLICA_HEADER, self.replica_id.encode())
        self._pusher = None
        if board_name and settings.metrics:
            board = ray.get_actor(board_name, namespace=BOARD_NAMESPACE)
            self._pusher = asyncio.create_task(self._push_metrics(board))

    async def asgi(
        self, scope: dict[str, Any], body: bytes, route: list[bytes] | None = None
    ):  # -> AsyncIterator[list[Message]]
        """One HTTP request through the app: batches of ASGI messages. ``route`` is for the
        router only."""
        async for batch in drive(self._app, scope, body, [self._id_header]):
            yield batch

    def record_routing_stats(self) -> dict[str, int]:
        """The engines' own load (Serve pulls it every request_routing_stats_period_s)."""
        running = waiting = 0
        for lm in list(self._app.state.ff.pool.loaded.values()):
            sched = lm.engine.scheduler
            running += len(sched.running)
            waiting += len(sched.waiting)
        return {"running": running, "waiting": waiting}

    async def _push_metrics(self, board: Any) -> None:
        from ferrousforge.api.metrics import render_metrics

        while True:
            try:
                text = render_metrics(self._app.state.ff.pool)
                await board.put.remote(self.replica_id, text)
            except Exception as e:  # the board restarting must not stop the replica
                log.warning("metrics push failed: %s", e)
            await asyncio.sleep(METRICS_PUSH_S)

    async def __del__(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
        await self._lifespan.__aexit__(None, None, None)


class Ingress:
    """A raw ASGI app: bounded body read, route key, forward to the engines, replay.

    A replica that dies before answering gives the client a 503 in the API's error shape;
    one that dies mid-stream ends the stream with an error event. Serve never retries a
    request it has handed to a replica, so neither do we: a retry could repeat side effects
    (tool calls, stored responses).
    """

    def __init__(
        self,
        engine: Any,
        settings: ServerSettings,
        board_name: str | None = None,
        block_chars: int = DEFAULT_BLOCK_CHARS,
    ) -> None:
        self._engine = engine.options(stream=True)
        self._board = ray.get_actor(board_name, namespace=BOARD_NAMESPACE) if board_name else None
        self._block_chars = block_chars
        self._metrics_on = settings.metrics
        app = BodyLimitMiddleware(self._forward, max_bytes=settings.max_body_bytes)
        metrics = self._metrics
        if settings.api_key:  # /metrics answered here needs the key as everywhere else
            metrics = APIKeyMiddleware(metrics, keys=settings.api_key)
        if settings.cors_origins:  # the ingress's own answers (413, 503, preflight) too
            app = CORSMiddleware(app, **cors_options(settings))
            metrics = CORSMiddleware(metrics, **cors_options(settings))
        self._app, self._metrics_app = app, metrics

    def __serve_build_asgi_app__(self) -> _ASGIEntry:
        return _ASGIEntry(self)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return
        if (
            self._board is not None
            and self._metrics_on
            and scope["method"] == "GET"
            and scope["path"] == "/metrics"
        ):
            return await self._metrics_app(scope, receive, send)
        await self._app(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()  # BodyLimitMiddleware replays the whole body at once
        body = message.get("body", b"")
        hashes = block_hashes(route_key(body), self._block_chars)
        started = False
        try:
            gen = self._engine.asgi.remote(portable_scope(scope), body, route=hashes)
            async for batch in gen:
                for m in batch:
                    started = started or m["type"] == "http.response.start"
                    await send(m)
        except (RayActorError, RayError) as e:
            log.warning("engine replica failed during %s: %s", scope["path"], e)
            await _fail(scope, send, started, e)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        texts = await self._board.collect.remote()
        body = merge_metrics(texts).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _ASGIEntry:
    """The ingress as an ASGI 3 callable (uvicorn takes a bound method for ASGI 2)."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.ingress.asgi(scope, receive, send)


async def _fail(scope: Scope, send: Send, started: bool, exc: BaseException) -> None:
    err = EngineStoppedError(
        f"the engine replica serving this request failed: {type(exc).__name__}"
    )
    if not started:
        response = shaped_for(scope["path"], error_response(err))
        await response(scope, _no_receive, send)
        return
    # Headers are gone: an SSE client reads the error as one more event; others see a
    # truncated body, which no JSON parser accepts.
    payload = event(_error_json(err))
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _error_json(err: BaseException) -> dict:
    import orjson

    return orjson.loads(error_response(err).body)


async def _no_receive() -> Message:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
