"""The llama.cpp backend: the only package that touches the C library."""

from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend, LoadedModel

__all__ = ["LlamaCppBackend", "LoadedModel"]
