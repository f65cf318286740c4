"""/metrics through the real server: llama-server's ``llamacpp:`` series count what the engine
did (a dashboard built on llama-server reads the same numbers), and our own KV and queue
series; `ferrousforge-server` serves /metrics only with --metrics, as llama-server."""

from __future__ import annotations

import httpx
import pytest
from live_server import live_server

from ferrousforge.cli import llama_server

pytestmark = pytest.mark.integration

PROMPT = "The quick brown fox jumps over the lazy dog, and then"


def parse(text: str) -> tuple[dict[str, float], dict[str, str]]:
    """Unlabelled samples and the TYPE of every series."""
    values, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#") and "{" not in line:
            name, value = line.split(" ", 1)
            values[name] = float(value)
    return values, types


def scrape(url: str) -> dict[str, float]:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200
    return parse(r.text)[0]


def labelled(url: str, name: str) -> float:
    """Our own series for the one loaded model (label model=...)."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not found")


def complete(url: str, max_tokens: int) -> dict:
    r = httpx.post(
        url + "/v1/completions",
        json={"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()["usage"]


@pytest.fixture(scope="module")
def server():
    with live_server("--parallel", "1") as s:
        yield s


def test_llamacpp_series_have_llama_servers_names_types_and_header(server):
    r = httpx.get(server.url + "/metrics")
    assert r.headers["Process-Start-Time-Unix"].isdigit()  # llama-server's header
    _, types = parse(r.text)
    for name in ("prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total",
                 "tokens_predicted_total", "tokens_predicted_seconds_total", "n_decode_total",
                 "n_tokens_max", "spec_decode_num_draft_tokens_total"):  # fmt: skip
        assert types[f"llamacpp:{name}"] == "counter", name
    for name in ("prompt_tokens_seconds", "predicted_tokens_seconds", "requests_processing",
                 "requests_deferred", "n_busy_slots_per_decode", "kv_cache_usage_ratio",
                 "kv_cache_tokens"):  # fmt: skip
        assert types[f"llamacpp:{name}"] == "gauge", name
        assert f"# HELP llamacpp:{name} " in r.text


def test_counters_grow_by_exactly_what_a_request_decoded(server):
    before = scrape(server.url)
    usage = complete(server.url, 8)
    after = scrape(server.url)
    cached = usage["prompt_tokens_details"]["cached_tokens"]

    def grew(name: str) -> float:
        return after[f"llamacpp:{name}"] - before[f"llamacpp:{name}"]

    assert grew("prompt_tokens_total") == usage["prompt_tokens"] - cached
    assert grew("prompt_tokens_cached_total") == cached
    assert grew("tokens_predicted_total") == usage["completion_tokens"]
    # one decode for the prompt, then at most one per token (fewer: speculation verifies
    # several tokens per decode)
    assert 1 <= grew("n_decode_total") <= usage["completion_tokens"] + 1
    assert grew("prompt_seconds_total") > 0 and grew("tokens_predicted_seconds_total") > 0
    assert after["llamacpp:n_tokens_max"] >= usage["total_tokens"]
    assert after["llamacpp:requests_processing"] == 0
    assert after["llamacpp:predicted_tokens_seconds"] > 0
    assert 0 < after["llamacpp:n_busy_slots_per_decode"] <= 1  # one slot


def test_a_repeated_prompt_counts_as_cached_not_processed(server):
    complete(server.url, 2)
    before = scrape(server.url)
    usage = complete(server.url, 2)
    after = scrape(server.url)
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    assert (
        after["llamacpp:prompt_tokens_cached_total"] - before["llamacpp:prompt_tokens_cached_total"]
        == cached
    )
    assert after["llamacpp:prompt_tokens_total"] - before["llamacpp:prompt_tokens_total"] == (
        usage["prompt_tokens"] - cached
    )


def test_kv_usage_and_queue_time_in_our_own_series(server):
    usage = complete(server.url, 4)
    values = scrape(server.url)
    # The finished prompt stays in the slot for reuse: its KV is still held.
    assert values["llamacpp:kv_cache_tokens"] >= usage["total_tokens"] - 1
    assert 0 < values["llamacpp:kv_cache_usage_ratio"] <= 1
    tokens = labelled(server.url, "ferrousforge_kv_cache_tokens")
    cells = labelled(server.url, "ferrousforge_kv_cache_cells")
    assert tokens == values["llamacpp:kv_cache_tokens"]
    assert labelled(server.url, "ferrousforge_kv_cache_usage_ratio") == pytest.approx(
        tokens / cells
    )
    finished = labelled(server.url, "ferrousforge_requests_finished_total")
    assert labelled(server.url, "ferrousforge_queue_time_seconds_count") == finished


def test_embedding_decodes_count_as_prompt_work_not_prediction(server):
    before = scrape(server.url)
    r = httpx.post(server.url + "/v1/embeddings", json={"input": ["hello world", "goodbye"]})
    assert r.status_code == 200, r.text
    after = scrape(server.url)
    n = r.json()["usage"]["prompt_tokens"]
    assert after["llamacpp:prompt_tokens_total"] - before["llamacpp:prompt_tokens_total"] == n
    assert after["llamacpp:n_decode_total"] > before["llamacpp:n_decode_total"]
    assert after["llamacpp:tokens_predicted_total"] == before["llamacpp:tokens_predicted_total"]


def test_ferrousforge_server_serves_metrics_only_with_the_flag(monkeypatch):
    seen: list[list[str]] = []
    monkeypatch.setattr("ferrousforge.cli.main.main", lambda argv: seen.append(argv) or 0)
    monkeypatch.delenv("FERROUSFORGE_METRICS", raising=False)
    llama_server.main(["-m", "x.gguf"])
    llama_server.main(["-m", "x.gguf", "--metrics"])
    monkeypatch.setenv("FERROUSFORGE_METRICS", "true")
    llama_server.main(["-m", "x.gguf"])
    from ferrousforge.cli.main import build_parser

    def metrics_on(argv: list[str]) -> bool:
        return build_parser().parse_args(argv).metrics is not False

    assert [metrics_on(a) for a in seen[:2]] == [False, True]
    assert "--no-metrics" not in seen[2]
