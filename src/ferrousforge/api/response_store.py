"""Past Responses kept for ``previous_response_id`` and ``GET /v1/responses/{id}``: a bounded,
in-memory LRU store.

Each entry is the whole conversation a response ended with (its input items, earlier turns
included, then its output items), so a follow-up needs only that one entry, and the Response
object as it was returned. Entries live as long as the server, until deleted, or until
pushed out by newer ones.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAX_STORED_RESPONSES = 1000

Item = dict[str, Any]

# Input items a client sent without an id get one when stored, so a listing can page by id.
_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


@dataclass(frozen=True, slots=True)
class StoredResponse:
    items: tuple[Item, ...]  # the conversation: input items, then output items
    n_input: int
    response: dict[str, Any] | None


def _with_id(item: Item) -> Item:
    if "id" in item:
        return item
    return {"id": f"{_ID_PREFIX.get(item.get('type', ''), 'item')}_{uuid.uuid4().hex}", **item}


class ResponseStore:
    """``put`` / ``get``; the least recently used entry goes first when full."""

    def __init__(self, capacity: int = MAX_STORED_RESPONSES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(
        self,
        response_id: str,
        inputs: list[Item],
        output: list[Item] | None = None,
        response: dict[str, Any] | None = None,
    ) -> None:
        """Keep a response: the items it answered, what it output, and the Response object."""
        items = tuple(_with_id(i) for i in inputs) + tuple(output or ())
        self._entries[response_id] = StoredResponse(items, len(inputs), response)
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def _entry(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def get(self, response_id: str) -> list[Item] | None:
        """The conversation items of a stored response, or None if it is unknown."""
        entry = self._entry(response_id)
        return None if entry is None else list(entry.items)

    def response(self, response_id: str) -> dict[str, Any] | None:
        """The Response object as it was returned, or None if it is unknown."""
        entry = self._entry(response_id)
        return None if entry is None else entry.response

    def input_items(self, response_id: str) -> list[Item] | None:
        """The items a stored response answered (earlier turns' included), oldest first."""
        entry = self._entry(response_id)
        return None if entry is None else list(entry.items[: entry.n_input])

    def delete(self, response_id: str) -> bool:
        """Forget a response; False if it was not stored."""
        return self._entries.pop(response_id, None) is not None
