"""Which replica served which prompt prefix: an LRU map from chained block hashes to owners.

A route key is cut into blocks of ``block_chars`` characters; block i's hash covers blocks
0..i, so one lookup per block finds the longest prefix a replica has seen. Only full blocks
count: two keys that share less than one block share nothing worth routing for.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Iterable

DEFAULT_BLOCK_CHARS = 64
DEFAULT_MAX_BLOCKS = 200_000  # about 30 MB of dict entries at most


def block_hashes(key: str, block_chars: int = DEFAULT_BLOCK_CHARS) -> list[bytes]:
    """The chained hash of every full block of ``key``, first block first."""
    if block_chars < 1:
        raise ValueError("block_chars: must be >= 1")
    out: list[bytes] = []
    prev = b""
    data = key.encode("utf-8", "surrogatepass")
    step = block_chars  # counted in bytes: a stable cut that needs no decoding
    for start in range(0, len(data) - step + 1, step):
        prev = hashlib.blake2b(prev + data[start : start + step], digest_size=12).digest()
        out.append(prev)
    return out


class PrefixIndex:
    """LRU map: block hash -> the replica that last served a prompt containing that block."""

    def __init__(self, max_blocks: int = DEFAULT_MAX_BLOCKS) -> None:
        if max_blocks < 1:
            raise ValueError("max_blocks: must be >= 1")
        self.max_blocks = max_blocks
        self._owners: OrderedDict[bytes, Hashable] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def record(self, hashes: Iterable[bytes], owner: Hashable) -> None:
        """``owner`` now holds these blocks (the most recently used)."""
        for h in hashes:
            self._owners[h] = owner
            self._owners.move_to_end(h)
        while len(self._owners) > self.max_blocks:
            self._owners.popitem(last=False)

    def longest_owner(
        self, hashes: list[bytes], alive: set[Hashable] | None = None
    ) -> tuple[Hashable | None, int]:
        """The owner of the longest recorded prefix among ``alive`` owners, and its length
        in blocks; (None, 0) when no block is known."""
        for n in range(len(hashes), 0, -1):
            owner = self._owners.get(hashes[n - 1])
            if owner is not None and (alive is None or owner in alive):
                return owner, n
        return None, 0

    def forget(self, owners: Iterable[Hashable]) -> None:
        """Drop every block of these owners (replicas that died or were removed)."""
        gone = set(owners)
        if gone:
            for h in [h for h, o in self._owners.items() if o in gone]:
                del self._owners[h]
