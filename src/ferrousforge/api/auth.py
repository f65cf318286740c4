"""API-key check: plain ASGI middleware around the whole app, so no route can skip it."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from ferrousforge.api.errors import error_response, shaped_for
from ferrousforge.errors import AuthenticationError

OPEN_PATHS = frozenset({"/health", "/v1/health"})


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def presented_key(scope: Scope) -> str | None:
    """The key from 'Authorization: Bearer KEY' or 'x-api-key: KEY'."""
    auth = header(scope, b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return header(scope, b"x-api-key")


class APIKeyMiddleware:
    """Every path but /health needs one of the keys (constant-time comparison)."""

    def __init__(
        self, app: ASGIApp, keys: list[str], open_paths: frozenset[str] = OPEN_PATHS
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        if scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        key = presented_key(scope)
        exc = None
        if key is None:
            exc = AuthenticationError(
                "missing API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
            )
        elif not any(hmac.compare_digest(key.encode(), k) for k in self.keys):
            exc = AuthenticationError("invalid API key")
        if exc is not None:
            return await shaped_for(scope["path"], error_response(exc))(scope, receive, send)
        await self.app(scope, receive, send)
