"""llama-server's native POST /completion (and /infill's refusal) through a real server on the
default model, asserting the shapes and behaviour llama-server's tools/server/README.md
documents: the response fields, stop_type, timings, streaming events, prompts as token ids or
lists, n_probs, logit_bias, samplers, response_fields, and 400s naming what is not supported.
"""

from __future__ import annotations

import json

import httpx
import pytest
from live_server import live_server
from model_traits import chat_template_for_tests

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"
TIMINGS = {
    "cache_n",
    "prompt_n",
    "prompt_ms",
    "prompt_per_token_ms",
    "prompt_per_second",
    "predicted_n",
    "predicted_ms",
    "predicted_per_token_ms",
    "predicted_per_second",
}


@pytest.fixture(scope="module")
def server():
    tmpl = chat_template_for_tests()  # a model without one gets the generic template
    extra = ("--chat-template", tmpl) if tmpl else ()
    with live_server("--parallel", "2", "--seed", "42", *extra) as s:
        yield s


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def stream_events(server, path: str, body: dict) -> list[dict]:
    events = []
    with httpx.stream("POST", server.url + path, json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                assert line != "data: [DONE]"  # llama-server's native stream has no [DONE]
                events.append(json.loads(line[6:]))
    return events


def tokenize(server, text: str, add_special: bool = True) -> list[int]:
    body = {"content": text, "add_special": add_special}
    return post(server, "/tokenize", body).json()["tokens"]


def test_completion_response_shape(server):
    r = post(server, "/completion", {"prompt": PROMPT, "n_predict": 6, "temperature": 0.0})
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["content"], str) and body["content"]
    assert body["stop"] is True
    assert body["stop_type"] == "limit" and body["stopping_word"] == ""
    assert body["tokens_predicted"] == 6
    assert body["tokens_evaluated"] == len(tokenize(server, PROMPT))
    assert body["tokens"] == []  # return_tokens is off
    assert body["truncated"] is False
    assert isinstance(body["has_new_line"], bool)
    assert body["prompt"].endswith(PROMPT)  # after the BOS text, for models that add one
    assert set(body["timings"]) == TIMINGS
    t = body["timings"]
    assert t["predicted_n"] == 6 and t["prompt_n"] + t["cache_n"] == body["tokens_evaluated"]
    gs = body["generation_settings"]
    assert gs["n_predict"] == 6 and gs["temperature"] == 0.0 and gs["seed"] == 42
    assert gs["logit_bias"] == [] and gs["samplers"][-1] == "temperature"


def test_return_tokens_match_content(server):
    body = post(
        server,
        "/completion",
        {"prompt": PROMPT, "n_predict": 5, "temperature": 0.0, "return_tokens": True},
    ).json()
    assert len(body["tokens"]) == 5
    detok = post(server, "/detokenize", {"tokens": body["tokens"]}).json()["content"]
    assert detok == body["content"]


def test_stop_word_and_eos(server):
    first = post(server, "/completion", {"prompt": PROMPT, "n_predict": 8, "temperature": 0.0})
    text = first.json()["content"]
    word = text.strip().split()[0]
    body = post(
        server,
        "/completion",
        {"prompt": PROMPT, "n_predict": 8, "temperature": 0.0, "stop": [word]},
    ).json()
    assert body["stop_type"] == "word" and body["stopping_word"] == word
    assert word not in body["content"]
    # the model's own end of generation: eos (made certain with a bias towards its EOS token)
    eos = httpx.get(server.url + "/tokenizer_info").json()["eos_token_id"]
    body = {"prompt": PROMPT, "n_predict": 8, "temperature": 0.0, "logit_bias": [[eos, 100]]}
    assert post(server, "/completion", body).json()["stop_type"] == "eos"


def test_token_ids_mixed_and_several_prompts(server):
    ids = tokenize(server, PROMPT)
    one = post(server, "/completion", {"prompt": ids, "n_predict": 4, "temperature": 0.0})
    assert one.status_code == 200 and isinstance(one.json(), dict)
    # a list of prompts answers a list, in order; token ids, text and mixed lists agree
    split = len(ids) // 2
    mixed = [*ids[:split], post(server, "/detokenize", {"tokens": ids[split:]}).json()["content"]]
    many = post(
        server,
        "/completion",
        {"prompt": [ids, PROMPT, {"prompt_string": PROMPT}], "n_predict": 4, "temperature": 0.0},
    ).json()
    assert isinstance(many, list) and [b["index"] for b in many] == [0, 1, 2]
    assert len({b["content"] for b in many} | {one.json()["content"]}) == 1
    r = post(server, "/completion", {"prompt": mixed, "n_predict": 4, "temperature": 0.0})
    assert r.status_code == 200 and isinstance(r.json()["content"], str)


def test_stream_events(server):
    events = stream_events(
        server, "/completion", {"prompt": PROMPT, "n_predict": 6, "stream": True, "n_probs": 2}
    )
    parts, final = events[:-1], events[-1]
    assert all(e["stop"] is False and len(e["tokens"]) == 1 for e in parts)
    assert all(len(e["completion_probabilities"]) == 1 for e in parts)
    assert final["stop"] is True and final["content"] == "" and final["stop_type"] == "limit"
    assert final["timings"]["predicted_n"] == 6 == len(parts)
    whole = post(server, "/completion", {"prompt": PROMPT, "n_predict": 6, "seed": 7}).json()
    streamed = stream_events(
        server, "/completion", {"prompt": PROMPT, "n_predict": 6, "seed": 7, "stream": True}
    )
    assert "".join(e["content"] for e in streamed) == whole["content"]


def test_n_probs(server):
    body = post(
        server, "/completion", {"prompt": PROMPT, "n_predict": 3, "n_probs": 4, "temperature": 0}
    ).json()
    probs = body["completion_probabilities"]
    assert len(probs) == 3
    for p in probs:
        assert p["logprob"] <= 0 and isinstance(p["bytes"], list)
        assert len(p["top_logprobs"]) == 4
        # greedy: the token taken is the most likely one
        assert p["id"] == p["top_logprobs"][0]["id"]
    assert "".join(p["token"] for p in probs) == body["content"]


def test_logit_bias_bans_text_and_ids(server):
    base = post(server, "/completion", {"prompt": PROMPT, "n_predict": 4, "temperature": 0.0})
    first = base.json()["content"].split()[0]
    ids = tokenize(server, " " + first, add_special=False)  # no BOS: the word's own tokens
    for bias, shown in (
        ([[" " + first, False]], None),
        ([[ids[0], -100]], -100),
        ({str(ids[0]): -100}, -100),
    ):
        body = post(
            server,
            "/completion",
            {"prompt": PROMPT, "n_predict": 4, "temperature": 0.0, "logit_bias": bias},
        ).json()
        assert not body["content"].startswith(" " + first)
        assert {"bias": shown, "token": ids[0]} in body["generation_settings"]["logit_bias"]


def test_ignore_eos_shows_eog_bans(server):
    body = post(
        server,
        "/completion",
        {"prompt": PROMPT, "n_predict": 2, "ignore_eos": True, "temperature": 0.0},
    ).json()
    bans = body["generation_settings"]["logit_bias"]
    assert bans and all(b["bias"] is None for b in bans)


def test_response_fields(server):
    body = post(
        server,
        "/completion",
        {
            "prompt": PROMPT,
            "n_predict": 3,
            "response_fields": ["content", "generation_settings/n_predict", "timings/predicted_n"],
        },
    ).json()
    assert set(body) == {"content", "generation_settings/n_predict", "timings/predicted_n"}
    assert body["generation_settings/n_predict"] == 3 and body["timings/predicted_n"] == 3


def test_samplers_order(server):
    ok = post(
        server,
        "/completion",
        {"prompt": PROMPT, "n_predict": 2, "samplers": ["top_k", "temperature"], "top_k": 1},
    )
    assert ok.status_code == 200
    assert ok.json()["generation_settings"]["samplers"] == ["top_k", "temperature"]
    assert ok.json()["generation_settings"]["top_p"] == 1.0  # top_p is out of the chain
    bad = post(server, "/completion", {"prompt": PROMPT, "samplers": ["temperature", "top_k"]})
    assert bad.status_code == 400 and "samplers" in bad.json()["error"]["message"]


def test_id_slot_runs_in_that_slot(server):
    for slot in (1, 0, 1):
        body = post(server, "/completion", {"prompt": PROMPT, "n_predict": 2, "id_slot": slot})
        assert body.json()["id_slot"] == slot


def test_cache_prompt(server):
    long = PROMPT + " a city" * 40
    post(server, "/completion", {"prompt": long, "n_predict": 1})
    cached = post(server, "/completion", {"prompt": long, "n_predict": 1}).json()
    assert cached["timings"]["cache_n"] > 0
    fresh = post(server, "/completion", {"prompt": long, "n_predict": 1, "cache_prompt": False})
    t = fresh.json()["timings"]
    assert t["cache_n"] == 0 and t["prompt_n"] == fresh.json()["tokens_evaluated"]


@pytest.mark.parametrize(
    "field",
    [
        {"n_keep": 10},
        {"post_sampling_probs": True},
        {"id_slot": 2},  # the server has slots 0 and 1
        {"t_max_predict_ms": 100},
        {"prompt": {"prompt_string": PROMPT, "multimodal_data": ["aGk="]}},
    ],
)
def test_unsupported_fields_are_400(server, field):
    r = post(server, "/completion", {"prompt": PROMPT, "n_predict": 2, **field})
    assert r.status_code == 400
    assert next(iter(field)) in r.json()["error"]["message"]


def test_infill_without_fim_tokens_is_400(server):
    r = post(server, "/infill", {"input_prefix": "def f(", "input_suffix": "):\n"})
    assert r.status_code == 400
    assert "fill-in-the-middle" in r.json()["error"]["message"]
    bad = post(server, "/infill", {"input_prefix": "a", "input_suffix": "b", "input_extra": [{}]})
    assert bad.status_code == 400


def test_openai_routes_carry_timings(server):
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3}).json()
    assert set(r["timings"]) == TIMINGS and r["timings"]["predicted_n"] == 3
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    r = post(server, "/v1/chat/completions", chat).json()
    assert r["timings"]["predicted_n"] == r["usage"]["completion_tokens"]
    events = stream_events_openai(server, "/v1/chat/completions", {**chat, "stream": True})
    assert events[-1]["timings"]["predicted_n"] == 3


def stream_events_openai(server, path: str, body: dict) -> list[dict]:
    events = []
    with httpx.stream("POST", server.url + path, json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def test_completions_without_prefix_is_native(server):
    # llama-server: /completions is its native route; the OpenAI one is /v1/completions
    r = post(server, "/completions", {"prompt": PROMPT, "n_predict": 2})
    assert r.status_code == 200
    assert "content" in r.json() and "choices" not in r.json()


def test_n_predict_overrides_the_server_default():
    # llama-server's --n-predict is the default of requests that set none, not a ceiling
    with live_server("--n-predict", "3") as s:
        short = post(s, "/completion", {"prompt": PROMPT, "ignore_eos": True}).json()
        assert short["tokens_predicted"] == 3
        longer = post(s, "/completion", {"prompt": PROMPT, "n_predict": 6, "ignore_eos": True})
        assert longer.json()["tokens_predicted"] == 6
        assert longer.json()["generation_settings"]["n_predict"] == 6
