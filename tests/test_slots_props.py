"""llama-server's state routes on a real server: /props, /slots, slot save/erase/restore,
/health, --alias with several names and --tags (its tools/server/README.md is the reference)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import httpx
import pytest
from live_server import live_server
from model_traits import chat_template_for_tests

from ferrousforge.inference.gguf import read_gguf
from ferrousforge.models.default_model import default_model_path

KEY = "sk-slots"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Long enough (over 32 tokens) for the slots' prefix cache to reuse it.
PROMPT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting each of "
    "the one hundred and twelve steps, and lit the lamp that guided the fishing boats home "
    "through the fog of the northern sea."
)


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slots")


@pytest.fixture(scope="module")
def server(save_dir: Path):
    args = ["--parallel", "2", "--ctx-size", "1024", "--cache-ram", "0", "--seed", "42"]
    args += ["--slot-save-path", str(save_dir), "--api-key", KEY]
    args += ["--alias", "smol-b,smol-a", "--tags", "chat,small"]
    if tmpl := chat_template_for_tests():  # a model without one gets the generic template
        args += ["--chat-template", tmpl]
    with live_server(*args) as s:
        yield s


def http(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=AUTH, timeout=120)


def complete(c: httpx.Client, max_tokens: int = 4) -> dict:
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def erase_all(c: httpx.Client) -> None:
    for i in (0, 1):
        assert c.post(f"/slots/{i}?action=erase").status_code == 200


def test_props_describe_the_server(server) -> None:
    with http(server) as c:
        props = c.get("/props").json()
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 1024 // 2
    assert props["default_generation_settings"]["params"]["seed"] == 42
    assert props["model_path"].endswith(".gguf") and props["model_alias"] == "smol-a"
    own = chat_template_for_tests() or read_gguf(default_model_path()).chat_template
    assert props["chat_template"] == own  # the one in use, as llama-server shows it
    assert props["modalities"] == {"vision": False, "video": False, "audio": False}
    assert props["build_info"] and props["is_sleeping"] is False


def test_slots_list_each_slot_and_the_request_it_ran(server) -> None:
    with http(server) as c:
        erase_all(c)
        usage = complete(c, max_tokens=3)
        slots = c.get("/slots").json()
    assert [s["id"] for s in slots] == [0, 1]
    assert all(s["n_ctx"] == 512 and s["is_processing"] is False for s in slots)
    ran = [s for s in slots if "id_task" in s]
    assert len(ran) >= 1
    last = max(ran, key=lambda s: s["id_task"])
    assert last["n_prompt_tokens"] == usage["prompt_tokens"]
    assert last["next_token"][0]["n_decoded"] == 3
    assert last["params"]["temperature"] == 0 and last["params"]["n_predict"] == 3
    assert last["prompt"] == PROMPT


def test_save_erase_restore_gives_back_the_cached_tokens(server, save_dir: Path) -> None:
    with http(server) as c:
        erase_all(c)
        usage = complete(c)
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
        saved = c.post("/slots/0?action=save", json={"filename": "lighthouse.bin"}).json()
        n = usage["prompt_tokens"] + 3  # the prompt and the tokens fed back (not the last)
        assert saved["n_saved"] == n and saved["filename"] == "lighthouse.bin"
        assert saved["n_written"] == (save_dir / "lighthouse.bin").stat().st_size
        assert c.post("/slots/0?action=erase").json() == {"id_slot": 0, "n_erased": n}
        # Erased: the same prompt is computed again from nothing.
        assert complete(c)["prompt_tokens_details"]["cached_tokens"] == 0
        erase_all(c)
        restored = c.post("/slots/1?action=restore", json={"filename": "lighthouse.bin"})
        assert restored.status_code == 200
        assert restored.json()["n_restored"] == n and restored.json()["n_read"] > 0
        again = complete(c)
    # All of the prompt but its last token (decoded for the logits) comes from the file.
    assert again["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


def test_a_plain_token_list_file_restores_too(server, save_dir: Path) -> None:
    """Files from llama-servers older than its packed token list restore as well."""
    with http(server) as c:
        erase_all(c)
        usage = complete(c)
        c.post("/slots/0?action=save", json={"filename": "packed.bin"}).raise_for_status()
        data = (save_dir / "packed.bin").read_bytes()
        # magic, version, token count; then LLAMA_TOKEN_NULL, version, n, tokens..., 0 media
        (count,) = struct.unpack_from("<I", data, 8)
        (n,) = struct.unpack_from("<I", data, 20)
        tokens = data[24 : 24 + 4 * n]
        plain = data[:8] + struct.pack("<I", n) + tokens + data[12 + 4 * count :]
        (save_dir / "plain.bin").write_bytes(plain)
        erase_all(c)
        r = c.post("/slots/0?action=restore", json={"filename": "plain.bin"})
        assert r.status_code == 200 and r.json()["n_restored"] == n
        again = complete(c)
    assert again["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


@pytest.mark.parametrize("name", ["../escape.bin", "/etc/passwd", "a/b.bin", ".hidden", ""])
def test_file_names_cannot_leave_the_save_folder(server, name: str) -> None:
    with http(server) as c:
        r = c.post("/slots/0?action=save", json={"filename": name})
    assert r.status_code == 400 and "filename" in r.json()["error"]["message"]


def test_bad_actions_slots_and_files_are_client_errors(server, save_dir: Path) -> None:
    (save_dir / "junk.bin").write_bytes(b"not a state file")
    with http(server) as c:
        assert c.post("/slots/0?action=explode").status_code == 400
        assert c.post("/slots/9?action=erase").status_code == 400
        assert c.post("/slots/x?action=erase").status_code == 400
        r = c.post("/slots/0?action=restore", json={"filename": "junk.bin"})
        assert r.status_code == 400
        r = c.post("/slots/0?action=restore", json={"filename": "missing.bin"})
        assert r.status_code == 400
        # The slot is still usable after a failed restore.
        assert complete(c, max_tokens=2)["completion_tokens"] == 2


def test_a_busy_slot_is_refused(server) -> None:
    body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with http(server) as c:
        erase_all(c)
        with c.stream("POST", "/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            while '"text":""' in (line := next(lines)) or not line:
                pass  # until a token arrives: the request is generating in a slot now
            busy = [s["id"] for s in c.get("/slots").json() if s["is_processing"]]
            assert len(busy) == 1
            r = c.post(f"/slots/{busy[0]}?action=save", json={"filename": "busy.bin"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "slot_busy"


def test_slots_need_the_api_key_and_health_does_not(server) -> None:
    assert httpx.get(server.url + "/slots").status_code == 401
    assert httpx.post(server.url + "/slots/0?action=erase").status_code == 401
    assert httpx.get(server.url + "/props").status_code == 401
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/v1/health").status_code == 200
    shown = httpx.get(server.url + "/health", headers=AUTH).json()
    assert shown["status"] == "ok" and shown["models"][0]["status"] == "loaded"


def test_every_alias_names_the_model_and_tags_are_listed(server) -> None:
    with http(server) as c:
        card = c.get("/models").json()["data"]
        assert len(card) == 1
        assert card[0]["id"] == "smol-a"  # the first name in sorted order, as llama-server
        assert card[0]["aliases"] == ["smol-a", "smol-b"]
        assert card[0]["tags"] == ["chat", "small"]
        for name in ("smol-a", "smol-b"):
            r = c.post("/v1/completions", json={"model": name, "prompt": "Hi", "max_tokens": 1})
            assert r.status_code == 200 and r.json()["model"] == "smol-a"
        assert c.post("/v1/completions", json={"model": "other", "prompt": "Hi"}).status_code == 404


def test_no_slots_turns_the_routes_off_and_no_save_path_refuses_save() -> None:
    with live_server("--parallel", "1", "--ctx-size", "256", "--no-slots") as s:
        r = httpx.get(s.url + "/slots")
        assert r.status_code == 501 and "--slots" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/props").json()["endpoint_slots"] is False
    with live_server("--parallel", "1", "--ctx-size", "256") as s:
        r = httpx.post(s.url + "/slots/0?action=save", json={"filename": "x.bin"})
        assert r.status_code == 501 and "--slot-save-path" in r.json()["error"]["message"]
        assert httpx.post(s.url + "/slots/0?action=erase").status_code == 200


def test_input_tokens_count_the_prompt_as_generation_does(server) -> None:
    messages = [{"role": "user", "content": "Name three rivers of Europe."}]
    with http(server) as c:
        counted = c.post("/chat/completions/input_tokens", json={"messages": messages})
        ran = c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
        assert counted.json()["input_tokens"] == ran.json()["usage"]["prompt_tokens"]
        body = {"input": "Name three rivers of Europe.", "instructions": "Be brief."}
        counted = c.post("/v1/responses/input_tokens", json=body)
        ran = c.post("/v1/responses", json={**body, "max_output_tokens": 16})
        assert counted.json()["input_tokens"] == ran.json()["usage"]["input_tokens"]
        # llama-server needs no model on the Messages count either
        counted = c.post("/v1/messages/count_tokens", json={"messages": messages})
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


def test_props_say_when_an_idle_model_sleeps_and_do_not_wake_it() -> None:
    with live_server("--parallel", "1", "--ctx-size", "256", "--sleep-idle-seconds", "0.2") as s:
        for _ in range(300):  # bounded: the reaper looks every 0.1 s
            if httpx.get(s.url + "/props").json()["is_sleeping"]:
                break
            time.sleep(0.05)
        props = httpx.get(s.url + "/props").json()
        assert props["is_sleeping"] is True and props["default_generation_settings"]["n_ctx"] == 256
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.get(s.url + "/v1/models").json()["data"][0]["status"] == "unloaded"
        r = httpx.post(s.url + "/tokenize", json={"content": "Hello"}, timeout=60)
        assert r.status_code == 200 and r.json()["tokens"]  # a request wakes it (loads it)
