"""Issue 8's hostile requests, replayed against a real server: the process stays up, each
offending request gets a 4xx in OpenAI's error shape (or a clean finish), requests sent at
the same time complete, and memory returns to where it was."""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import httpx
import pytest
from live_server import live_server
from model_traits import GENERIC_CHAT_TEMPLATE, has_chat_template

from ferrousforge.models.default_model import default_model_path

pytestmark = pytest.mark.server

OK_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def deep_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def chat(**extra) -> tuple[str, dict]:
    body = {"messages": [{"role": "user", "content": "Is the sky blue?"}], "max_tokens": 64}
    return "/v1/chat/completions", {**body, **extra}


def completion(**extra) -> tuple[str, dict]:
    return "/v1/completions", {"prompt": "Answer:", "max_tokens": 16, **extra}


def tool(parameters) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": parameters}}


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def json_format(schema) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}


# (name, request, what the answer must be: "stop" = 200 ending with finish_reason stop)
CASES = [
    ("schema+ignore_eos", chat(**json_format(OK_SCHEMA), ignore_eos=True), "stop"),
    ("boolean+min_tokens", chat(**json_format({"type": "boolean"}), min_tokens=5), "stop"),
    ("grammar+ignore_eos", completion(grammar='root ::= "a"', ignore_eos=True), "stop"),
    ("grammar+min_tokens", completion(grammar='root ::= "a"', min_tokens=3), "stop"),
    ("reversed range", completion(grammar="root ::= [z-a]"), 400),
    # 400, or (a vocabulary with partial-UTF-8 byte tokens lets bytes through) a clean 200
    ("nothing allowed", completion(grammar="root ::= [^\\x00-\\U0010FFFF]"), (400, 200)),
    ("code point", completion(grammar='root ::= "\\UFFFFFFFF"'), (400, 200)),
    ("deep parens", completion(grammar="root ::= " + "(" * 20000 + '"a"' + ")" * 20000), 400),
    ("repeat window", completion(repeat_last_n=2**30, repeat_penalty=1.1), 400),
    ("dry window", completion(dry_penalty_last_n=2**28, dry_multiplier=0.8), 400),
    ("dry breakers", completion(dry_multiplier=0.8, dry_sequence_breakers=["x"] * 10_000), 400),
    ("deep schema", chat(**json_format(deep_schema(330))), 400),
    ("empty anyOf", chat(**json_format({"anyOf": []})), 400),
    ("empty type", chat(**json_format({"type": []})), 400),
    ("top-level enum", chat(**json_format({"enum": ["yes", "no"]})), "stop"),
    ("wizard", chat(messages=[{"role": "wizard", "content": "hi"}]), 400),
    ("bad tool name", chat(functions=[{"name": "no spaces allowed", "parameters": {}}]), 400),
    ("bad tool schema", chat(tools=[tool({"type": "object", "properties": {"a": 5}})]), 400),
    ("unknown tool", chat(tools=[tool({})], tool_choice=named("other")), 400),
    ("bool max_tokens", completion(max_tokens=True), 400),
    ("bool tokens", ("/detokenize", {"tokens": [False]}), 400),
    ("huge n", completion(n=10_000), 400),
]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    extra: list[str] = []
    if not has_chat_template():  # these tests are about the API: give such a model a template
        (folder / "models.toml").write_text(
            f"[[models]]\npath = {json.dumps(str(default_model_path()))}\n"
            f"chat_template = {json.dumps(GENERIC_CHAT_TEMPLATE)}\n"
        )
        extra = ["--config", str(folder / "models.toml")]
    args = ["--parallel", "4", "--ctx-size", "4096", *extra]
    with live_server(*args, log_dir=folder) as live:
        yield live.url, live.proc, live.log


def _post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120)


def _check(name: str, r: httpx.Response, expect) -> None:
    if isinstance(expect, tuple):
        assert r.status_code in expect, (name, r.status_code, r.text[:500])
        expect = r.status_code
    if expect == "stop":
        assert r.status_code == 200, (name, r.text[:500])
        choice = r.json()["choices"][0]
        # Sampled at the default temperature, a model may spend max_tokens on the grammar's
        # optional whitespace ("length"); the exact stop semantics are tested greedily in
        # test_guard.py. Here: a clean answer, and a "stop" always parses.
        assert choice["finish_reason"] in ("stop", "length"), (name, choice)
        if choice["finish_reason"] == "length":
            return
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        if "response_format" in r.request.content.decode():
            json.loads(text)  # constrained output always parses
    elif expect == 200:
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length"), (name, r.text)
    else:
        assert r.status_code == expect, (name, r.status_code, r.text[:500])
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error", (name, err)


def _round(pool: cf.ThreadPoolExecutor, url: str) -> None:
    normal = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    hostile = {pool.submit(_post, url, path, body): (name, expect)
               for name, (path, body), expect in CASES}  # fmt: skip
    side = [pool.submit(_post, url, "/v1/completions", normal) for _ in range(4)]
    for fut, (name, expect) in hostile.items():
        _check(name, fut.result(), expect)
    for fut in side:
        r = fut.result()
        assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text


def test_hostile_requests_get_clean_answers_while_others_are_served(server):
    url, proc, log = server
    with cf.ThreadPoolExecutor(8) as pool:
        _round(pool, url)  # the first round also warms caches (mapped weights, token pieces)
        assert proc.poll() is None, log.read_text()[-3000:]
        rss_warm = _rss_mb(proc.pid)
        for _ in range(2):  # the same again: nothing was left broken, and nothing grows
            _round(pool, url)
            assert proc.poll() is None, log.read_text()[-3000:]
    assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"
    assert _rss_mb(proc.pid) < rss_warm + 64, "memory grows with each round of bad requests"
    assert "Traceback" not in log.read_text()


def test_streamed_grammar_with_ignore_eos_ends_cleanly(server):
    url, proc, _ = server
    body = {"prompt": "Answer:", "grammar": 'root ::= "yes" | "no"', "ignore_eos": True,
            "stream": True, "max_tokens": 32}  # fmt: skip
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) in ("yes", "no")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert proc.poll() is None
