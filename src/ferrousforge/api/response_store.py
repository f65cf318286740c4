"""Past Responses kept for ``previous_response_id``: a bounded, in-memory LRU store.

Each entry is the whole conversation a response ended with (its input items, earlier turns
included, then its output items), so a follow-up needs only that one entry. Entries live as
long as the server, or until pushed out by newer ones.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MAX_STORED_RESPONSES = 1000

Item = dict[str, Any]


class ResponseStore:
    """``put(id, items)`` / ``get(id)``; the least recently used entry goes first when full."""

    def __init__(self, capacity: int = MAX_STORED_RESPONSES) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[Item, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, items: list[Item]) -> None:
        self._items[response_id] = tuple(items)
        self._items.move_to_end(response_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> list[Item] | None:
        """The conversation items of a stored response, or None if it is unknown."""
        items = self._items.get(response_id)
        if items is None:
            return None
        self._items.move_to_end(response_id)
        return list(items)
