"""The FastAPI application: ``create_app(settings)`` wires routes, middleware and models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ferrousforge import __version__
from ferrousforge.api.auth import APIKeyMiddleware
from ferrousforge.api.errors import install_error_handlers
from ferrousforge.api.limits import BodyLimitMiddleware
from ferrousforge.api.openapi import install_openapi
from ferrousforge.api.routes import ServerState, router
from ferrousforge.models.registry import ModelRegistry, ModelSpec
from ferrousforge.settings import ServerSettings

log = logging.getLogger(__name__)


async def _load(st: ServerState, on_error: Callable[[str], None] | None = None) -> None:
    """Load every model; on failure log the reason and call ``on_error`` with it.

    Without ``on_error`` the app stays up: /health says "error" and requests get 503.
    ``ferrousforge serve`` passes one that stops the server, since it can never get ready.
    """
    try:
        await st.registry.load_all()
        log.info("ready: serving %s", ", ".join(st.registry.loaded))
    except Exception as e:
        st.load_error = f"model failed to load: {e}"
        log.error("%s", st.load_error)
        if on_error is not None:
            on_error(st.load_error)


def create_app(
    settings: ServerSettings,
    specs: list[ModelSpec],
    on_load_error: Callable[[str], None] | None = None,
) -> FastAPI:
    """An app that loads ``specs`` in the background (/health is 503 until they are ready).

    ``on_load_error(reason)`` is called if a model fails to load.
    """
    st = ServerState(settings, ModelRegistry(specs), int(time.time()))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(st, on_load_error))
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await st.registry.close()

    app = FastAPI(
        title="FerrousForge",
        version=__version__,
        lifespan=lifespan,
        description="OpenAI-compatible API for GGUF models on llama.cpp",
    )
    app.state.ff = st
    app.include_router(router)
    install_error_handlers(app)
    install_openapi(app)
    # Middleware added last runs first: CORS outermost (so errors carry its headers), then the
    # body limit, then the API key.
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, keys=settings.api_key)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app
