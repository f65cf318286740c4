"""llama-server's chat extras through the real server: POST /apply-template, the prompt
controls (add_generation_prompt, continue_final_message, an assistant prefill), the top-level
json_schema, /v1/chat/completions/input_tokens, __verbose, system_fingerprint and
--chat-template chatml with Jinja (llama-server's own ChatML source)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.live_server import live_server
from tests.model_traits import chat_template_for_tests

CHAT = [
    {"role": "system", "content": "Book"},
    {"role": "user", "content": "What is the best book"},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["-np", "2", "-c", "2048"]
    template = chat_template_for_tests()
    if template:
        path = tmp_path_factory.mktemp("tmpl") / "chat.jinja"
        path.write_text(template)
        args += ["--chat-template-file", str(path)]
    with live_server(*args) as s:
        yield s


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def prompt_of(server, body: dict) -> str:
    r = post(server, "/apply-template", body)
    assert r.status_code == 200, r.text
    return r.json()["prompt"]


def test_apply_template_is_the_prompt_generation_reads(server):
    prompt = prompt_of(server, {"messages": CHAT})
    assert "What is the best book" in prompt
    r = post(server, "/chat/completions", {"messages": CHAT, "max_tokens": 2, "verbose": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["__verbose"]["prompt"].endswith(prompt)
    assert body["__verbose"]["tokens_evaluated"] == body["usage"]["prompt_tokens"]
    assert body["system_fingerprint"].startswith("b")
    counted = post(server, "/chat/completions/input_tokens", {"messages": CHAT}).json()
    assert counted == {"input_tokens": body["usage"]["prompt_tokens"]}
    quiet = post(server, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 1})
    assert "__verbose" not in quiet.json()  # only when asked (or with --verbose)


def test_add_generation_prompt(server):
    with_header = prompt_of(server, {"messages": CHAT})
    without = prompt_of(server, {"messages": CHAT, "add_generation_prompt": False})
    assert with_header.startswith(without) and len(with_header) > len(without)


def test_assistant_prefill_is_continued(server):
    msgs = [*CHAT, {"role": "assistant", "content": "The best book is"}]
    prompt = prompt_of(server, {"messages": msgs})
    assert prompt.endswith("The best book is")
    assert prompt.startswith(prompt_of(server, {"messages": CHAT}))
    explicit = {"messages": msgs, "continue_final_message": True, "add_generation_prompt": False}
    assert prompt_of(server, explicit) == prompt
    # Not continued when the request says so: the assistant turn is closed.
    closed = prompt_of(server, {"messages": msgs, "continue_final_message": False})
    assert not closed.endswith("The best book is")


@pytest.mark.parametrize(
    "body",
    [
        {"continue_final_message": True, "add_generation_prompt": True},
        {"messages_tail": [{"role": "assistant", "content": "a"}] * 2},
    ],
    ids=["both-true", "two-assistant-turns"],
)
def test_contradictory_prompt_controls_are_400(server, body):
    tail = body.pop("messages_tail", [{"role": "assistant", "content": "a"}])
    r = post(server, "/chat/completions", {"messages": [*CHAT, *tail], **body})
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_top_level_json_schema_constrains_the_answer(server):
    body = {"messages": CHAT, "max_tokens": 8, "json_schema": {"const": "42"}}
    r = post(server, "/chat/completions", body)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == "42"
    both = post(server, "/chat/completions", {**body, "grammar": 'root ::= "a"'})
    assert both.status_code == 400


def test_stream_opens_with_the_role_and_null_content(server):
    body = {"messages": CHAT, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=120) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    chunk = json.loads(first.removeprefix("data: "))
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert chunk["system_fingerprint"].startswith("b")


def test_chatml_by_name_with_jinja():
    with live_server("--chat-template", "chatml", "-np", "1", "-c", "1024") as s:
        prompt = prompt_of(s, {"messages": CHAT})
    assert prompt == (
        "<|im_start|>system\nBook<|im_end|>\n<|im_start|>user\nWhat is the best book<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_one_model_answers_to_any_name_as_llama_server():
    tmpl = chat_template_for_tests()  # a model without one gets the generic template
    extra = ("--chat-template", tmpl) if tmpl else ()
    with live_server("--any-model-name", "-np", "1", "-c", "1024", *extra) as s:
        body = {"model": "gpt-4o", "messages": CHAT, "max_tokens": 1}
        assert post(s, "/v1/chat/completions", body).status_code == 200
        count = {"model": "test", "max_tokens": 1, "messages": CHAT[1:]}
        assert post(s, "/v1/messages/count_tokens", count).status_code == 200


def test_ferrousforge_server_serves_one_model_under_any_name(monkeypatch):
    import ferrousforge.cli.main
    from ferrousforge.cli.llama_server import main

    seen = []
    monkeypatch.setattr(ferrousforge.cli.main, "main", lambda argv: seen.append(argv) or 0)
    assert main(["-m", "x.gguf"]) == 0
    assert seen[0][0] == "serve" and seen[0][-2:] == ["-m", "x.gguf"]
    assert "--any-model-name" in seen[0]
