"""The FastAPI application: ``create_app(settings)`` wires routes, middleware and models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from ferrousforge import __version__
from ferrousforge.api import cors_proxy, embeddings, input_tokens, native, props, slots
from ferrousforge.api.auth import OPEN_PATHS, APIKeyMiddleware
from ferrousforge.api.chat_routes import router as chat_router
from ferrousforge.api.cors import CORSMiddleware, cors_options
from ferrousforge.api.errors import install_error_handlers
from ferrousforge.api.limits import BodyLimitMiddleware
from ferrousforge.api.messages import router as messages_router
from ferrousforge.api.openapi import install_openapi
from ferrousforge.api.responses import router as responses_router
from ferrousforge.api.routes import ServerState, router
from ferrousforge.api.server_tools import router as server_tools_router
from ferrousforge.api.vertex import install_vertex, vertex_routes
from ferrousforge.models.pool import ModelPool
from ferrousforge.models.registry import ModelSpec
from ferrousforge.settings import ServerSettings
from ferrousforge.tools_server.registry import ServerTools

log = logging.getLogger(__name__)


def add_unprefixed_routes(routers: list[APIRouter]) -> None:
    """Every /v1 route also without the prefix (/chat/completions...), as llama-server
    serves them; kept out of the OpenAPI schema, which documents each route once. Call it
    before the routers are included (it adds to them; a second call adds nothing)."""
    routes = [r for group in routers for r in group.routes if isinstance(r, APIRoute)]
    taken = {(r.path, m) for r in routes for m in r.methods}
    for group in routers:
        for route in list(group.routes):
            if not isinstance(route, APIRoute) or not route.path.startswith("/v1/"):
                continue
            path = route.path.removeprefix("/v1")
            methods = [m for m in route.methods if (path, m) not in taken]
            if methods:
                group.add_api_route(
                    path,
                    route.endpoint,
                    methods=methods,
                    response_class=route.response_class,
                    include_in_schema=False,
                )


async def _load(st: ServerState, on_error: Callable[[str], None] | None = None) -> None:
    """Load the models served from the start; if every one of them fails, log the reasons
    and call ``on_error`` with them.

    A model that fails among others that load answers its own requests with its error.
    Without ``on_error`` the app stays up: /health says "error" and requests get 503.
    ``ferrousforge serve`` passes one that stops the server, since it can never get ready.
    """
    pool = st.pool
    preload = [e.id for e in pool.entries.values() if e.spec.preload]
    try:
        errors = await pool.preload(preload)
    except Exception as e:  # never leave /health at "loading" forever
        errors = [f"model failed to load: {e}"]
    if errors and not pool.loaded:
        st.load_error = "\n".join(errors)
        log.error("%s", st.load_error)
        if on_error is not None:
            on_error(st.load_error)
        return
    st.ready = True
    on_demand = len(pool.entries) - len(pool.loaded)
    log.info(
        "ready: serving %s%s",
        ", ".join(pool.loaded) or "no model loaded yet",
        f" ({on_demand} more on demand)" if on_demand else "",
    )


def create_app(
    settings: ServerSettings,
    specs: list[ModelSpec],
    on_load_error: Callable[[str], None] | None = None,
) -> FastAPI:
    """An app that loads ``specs`` in the background (/health is 503 until they are ready).

    ``on_load_error(reason)`` is called if every model loaded at startup fails. Models
    with ``preload=False`` load on their first request.
    """
    pool = ModelPool(
        specs,
        max_loaded=settings.max_loaded_models,
        memory_budget=settings.memory_budget_bytes,
        idle_unload=settings.idle_unload,
        any_name=settings.any_model_name,  # the pool applies it to a lone model only
    )
    st = ServerState(settings, pool, int(time.time()))
    server_tools = ServerTools(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(st, on_load_error))
        reaper = asyncio.create_task(pool.run_reaper())
        server_tools.start()
        try:
            yield
        finally:
            await server_tools.close()
            for task in (loading, reaper):
                if not task.done():
                    task.cancel()
            await asyncio.gather(loading, reaper, return_exceptions=True)
            await pool.close()

    app = FastAPI(
        title="FerrousForge",
        version=__version__,
        lifespan=lifespan,
        description="OpenAI-compatible API for GGUF models on llama.cpp",
    )
    app.state.ff = st
    app.state.server_tools = server_tools
    # Called on SIGINT/SIGTERM before uvicorn waits for requests in flight (see serve.py).
    app.state.exit_hooks = [server_tools.begin_shutdown]
    routers = [
        router,
        embeddings.router,
        messages_router,
        responses_router,
        chat_router,
        native.router,
        props.router,
        input_tokens.router,
        cors_proxy.router,
        slots.router,
        server_tools_router,
    ]
    add_unprefixed_routes(routers)
    for r in routers:
        app.include_router(r)
    vertex = vertex_routes()
    if vertex is not None:
        install_vertex(app, routers, vertex)
    install_error_handlers(app)
    install_openapi(app)
    # Middleware added last runs first: CORS outermost (so errors carry its headers), then the
    # body limit, then the API key.
    if settings.api_key:
        open_paths = OPEN_PATHS | ({vertex.health} if vertex and vertex.health else set())
        app.add_middleware(APIKeyMiddleware, keys=settings.api_key, open_paths=open_paths)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        if settings.cors_origins == ["*"] and not settings.api_key:
            log.warning("security: no API key is set and CORS allows every origin")
        app.add_middleware(CORSMiddleware, **cors_options(settings))
    return app
