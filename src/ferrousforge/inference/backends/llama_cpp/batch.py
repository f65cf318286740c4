"""TokenBatch: a llama_batch whose arrays are numpy buffers we own.

Filling a batch token by token through ctypes costs microseconds per field;
numpy slices fill a whole prompt chunk at once. The struct only points into
these buffers, so there is nothing to free in C (no llama_batch_init/free).
"""

from __future__ import annotations

import ctypes
from types import ModuleType

import numpy as np


class TokenBatch:
    def __init__(self, lib: ModuleType, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_ids = np.zeros(capacity, dtype=np.int32)  # one sequence per token
        self.logits = np.zeros(capacity, dtype=np.int8)
        int_p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq_ids.ctypes.data
        self._seq_ptrs = (int_p * capacity)(
            *(ctypes.cast(base + 4 * i, int_p) for i in range(capacity))
        )
        self.struct = lib.llama_batch()
        self.struct.token = self.token.ctypes.data_as(int_p)
        self.struct.embd = ctypes.POINTER(ctypes.c_float)()
        self.struct.pos = self.pos.ctypes.data_as(int_p)
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(int_p)
        self.struct.seq_id = self._seq_ptrs
        self.struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: list[int], seq: int, pos0: int, logits: str) -> int:
        """Append a run of tokens of one sequence.

        ``logits``: "none", "last" or "all". Returns the row of the first token.
        """
        k = len(tokens)
        start, end = self.n, self.n + k
        if end > self.capacity:
            raise ValueError(f"batch overflow: {end} > {self.capacity}")
        self.token[start:end] = tokens
        self.pos[start:end] = np.arange(pos0, pos0 + k, dtype=np.int32)
        self.seq_ids[start:end] = seq
        if logits == "all":
            self.logits[start:end] = 1
        else:
            self.logits[start:end] = 0
            if logits == "last":
                self.logits[end - 1] = 1
        self.n = end
        return start

    def as_struct(self):
        self.struct.n_tokens = self.n
        return self.struct
