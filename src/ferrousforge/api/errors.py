"""The one mapping from exception class to HTTP status and OpenAI's error body."""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ferrousforge.errors import (
    AuthenticationError,
    ChatTemplateError,
    ContextOverflowError,
    EngineOverloadedError,
    EngineStoppedError,
    GrammarError,
    ModelLoadFailedError,
    ModelNotFoundError,
    ModelNotReadyError,
    NativeCallError,
    NotSupportedError,
    RemoteWorkerError,
    RequestTooLargeError,
    ResponseNotFoundError,
    SamplingBudgetError,
    SlotBusyError,
    StoredResponseNotFoundError,
)

log = logging.getLogger(__name__)

# class -> (status, OpenAI error type, code); the first matching class wins, so subclasses
# come before their bases (ContextOverflowError is a ValueError).
ERROR_MAP: list[tuple[type[BaseException], int, str, str | None]] = [
    (AuthenticationError, 401, "authentication_error", "invalid_api_key"),  # llama-server's type
    (ModelNotFoundError, 404, "invalid_request_error", "model_not_found"),
    (StoredResponseNotFoundError, 404, "invalid_request_error", "response_not_found"),
    (ResponseNotFoundError, 404, "invalid_request_error", "previous_response_not_found"),
    (ContextOverflowError, 400, "invalid_request_error", "context_length_exceeded"),
    (RequestTooLargeError, 413, "invalid_request_error", "request_too_large"),
    (SlotBusyError, 503, "unavailable_error", "slot_busy"),
    (EngineOverloadedError, 503, "server_error", "overloaded"),
    (ModelLoadFailedError, 503, "server_error", "model_load_failed"),
    (ModelNotReadyError, 503, "server_error", "model_loading"),
    (EngineStoppedError, 503, "server_error", "engine_stopped"),
    (ChatTemplateError, 400, "invalid_request_error", "chat_template_error"),
    (GrammarError, 400, "invalid_request_error", "invalid_grammar"),
    (SamplingBudgetError, 400, "invalid_request_error", "sampling_budget_exceeded"),
    (RemoteWorkerError, 502, "server_error", "rpc_worker_failed"),
    (NativeCallError, 500, "server_error", "llama_cpp_error"),
    (NotSupportedError, 501, "not_supported_error", "not_supported"),
    (ValueError, 400, "invalid_request_error", None),
]


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _param_of(message: str) -> str | None:
    """Our ValueErrors read 'field: must be ...'; the field is the param."""
    head, sep, _ = message.partition(":")
    return head if sep and head and " " not in head else None


def error_response(exc: BaseException) -> JSONResponse:
    """The JSON response for any exception (500 for the unexpected ones)."""
    for cls, status, type_, code in ERROR_MAP:
        if isinstance(exc, cls):
            headers = {}
            if isinstance(exc, EngineOverloadedError | ModelNotReadyError):
                retry = getattr(exc, "retry_after", 1.0)
                headers["Retry-After"] = str(max(1, math.ceil(retry)))
            if isinstance(exc, AuthenticationError):
                headers["WWW-Authenticate"] = "Bearer"
            message = str(exc)
            body = error_body(message, type_, _param_of(message), code)
            if isinstance(exc, ContextOverflowError) and exc.n_ctx:
                # llama-server's type and figures, beside OpenAI's code
                body["error"].update(
                    type="exceed_context_size_error",
                    n_prompt_tokens=exc.n_prompt_tokens,
                    n_ctx=exc.n_ctx,
                )
            return JSONResponse(body, status_code=status, headers=headers)
    log.error("internal error", exc_info=exc)
    return JSONResponse(
        error_body(f"internal server error: {type(exc).__name__}", "server_error"), status_code=500
    )


# Anthropic's Messages API answers its errors in its own shape, with the error type its SDK
# reads; the status comes from ERROR_MAP, except overloaded: Anthropic's 529 (the SDK's
# OverloadedError). Other 5xx are "api_error" (503: the SDK's ServiceUnavailableError).
ANTHROPIC_PATHS = ("/v1/messages", "/messages")  # with and without the /v1 prefix
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str, code: str | None = None) -> tuple[int, dict]:
    """(status, body) of an error in Anthropic's shape ``{"type": "error", "error": ...}``."""
    if code == "overloaded":
        status = 529
    type_ = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return status, {"type": "error", "error": {"type": type_, "message": message}}


def shaped_for(path: str, response: JSONResponse) -> JSONResponse:
    """``response`` (OpenAI's shape) as the API at ``path`` shapes its errors."""
    if not any(path == p or path.startswith(p + "/") for p in ANTHROPIC_PATHS):
        return response
    err = json.loads(response.body)["error"]
    status, body = anthropic_error(response.status_code, err["message"], err.get("code"))
    headers = {
        k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _is_union_tag(part: object) -> bool:
    """pydantic names the union member an error came from ('list[int]', 'TextPart'...)."""
    return isinstance(part, str) and (
        "[" in part or "-" in part or part[:1].isupper() or part in _TYPE_TAGS
    )


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _most_telling(errors: list[dict]) -> dict:
    """Of a union's failed members, the error that says most: a broken constraint before a
    wrong type, then the deepest (``[[false]]`` is about an integer, not a string)."""
    return min(
        errors,
        key=lambda e: (str(e.get("type", "")).endswith("_type"), -len(e.get("loc", ()))),
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = list(exc.errors())
    if not errors:
        return "invalid request", None
    if errors[0].get("type") == "json_invalid":
        return f"request body is not valid JSON: {errors[0].get('ctx', {}).get('error', '')}", None
    field = errors[0].get("loc", ())[:2]  # ("body", name): stay with the first bad field
    first = _most_telling([e for e in errors if e.get("loc", ())[:2] == field])
    loc: list[str] = []
    for p in first.get("loc", ()):
        if p == "body" or _is_union_tag(p) or (loc and loc[-1] == str(p)):
            continue
        loc.append(str(p))
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if param is None:  # a check across fields: its message names the field
        return msg, _param_of(msg)
    return f"{param}: {msg}", param


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can produce leaves in OpenAI's shape (Anthropic's on its paths)."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        if "json" not in request.headers.get("content-type", ""):
            # FastAPI parses JSON only with this header (a CSRF guard); say so plainly.
            message, param = "send the body as JSON with 'Content-Type: application/json'", None
        response = JSONResponse(error_body(message, "invalid_request_error", param), 400)
        return shaped_for(request.url.path, response)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        response = JSONResponse(
            error_body(str(exc.detail), type_),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
        return shaped_for(request.url.path, response)

    async def _mapped(request: Request, exc: Exception) -> JSONResponse:
        return shaped_for(request.url.path, error_response(exc))

    # Handlers for our classes run in ExceptionMiddleware and end the request cleanly; the
    # catch-all for Exception runs in ServerErrorMiddleware, which re-raises after answering.
    for cls, *_ in ERROR_MAP:
        app.add_exception_handler(cls, _mapped)
    app.add_exception_handler(Exception, _mapped)
