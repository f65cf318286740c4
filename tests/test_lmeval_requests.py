"""The requests of the documented lm-eval command (`local-completions`, remote tokenizer).

lm-eval is not installed: these tests send what its code sends and read the response the
way its code reads it (lm_eval/models/openai_completions.py, api_models.py and the
RemoteTokenizer in lm_eval/utils.py):

- tokenizer detection: GET /tokenizer_info must have "eos_token"; POST /tokenize
  {"prompt", "add_special_tokens": false} must answer {"tokens": [ids]};
- RemoteTokenizer: encode = that /tokenize; decode = POST /detokenize {"tokens"} -> "prompt";
  eos/bos ids = encode(eos_token/bos_token)[0];
- loglikelihood: POST /v1/completions {"model", "prompt": [[context + continuation ids]],
  "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": true}; the score
  is sum(token_logprobs[ctxlen:-1]) and greedy means each of those equals max(top_logprobs
  entry's values); up to max_length - 1 prompt tokens are sent;
- generate_until: {"prompt", "model", "max_tokens", "temperature": 0, "stop", "seed"} ->
  choices[i]["text"] by choices[i]["index"].
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import itemgetter

import httpx
import pytest
from live_server import live_server
from model_traits import NEAR_TIE, batch_invariant

pytestmark = pytest.mark.server

KEY = "sk-lmeval"
N_CTX = 256  # per request: --ctx-size 512 split over --parallel 2


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """A real server with an API key; yields its URL."""
    args = ["--parallel", "2", "--ctx-size", str(2 * N_CTX), "--api-key", KEY]
    with live_server(*args) as server:
        yield server.url


@pytest.fixture(scope="module")
def http(base: str) -> Iterator[httpx.Client]:
    # lm-eval sends "Authorization: Bearer $OPENAI_API_KEY" and, for the tokenizer, auth_token.
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


class RemoteTokenizer:
    """What lm-eval's RemoteTokenizer calls, and how it reads the answers."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        info = http.get("/tokenizer_info")
        info.raise_for_status()
        self.info = info.json()

    def encode(self, text: str) -> list[int]:
        r = self.http.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
        r.raise_for_status()
        tokens = r.json().get("tokens")
        assert isinstance(tokens, list) and all(isinstance(t, int) for t in tokens)
        return tokens

    def decode(self, tokens: list[int]) -> str:
        r = self.http.post("/detokenize", json={"tokens": tokens})
        r.raise_for_status()
        prompt = r.json().get("prompt")
        assert isinstance(prompt, str)
        return prompt

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """TemplateLM._encode_pair: trailing spaces move to the continuation."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx) :]


def _loglikelihood_payload(model: str, prompt) -> dict:
    return {
        "model": model,
        "prompt": prompt,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }


def _parse_logprobs(out: dict, ctxlens: list[int]) -> list[tuple[float, bool]]:
    """LocalCompletionsAPI.parse_logprobs, as lm-eval reads the response."""
    res = []
    choices = sorted(out["choices"], key=itemgetter("index"))
    for choice, ctxlen in zip(choices, ctxlens, strict=True):
        token_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        pairs = zip(token_logprobs, top_logprobs, strict=True)
        greedy = all(t == max(top.values()) for t, top in pairs)
        res.append((sum(token_logprobs), greedy))
    return res


def test_the_remote_tokenizer_is_detected(http: httpx.Client) -> None:
    """check_remote_tokenizer_support: without it lm-eval falls back to a HF tokenizer."""
    info = http.get("/tokenizer_info").json()
    assert isinstance(info, dict) and isinstance(info["eos_token"], str)
    r = http.post("/tokenize", json={"prompt": "test", "add_special_tokens": False})
    assert r.status_code == 200 and isinstance(r.json()["tokens"], list)


def test_remote_tokenizer_round_trip_and_special_ids(http: httpx.Client) -> None:
    tok = RemoteTokenizer(http)
    text = "The quick brown fox jumps over the lazy dog."
    assert tok.decode(tok.encode(text)) == text
    # add_special_tokens=false (vLLM's name, which lm-eval sends) adds no BOS; the default does
    bos = [tok.info["bos_token_id"]] if tok.info["add_bos_token"] else []
    assert http.post("/tokenize", json={"prompt": text}).json()["tokens"] == bos + tok.encode(text)
    # eos_token_id / bos_token_id are encode(token text)[0]: the special text must parse
    assert tok.encode(tok.info["eos_token"])[0] == tok.info["eos_token_id"]
    if tok.info.get("bos_token") is not None:
        assert tok.encode(tok.info["bos_token"])[0] == tok.info["bos_token_id"]


def test_loglikelihood_requests_as_lm_eval_sends_them(http: httpx.Client) -> None:
    tok = RemoteTokenizer(http)
    model = http.get("/v1/models").json()["data"][0]["id"]
    context = "The capital of France is"
    # the greedy continuation of the context as lm-eval tokenizes it (no BOS added)
    greedy = http.post(
        "/v1/completions",
        json={"model": model, "prompt": tok.encode(context), "max_tokens": 2, "temperature": 0},
    ).json()["choices"][0]["text"]
    pairs = [(context, greedy), (context, " zebra crossing")]
    encoded = [tok.encode_pair(c, x) for c, x in pairs]
    assert all(cont for _, cont in encoded)

    # batch_size=1 (the default): one token-id prompt per request, as [[ids]]
    single = []
    for ctx, cont in encoded:
        r = http.post("/v1/completions", json=_loglikelihood_payload(model, [ctx + cont]))
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert len(choice["logprobs"]["token_logprobs"]) == len(ctx) + len(cont) + 1
        assert all(isinstance(t, dict) and t for t in choice["logprobs"]["top_logprobs"][1:])
        single += _parse_logprobs(r.json(), [len(ctx)])
    (lp_greedy, is_greedy), (lp_other, other_greedy) = single
    assert is_greedy and not other_greedy and lp_other < lp_greedy < 0

    # batch_size=2: several prompts in one request, matched back by choice index
    r = http.post(
        "/v1/completions",
        json=_loglikelihood_payload(model, [ctx + cont for ctx, cont in encoded]),
    )
    assert r.status_code == 200, r.text
    batched = _parse_logprobs(r.json(), [len(ctx) for ctx, _ in encoded])
    assert [g for _, g in batched] == [True, False]
    # a model whose kernels round by batch shape moves logprobs a little (model_traits)
    assert batched[0][0] == pytest.approx(lp_greedy, abs=1e-3 if batch_invariant() else NEAR_TIE)

    # tokenized_requests=False: lm-eval decodes the ids and sends the text, which the server
    # tokenizes as any text prompt: with the model's BOS, if it adds one
    ctx, cont = encoded[0]
    bos = [tok.info["bos_token_id"]] if tok.info["add_bos_token"] else []
    r = http.post("/v1/completions", json=_loglikelihood_payload(model, [bos + ctx + cont]))
    assert r.status_code == 200, r.text
    as_ids = _parse_logprobs(r.json(), [len(bos) + len(ctx)])[0][0]
    r = http.post("/v1/completions", json=_loglikelihood_payload(model, tok.decode(ctx + cont)))
    assert r.status_code == 200, r.text
    assert _parse_logprobs(r.json(), [len(bos) + len(ctx)])[0][0] == pytest.approx(as_ids, abs=1e-3)


def test_a_window_of_max_length_tokens_is_scored(http: httpx.Client) -> None:
    """lm-eval sends up to max_length - 1 tokens plus max_tokens 1: exactly the context."""
    model = http.get("/v1/models").json()["data"][0]["id"]
    ids = RemoteTokenizer(http).encode("one two three four five six seven eight nine ten ")
    prompt = (ids * N_CTX)[: N_CTX - 1]
    r = http.post("/v1/completions", json=_loglikelihood_payload(model, [prompt]))
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"][0]["logprobs"]["token_logprobs"]) == N_CTX


def test_generate_until_request(http: httpx.Client) -> None:
    tok = RemoteTokenizer(http)
    model = http.get("/v1/models").json()["data"][0]["id"]
    prompts = ["Q: Name a color.\nA:", "Q: Name an animal.\nA:"]
    payload = {
        "prompt": [tok.encode(p) for p in prompts],
        "model": model,
        "max_tokens": 8,
        "temperature": 0,
        "stop": ["\n\n", tok.info["eos_token"]],
        "seed": 1234,
    }
    r = http.post("/v1/completions", json=payload)
    assert r.status_code == 200, r.text
    texts = [None] * len(r.json()["choices"])
    for choice in r.json()["choices"]:
        texts[choice["index"]] = choice["text"]
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
