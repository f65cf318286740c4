"""Many models in one server, as an Ollama user would drive it: a models folder, loading on
demand, --max-loaded-models with LRU eviction, keep_alive and --idle-unload, and the
/models/load|unload routes; through HTTP and the openai client, with the bundled model
under three names."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from live_server import live_server

pytestmark = pytest.mark.integration

NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, model_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for name in NAMES:
        (folder / f"{name}.gguf").symlink_to(model_path)
    (folder / "mmproj-alpha.gguf").symlink_to(model_path)  # a projector: not listed
    return folder


@pytest.fixture(scope="module")
def server(models_dir: Path):
    args = ["--models-dir", str(models_dir), "--max-loaded-models", "2"]
    with live_server(*args, "--parallel", "2", "--ctx-size", "1024") as s:
        yield s


def statuses(url: str) -> dict[str, str]:
    data = httpx.get(url + "/v1/models", timeout=10).json()["data"]
    return {m["id"]: m["status"] for m in data}


def metric(url: str, series: str) -> float:
    """One series' value, named with its labels: 'model_unloads_total{reason="idle"}'."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f"ferrousforge_{series} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {series} missing")


EVICTED = 'model_unloads_total{reason="evicted"}'


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def ask(c: openai.OpenAI, model: str, **extra) -> str:
    # Completions, not chat: every test model can answer one (not all have a chat template).
    r = c.completions.create(
        model=model, prompt="Name a colour:", max_tokens=4, extra_body=extra or None
    )
    assert r.model == model and r.usage.completion_tokens > 0
    return r.choices[0].text


def unload_all(url: str) -> None:
    for name in NAMES:
        r = httpx.post(url + "/models/unload", json={"model": name}, timeout=60)
        assert r.status_code == 200


def test_the_folder_models_are_listed_unloaded_until_asked_for(server):
    assert statuses(server.url) == dict.fromkeys(NAMES, "unloaded")
    ask(client(server.url), "beta")
    assert statuses(server.url) == {"alpha": "unloaded", "beta": "loaded", "gamma": "unloaded"}
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and {"id": "beta", "status": "loaded"} in health["models"]


def test_eviction_follows_least_recent_use(server):
    unload_all(server.url)
    c = client(server.url)
    for name in ("alpha", "beta", "gamma"):  # gamma evicts alpha
        ask(c, name)
    assert statuses(server.url) == {"alpha": "unloaded", "beta": "loaded", "gamma": "loaded"}
    ask(c, "beta")
    ask(c, "alpha")  # gamma is now the least recently used
    assert statuses(server.url) == {"alpha": "loaded", "beta": "loaded", "gamma": "unloaded"}


def test_clients_rotating_over_three_models_all_succeed_within_the_limit(server):
    unload_all(server.url)
    evicted = metric(server.url, EVICTED)
    most_loaded = 0
    done = threading.Event()

    def watch() -> None:  # how many models are ever loaded at once
        nonlocal most_loaded
        while not done.is_set():
            most_loaded = max(most_loaded, int(metric(server.url, "models_loaded")))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    c = client(server.url)
    jobs = [NAMES[(i + k) % 3] for i in range(3) for k in range(4)]  # 3 clients x 4 requests
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda m: ask(c, m), jobs))
    finally:
        done.set()
        watcher.join()
    assert len(answers) == 12
    assert 1 <= most_loaded <= 2
    assert metric(server.url, EVICTED) > evicted


def test_concurrent_first_requests_share_one_load(server):
    unload_all(server.url)
    loads = metric(server.url, "model_loads_total")
    c = client(server.url)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: ask(c, "gamma"), range(4)))
    assert metric(server.url, "model_loads_total") == loads + 1


def test_load_and_unload_routes(server):
    r = httpx.post(server.url + "/models/load", json={"model": "alpha"}, timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "loaded"
    assert statuses(server.url)["alpha"] == "loaded"
    r = httpx.post(server.url + "/models/unload", json={"model": "alpha"}, timeout=60)
    assert r.status_code == 200 and statuses(server.url)["alpha"] == "unloaded"
    r = httpx.post(server.url + "/models/load", json={"model": "delta"}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        ask(client(server.url), "delta")


def test_keep_alive_zero_unloads_after_the_request(server):
    ask(client(server.url), "alpha", keep_alive=0)
    for _ in range(100):
        if statuses(server.url)["alpha"] == "unloaded":
            break
        time.sleep(0.05)
    assert statuses(server.url)["alpha"] == "unloaded"
    with pytest.raises(openai.BadRequestError, match="keep_alive"):
        ask(client(server.url), "alpha", keep_alive="5 parsecs")


def wait_for_status(url: str, model: str, status: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while statuses(url)[model] != status and time.monotonic() < deadline:
        time.sleep(0.05)
    assert statuses(url)[model] == status


def test_keep_alive_on_messages_and_embeddings(server):
    """The Anthropic and embeddings routes read Ollama's keep_alive too (0: unload after it)."""
    import anthropic
    from model_traits import has_chat_template

    if has_chat_template():
        a = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "Hi"}]
        a.messages.create(
            model="gamma", max_tokens=2, messages=messages, extra_body={"keep_alive": 0}
        )
        wait_for_status(server.url, "gamma", "unloaded")
    client(server.url).embeddings.create(model="gamma", input="hi", extra_body={"keep_alive": 0})
    wait_for_status(server.url, "gamma", "unloaded")
    r = httpx.post(
        server.url + "/v1/embeddings",
        json={"model": "gamma", "input": "hi", "keep_alive": "1 fortnight"},
    )
    assert r.status_code == 400 and "keep_alive" in r.text


def test_idle_models_leave_memory_after_idle_unload(models_dir: Path):
    args = ["--models-dir", str(models_dir), "--idle-unload", "1"]
    with live_server(*args, "--parallel", "1", "--ctx-size", "512") as s:
        c = client(s.url)
        ask(c, "alpha")
        ask(c, "beta", keep_alive="1h")  # stays, whatever --idle-unload says
        deadline = time.monotonic() + 20
        while statuses(s.url)["alpha"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert statuses(s.url) == {"alpha": "unloaded", "beta": "loaded", "gamma": "unloaded"}
        assert metric(s.url, 'model_unloads_total{reason="idle"}') == 1


def test_streams_with_keep_alive_zero_complete_and_then_the_model_unloads(server):
    """Whole streams with logprobs (read from the vocabulary to the last chunk) from a model
    that unloads after each; test_server_prepare checks when the lease is given back."""
    c = client(server.url)
    for _ in range(3):
        stream = c.completions.create(
            model="beta",
            prompt="Count to five:",
            max_tokens=8,
            logprobs=1,
            stream=True,
            extra_body={"keep_alive": 0, "ignore_eos": True},
        )
        chunks = []
        for chunk in stream:
            time.sleep(0.05)  # a slow reader: the engine is long done
            chunks.append(chunk)
        tokens = [t for ch in chunks if ch.choices and ch.choices[0].logprobs
                  for t in ch.choices[0].logprobs.tokens]  # fmt: skip
        assert len(tokens) == 8 and all(t is not None for t in tokens)
    for _ in range(100):
        if statuses(server.url)["beta"] == "unloaded":
            break
        time.sleep(0.05)
    assert statuses(server.url)["beta"] == "unloaded"


@pytest.fixture(scope="module")
def copies_dir(tmp_path_factory, model_path: Path) -> Path:
    """Three separate files (copies, not links: aliases of one file share their weights)."""
    import shutil

    folder = tmp_path_factory.mktemp("copies")
    for name in NAMES:
        shutil.copyfile(model_path, folder / f"{name}.gguf")
    return folder


def test_a_memory_budget_keeps_the_loaded_estimate_under_it(copies_dir: Path):
    from ferrousforge.inference.backend import BackendConfig
    from ferrousforge.models.memory import estimate_memory

    one = estimate_memory(
        copies_dir / "alpha.gguf", BackendConfig(context_size=512, max_parallel=1)
    ).total_bytes
    budget = int(one * 2.5)  # room for two of the three
    args = ["--models-dir", str(copies_dir), "--memory-budget", str(budget)]
    with live_server(*args, "--parallel", "1", "--ctx-size", "512") as s:
        assert metric(s.url, "memory_budget_bytes") == budget
        c = client(s.url)
        for name in (*NAMES, *NAMES):
            ask(c, name)
            assert 0 < metric(s.url, "models_loaded_bytes") <= budget
            assert metric(s.url, "models_loaded") <= 2
        assert metric(s.url, EVICTED) >= 4  # every load after the second evicted one
        loaded = [m for m, st in statuses(s.url).items() if st == "loaded"]
        assert sorted(loaded) == ["beta", "gamma"]  # the two most recently used


def test_a_long_prompt_fits_under_a_memory_budget(copies_dir: Path):
    """--ctx-size 0 with --memory-budget and --max-loaded-models 2: each model's share holds
    about 3,072 KV cells (less its host prompt cache); split into 8 slots that would be
    under 384 per request, pooled it takes a 3,000-token prompt while the other model
    answers too."""
    from ferrousforge.inference.backend import BackendConfig
    from ferrousforge.inference.gguf import read_gguf
    from ferrousforge.models.memory import estimate_memory

    path = copies_dir / "alpha.gguf"
    if read_gguf(path).arch_value("context_length") < 3100:
        pytest.skip("the model was trained on fewer than 3,100 tokens")
    pooled = BackendConfig(context_size=3072, max_parallel=8, kv_unified=True)
    # two shares, each 3/4 for the model and 1/4 for its host prompt cache
    budget = 2 * estimate_memory(path, pooled).total_bytes * 4 // 3 + 2**20
    args = ["--models-dir", str(copies_dir), "--no-pulled-models", "--memory-budget", str(budget)]
    with live_server(*args, "--max-loaded-models", "2", "--ctx-size", "0") as s:
        c = client(s.url)
        words = "The sea is blue and the sky is wide. " * 400
        r = httpx.post(s.url + "/tokenize", json={"model": "alpha", "content": words}, timeout=60)
        ids = r.json()["tokens"][:3000]
        with ThreadPoolExecutor(2) as pool:
            other = pool.submit(ask, c, "beta")
            long = c.completions.create(model="alpha", prompt=ids, max_tokens=4)
            other.result()
        assert long.usage.prompt_tokens == 3000 and long.usage.completion_tokens >= 1
        meta = httpx.get(s.url + "/v1/models/alpha", timeout=10).json()["meta"]
        assert meta["n_ctx"] >= 3004 and meta["slots"] == 8
        assert metric(s.url, "models_loaded_bytes") <= budget
        # the host prompt caches count too: together at most a quarter of the budget
        cache = metric(s.url, 'host_cache_capacity_bytes{model="alpha"}')
        assert 0 < cache <= budget / 4 / 2
