"""Vocab: tokenization and token pieces for one model (a view owned by LlamaModel)."""

from __future__ import annotations

import ctypes
from types import ModuleType

from ferrousforge.inference.backends.llama_cpp.library import native_guard


class Vocab:
    """Token ids <-> bytes. Pieces are cached: the output stage asks for them per token."""

    def __init__(self, lib: ModuleType, ptr: ctypes.c_void_p) -> None:
        self._lib = lib
        self._ptr = ptr
        self._guard = native_guard()
        self.n_tokens = lib.llama_vocab_n_tokens(ptr)
        self.bos = lib.llama_vocab_bos(ptr)
        self.eos = lib.llama_vocab_eos(ptr)
        self.add_bos = bool(lib.llama_vocab_get_add_bos(ptr))
        self.sep = lib.llama_vocab_sep(ptr)
        self.add_eos = bool(lib.llama_vocab_get_add_eos(ptr))
        self.add_sep = bool(lib.llama_vocab_get_add_sep(ptr))
        # Fill-in-the-middle tokens (-1 where the model has none): prefix, suffix, middle,
        # repository and file separator, as llama.cpp reads them from the GGUF.
        self.fim_pre = lib.llama_vocab_fim_pre(ptr)
        self.fim_suf = lib.llama_vocab_fim_suf(ptr)
        self.fim_mid = lib.llama_vocab_fim_mid(ptr)
        self.fim_rep = lib.llama_vocab_fim_rep(ptr)
        self.fim_sep = lib.llama_vocab_fim_sep(ptr)
        self.eog_ids = frozenset(t for t in range(self.n_tokens) if lib.llama_vocab_is_eog(ptr, t))
        self._pieces: list[bytes | None] = [None] * self.n_tokens
        self._special_pieces: dict[int, bytes] = {}

    @property
    def ptr(self) -> ctypes.c_void_p:
        return self._ptr

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (ctypes.c_int32 * cap)()
        n = self._guard.tokenize(self._ptr, data, arr, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            arr = (ctypes.c_int32 * cap)()
            n = self._guard.tokenize(self._ptr, data, arr, cap, add_special, parse_special)
        return list(arr[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (special tokens render as empty unless ``special``)."""
        if special:
            got = self._special_pieces.get(token)
            if got is None:
                got = self._special_pieces[token] = self._render(token, True)
            return got
        cached = self._pieces[token]
        if cached is None:
            cached = self._pieces[token] = self._render(token, False)
        return cached

    def _render(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)  # per call: pieces are rendered from two threads
        n = self._lib.llama_token_to_piece(self._ptr, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._ptr, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def special_ids(self, texts: list[str]) -> frozenset[int]:
        """The ids of those ``texts`` that are one special token each (others are plain text,
        which renders anyway)."""
        ids = set()
        for text in texts:
            toks = self.tokenize(text, add_special=False, parse_special=True)
            if len(toks) == 1 and self.piece(toks[0]) != self.piece(toks[0], special=True):
                ids.add(toks[0])
        return frozenset(ids)

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def check_ids(self, tokens: list[int], name: str = "tokens") -> None:
        bad = next((t for t in tokens if not 0 <= t < self.n_tokens), None)
        if bad is not None:
            raise ValueError(
                f"{name}: token id {bad} is outside the vocabulary (0..{self.n_tokens - 1})"
            )
