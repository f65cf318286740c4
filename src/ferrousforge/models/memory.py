"""Memory a model will need, estimated from its GGUF header before loading it.

The registry uses this to keep loaded models under ``--memory-budget``. The arithmetic
lives next to the backend that allocates the memory (``ferrousforge.inference.memory``),
which also sizes contexts with it.
"""

from ferrousforge.inference.memory import MemoryEstimate, estimate_memory, split_parts

__all__ = ["MemoryEstimate", "estimate_memory", "split_parts"]
