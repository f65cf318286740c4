"""CORS as llama-server does it: plain ASGI middleware around the whole app.

``origins`` is a list of allowed origins, or ``["*"]`` (any: with credentials allowed the
request's Origin is echoed back, as browsers require), or ``["localhost"]`` (echoed only for
an origin on localhost, 127.0.0.1 or ::1, any port). Every OPTIONS request is a preflight:
answered 200 at once with the allowed methods and headers, before the API key is checked
(browsers send no credentials on a preflight). Header names keep llama-server's casing:
some clients look them up case-sensitively.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferrousforge.api.auth import header

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def is_localhost(origin: str) -> bool:
    try:
        return urlsplit(origin).hostname in LOCAL_HOSTS
    except ValueError:
        return False


def cors_options(settings) -> dict:
    """CORSMiddleware's keyword arguments from the server settings (``cors_*``)."""
    return {
        "origins": settings.cors_origins,
        "methods": settings.cors_methods,
        "headers": settings.cors_headers,
        "credentials": settings.cors_credentials,
    }


class CORSMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        origins: list[str],
        methods: str = "GET, POST, DELETE, OPTIONS",
        headers: str = "*",
        credentials: bool = True,
    ) -> None:
        self.app = app
        self.origins = origins
        self.methods = methods
        self.headers = headers
        self.credentials = credentials

    def allowed_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from ``origin`` (None: none)."""
        if self.origins == ["*"]:
            return origin if self.credentials and origin else "*"
        if self.origins == ["localhost"]:
            return origin if origin and is_localhost(origin) else None
        if origin and origin in self.origins:
            return origin
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        allow = self.allowed_origin(header(scope, b"origin"))
        extra: list[tuple[bytes, bytes]] = []
        if allow is not None:
            extra.append((b"Access-Control-Allow-Origin", allow.encode("latin-1")))
            if allow != "*":
                extra.append((b"Vary", b"Origin"))
        if scope["method"] == "OPTIONS":
            extra += [
                (b"Access-Control-Allow-Credentials", b"true" if self.credentials else b"false"),
                (b"Access-Control-Allow-Methods", self.methods.encode("latin-1")),
                (b"Access-Control-Allow-Headers", self.headers.encode("latin-1")),
                (b"Content-Length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                headers = message.get("headers", [])
                # A response forwarded from an app with this middleware of its own (serve
                # --ray's replicas) already has them.
                if not any(k.lower() == b"access-control-allow-origin" for k, _ in headers):
                    message = {**message, "headers": [*headers, *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)
