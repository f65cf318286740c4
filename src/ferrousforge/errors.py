"""Every error FerrousForge raises on purpose, in one place.

The HTTP layer maps each class to one status code (api/errors.py), so callers
never need to match on message text.
"""

from __future__ import annotations


class FerrousForgeError(Exception):
    """Base class of all FerrousForge errors."""


class LibraryNotFoundError(FerrousForgeError):
    """libllama could not be found or loaded."""


class LibraryMismatchError(LibraryNotFoundError):
    """libllama loaded but lacks a symbol or struct the bindings need."""


class ModelLoadError(FerrousForgeError):
    """A model file is missing, malformed, or llama.cpp refused it."""


class ModelNotFoundError(FerrousForgeError):
    """A request named a model that is not configured or loaded."""


class ResponseNotFoundError(FerrousForgeError):
    """A request's ``previous_response_id`` names no response this server still holds."""


class StoredResponseNotFoundError(ResponseNotFoundError):
    """``GET`` or ``DELETE /v1/responses/{id}`` names no response this server still holds."""


class ChatTemplateError(FerrousForgeError):
    """The model has no chat template (and none was given) or it failed to render."""


class ContextOverflowError(FerrousForgeError, ValueError):
    """The prompt plus max_tokens can never fit in the context."""

    def __init__(self, message: str, n_prompt_tokens: int = 0, n_ctx: int = 0) -> None:
        super().__init__(message)
        self.n_prompt_tokens = n_prompt_tokens  # llama-server reports both in its error
        self.n_ctx = n_ctx


class EngineOverloadedError(FerrousForgeError):
    """The engine's waiting queue is full; retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SlotBusyError(EngineOverloadedError):
    """A slot command (save, restore, erase) named a slot that is processing a request."""


class EngineStoppedError(FerrousForgeError):
    """The engine was shut down before (or while) serving the request."""


class AcceleratorUnavailableError(FerrousForgeError):
    """An accelerator was asked for that the loaded library was not built with."""


class DecodeError(FerrousForgeError):
    """llama_decode failed with a fatal error."""


class RemoteWorkerError(FerrousForgeError):
    """An RPC worker holding part of a model could not be reached, stopped answering, or
    went away mid-step (the process that held the model's remote devices is gone)."""


class RpcUnavailableError(FerrousForgeError):
    """--rpc or rpc-worker was used with a libllama built without GGML_RPC."""


class AuthenticationError(FerrousForgeError):
    """A request to the server carried no API key or a wrong one."""


class RequestTooLargeError(FerrousForgeError):
    """A request body is larger than the server accepts."""


class ModelNotReadyError(FerrousForgeError):
    """The server is still loading its models (or failed to)."""


class ModelLoadFailedError(ModelNotReadyError):
    """A request named a model whose last load failed; it is tried again after a while."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotSupportedError(FerrousForgeError):
    """The server was started without what a request needs (an embedding-only server asked
    to generate, a disabled route): 501, as llama-server answers."""


class NativeCallError(FerrousForgeError):
    """llama.cpp threw a C++ exception inside a guarded call (the guard caught it)."""


class GrammarError(FerrousForgeError, ValueError):
    """A grammar (GBNF, response_format or tool schema) is invalid or over a limit."""


class SamplingBudgetError(FerrousForgeError):
    """Sampling one token of a request took longer than the per-token budget."""


class ModelNotPulledError(ModelNotFoundError):
    """A Hugging Face model (REPO[:QUANT]) is not in the local cache and pulling was not allowed."""


class QuantNotFoundError(ModelNotFoundError):
    """No GGUF file of a Hugging Face repo matches the quantization (or file) asked for."""

    def __init__(self, message: str, repo_id: str, quant: str, available: list[str]) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.quant = quant
        self.available = available


class ModelDownloadError(FerrousForgeError):
    """The Hugging Face Hub could not be reached, refused access, or offline mode forbids it."""


class RayNotInstalledError(FerrousForgeError):
    """``serve --ray`` was asked for, but Ray Serve (the ``ray`` extra) is not installed."""
