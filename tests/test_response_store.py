"""The store behind previous_response_id: bounded, least recently used out first."""

from __future__ import annotations

from ferrousforge.api.response_store import ResponseStore


def item(text: str) -> dict:
    return {"id": f"msg_{text}", "type": "message", "role": "user", "content": text}


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


def test_the_response_object_and_input_items_are_kept_until_deleted() -> None:
    store = ResponseStore()
    out = {"id": "msg_out", "type": "message", "role": "assistant", "content": []}
    store.put("r", [item("a"), item("b")], [out], {"id": "r", "object": "response"})
    assert store.response("r") == {"id": "r", "object": "response"}
    assert store.input_items("r") == [item("a"), item("b")]
    assert store.get("r") == [item("a"), item("b"), out]  # what a follow-up continues
    assert store.delete("r") is True
    assert store.response("r") is None and store.get("r") is None
    assert store.delete("r") is False


def test_input_items_without_an_id_get_one_by_type() -> None:
    store = ResponseStore()
    sent = [
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "function_call_output", "call_id": "c", "output": "1"},
    ]
    store.put("r", sent)
    got = store.input_items("r")
    assert [i["id"].split("_")[0] for i in got] == ["msg", "fco"]
    assert [{k: v for k, v in i.items() if k != "id"} for i in got] == sent
    assert store.input_items("r") == got  # the same ids each time
