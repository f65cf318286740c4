"""One owner per native handle: the base of the model, context and sampler wrappers."""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any


class NativeHandle:
    """Owns one llama.cpp pointer and frees it exactly once (``close``, or when collected).

    Subclasses set ``_ptr`` once the C object exists and implement ``_free``.
    """

    _what = "handle"  # for the error when a closed handle is used

    def __init__(self, lib: ModuleType) -> None:
        self._lib = lib
        self._ptr: Any = None
        self._lock = threading.Lock()

    @property
    def ptr(self) -> Any:
        if self._ptr is None:
            raise RuntimeError(f"{self._what} is closed")
        return self._ptr

    def _free(self, ptr: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            ptr, self._ptr = self._ptr, None
            if ptr is not None:
                self._free(ptr)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
