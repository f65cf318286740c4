"""What the OpenAPI document says each route answers: its errors, its media types.

Every route may answer with OpenAI's error body (400, 401, 404, 413, 500, 503); validation
errors are 400, never FastAPI's 422, so that one is removed from the document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, used for every error status."""

    error: ErrorDetail


_ERRORS = {
    400: "Invalid request: malformed JSON, a field out of bounds (param names it), "
    "a prompt that cannot fit the context",
    401: "Missing or wrong API key",
    404: "Unknown model or path",
    413: "Request body larger than --max-body-bytes",
    500: "Internal error",
    503: "Overloaded, or the model is loading (Retry-After header)",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in _ERRORS.items()
}
# The same for a route whose own media type is not JSON (FastAPI would give "model" that one).
JSON_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for status, text in _ERRORS.items()
}

# Each server-sent event: `data: {json chunk}`, the last one `data: [DONE]`.
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": '{"status": "ok"}', "content": {"application/json": {"schema": _STATUS}}},
    503: {
        "description": 'Loading, or the model failed to load: {"status": "loading" | "error"}',
        "content": {"application/json": {"schema": _STATUS}},
    },
}

_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string", "description": "a JSON chunk or [DONE]"}},
        }
    }
}


def streaming(description: str) -> dict[int | str, dict[str, Any]]:
    """Responses of a route that answers JSON, or server-sent events with ``stream: true``."""
    return {
        **ERROR_RESPONSES,
        200: {
            "description": description,
            "content": {"application/json": {"schema": {"type": "object"}}, **_SSE},
        },
    }


def install_openapi(app: FastAPI) -> None:
    """Generate the document once, without FastAPI's 422 (we answer validation errors 400)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            for path in doc.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            schemas = doc.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
