"""The store behind previous_response_id: bounded, least recently used out first."""

from __future__ import annotations

from ferrousforge.api.response_store import ResponseStore


def item(text: str) -> dict:
    return {"type": "message", "role": "user", "content": text}


def test_keeps_at_most_capacity_dropping_the_least_recently_used() -> None:
    store = ResponseStore(capacity=2)
    store.put("a", [item("a")])
    store.put("b", [item("b")])
    assert store.get("a") == [item("a")]  # a is now the most recently used
    store.put("c", [item("c")])
    assert len(store) == 2
    assert store.get("b") is None
    assert store.get("a") == [item("a")] and store.get("c") == [item("c")]


def test_a_caller_changing_its_list_does_not_change_the_stored_conversation() -> None:
    store = ResponseStore()
    items = [item("a")]
    store.put("a", items)
    items.append(item("b"))
    got = store.get("a")
    assert got == [item("a")]
    got.append(item("c"))
    assert store.get("a") == [item("a")]
