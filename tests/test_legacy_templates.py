"""--no-jinja: chat rendered by llama.cpp's built-in templates, as llama-server renders it.

llama-server without --jinja formats chat with llama_chat_apply_template (the format named by
--chat-template, or the one the model's template resembles) and refuses what needs Jinja:
tools ("tools param requires --jinja flag"), a forced tool choice. An unknown --chat-template
stops it at startup.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.live_server import live_server

TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
CHAT = [
    {"role": "system", "content": "Book"},
    {"role": "user", "content": "What is the best book"},
]
# llama.cpp's built-in formats (src/llama-chat.cpp), written out.
CHATML = (
    "<|im_start|>system\nBook<|im_end|>\n<|im_start|>user\nWhat is the best book<|im_end|>\n"
    "<|im_start|>assistant\n"
)
LLAMA3 = (
    "<|start_header_id|>system<|end_header_id|>\n\nBook<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is the best book<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


@pytest.fixture(scope="module")
def llama3():
    with live_server("--no-jinja", "--chat-template", "llama3", "-np", "1", "-c", "1024") as s:
        yield s


@pytest.fixture(scope="module")
def plain():
    """--no-jinja --chat-template chatml: the built-in ChatML, whatever the model's own."""
    with live_server("--no-jinja", "--chat-template", "chatml", "-np", "1", "-c", "1024") as s:
        yield s


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def test_named_builtin_template_renders_the_prompt(llama3):
    r = post(llama3, "/apply-template", {"messages": CHAT})
    assert r.status_code == 200, r.text
    assert r.json() == {"prompt": LLAMA3}


def test_generation_reads_the_builtin_prompt(llama3):
    r = post(llama3, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 2, "verbose": True})
    assert r.status_code == 200, r.text
    assert r.json()["__verbose"]["prompt"].endswith(LLAMA3)
    counted = post(llama3, "/tokenize", {"content": LLAMA3}).json()["count"]
    assert r.json()["usage"]["prompt_tokens"] == counted


def test_add_generation_prompt_false(llama3):
    r = post(llama3, "/apply-template", {"messages": CHAT, "add_generation_prompt": False})
    assert r.json()["prompt"] == LLAMA3.removesuffix(
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_chatml_and_text_parts_joined_by_newlines(plain):
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "the best book"}]
    r = post(plain, "/apply-template", {"messages": [CHAT[0], {"role": "user", "content": parts}]})
    assert r.json()["prompt"] == CHATML.replace("What is the best book", "What is\nthe best book")


def test_tools_need_jinja(plain):
    body = {"messages": CHAT, "tools": [TOOL], "max_tokens": 2}
    for path in ("/v1/chat/completions", "/apply-template"):
        r = post(plain, path, body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "tools" and "--jinja" in err["message"]


def test_template_variables_need_jinja(plain):
    body = {"messages": CHAT, "chat_template_kwargs": {"enable_thinking": False}}
    r = post(plain, "/v1/chat/completions", body)
    assert r.status_code == 400
    assert "chat_template_kwargs" in r.json()["error"]["message"]


def test_assistant_prefill_is_continued(plain):
    msgs = [*CHAT, {"role": "assistant", "content": "It is"}]
    r = post(plain, "/apply-template", {"messages": msgs})
    assert r.json()["prompt"] == CHATML + "It is"


def test_unknown_template_name_stops_the_server():
    cmd = [sys.executable, "-m", "ferrousforge.cli.main", "serve", "--no-jinja"]
    cmd += ["--chat-template", "no-such-template", "--port", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "chat_template" in done.stderr and "built-in" in done.stderr
