"""GET /metrics: the model pool's and each loaded engine's statistics (Prometheus text),
then llama-server's ``llamacpp:`` series (api/metrics_llamacpp.py)."""

from __future__ import annotations

from ferrousforge.api.metrics_llamacpp import render_llamacpp
from ferrousforge.engine.stats import EngineStats, Histogram
from ferrousforge.inference.backends.llama_cpp.backend import LoadedModel
from ferrousforge.models.pool import ModelPool

PREFIX = "ferrousforge_"

# (name, help, EngineStats attribute)
_COUNTERS = [
    ("prompt_tokens_total", "Prompt tokens processed", "prompt_tokens"),
    ("generation_tokens_total", "Tokens generated", "generated_tokens"),
    (
        "cached_prompt_tokens_total",
        "Prompt tokens reused from the prefix cache",
        "cached_prompt_tokens",
    ),
    ("prefix_cache_hits_total", "Requests that reused a cached prefix", "prefix_cache_hits"),
    ("requests_finished_total", "Requests finished normally", "requests_finished"),
    ("requests_aborted_total", "Requests aborted (client left or error)", "requests_aborted"),
    ("requests_rejected_total", "Requests refused because the queue was full", "requests_rejected"),
    ("preemptions_total", "Sequences preempted because the KV cache was full", "preemptions"),
    ("decode_steps_total", "llama_decode calls", "decode_steps"),
    (
        "step_seconds_total",
        "Seconds inside the decode steps (llama_decode and sampling)",
        "step_seconds",
    ),
    ("step_tokens_total", "Tokens decoded in those steps (prompt, output, drafts)", "step_tokens"),
    ("draft_tokens_total", "Speculative decoding: drafted tokens verified", "draft_tokens"),
    (
        "draft_accepted_tokens_total",
        "Speculative decoding: drafted tokens accepted",
        "draft_accepted_tokens",
    ),
    ("embedding_requests_total", "Embedding and rerank requests served", "embedding_requests"),
    ("embedding_inputs_total", "Inputs embedded (or document pairs ranked)", "embedding_inputs"),
    ("embedding_tokens_total", "Tokens of those inputs", "embedding_tokens"),
    ("embedding_decodes_total", "Decodes of the embedding context", "embedding_decodes"),
    ("embedding_seconds_total", "Seconds spent in those decodes", "embedding_seconds"),
    (
        "prompt_tokens_decoded_total",
        "Prompt tokens decoded by finished requests (not reused from a cache)",
        "prompt_tokens_decoded",
    ),
    (
        "prompt_seconds_total",
        "Seconds from admission to first token, summed over finished requests",
        "prompt_seconds",
    ),
    (
        "generation_seconds_total",
        "Seconds from first to last token, summed over finished requests",
        "generation_seconds",
    ),
]
_HISTOGRAMS = [
    ("time_to_first_token_seconds", "Time from arrival to first token", "ttft"),
    ("inter_token_latency_seconds", "Time between consecutive tokens", "inter_token"),
    ("request_latency_seconds", "Time from arrival to the end of the request", "request_latency"),
    ("queue_time_seconds", "Time from arrival to a slot (waiting in the queue)", "queue_time"),
    (
        "embedding_latency_seconds",
        "Time from arrival to the last vector of an embedding or rerank request",
        "embedding_latency",
    ),
]


def _histogram(lines: list[str], name: str, label: str, h: Histogram) -> None:
    for bound, count in h.cumulative():
        lines.append(f'{name}_bucket{{{label},le="{bound}"}} {count}')
    lines.append(f'{name}_bucket{{{label},le="+Inf"}} {h.n}')
    lines.append(f"{name}_sum{{{label}}} {h.total}")
    lines.append(f"{name}_count{{{label}}} {h.n}")


def _gauges(lm: LoadedModel) -> list[tuple[str, str, float]]:
    sched = lm.engine.scheduler
    st: EngineStats = lm.engine.stats
    # Read live from the scheduler: stats.running/waiting are only refreshed on a decode step.
    kv_tokens = sched.kv_tokens()
    return [
        ("requests_running", "Requests holding a slot", len(sched.running)),
        ("requests_waiting", "Requests queued for a slot", len(sched.waiting)),
        ("busy_slots", "Slots in use now", sched.busy_slots()),
        ("slots_total", "Parallel sequence slots", len(sched.slots)),
        (
            "mean_busy_slots_per_decode",
            "Mean sequences sampled per decode step",
            st.mean_busy_slots,
        ),
        ("kv_cache_tokens", "Tokens held in the KV cache (free slots' reusable prefixes too)",
         kv_tokens),
        ("kv_cache_cells", "KV cache capacity in tokens (all slots)", sched.kv_cells),
        ("kv_cache_usage_ratio", "kv_cache_tokens / kv_cache_cells (1: full)",
         kv_tokens / sched.kv_cells if sched.kv_cells else 0.0),
    ]  # fmt: skip


def _host_cache(lm: LoadedModel) -> list[tuple[str, str, str, float]]:
    """The host-RAM prompt cache's series (none when it is off)."""
    cache = lm.engine.scheduler.host_cache
    if cache is None:
        return []
    st = cache.stats
    return [
        ("host_cache_hits_total", "Requests whose prefix was restored from host RAM", "counter",
         st.hits),
        ("host_cache_restored_tokens_total", "Prompt tokens restored from host RAM", "counter",
         st.tokens_restored),
        ("host_cache_saves_total", "Slot KV states saved to host RAM", "counter", st.saves),
        ("host_cache_evictions_total", "Saved states evicted to stay within --cache-ram",
         "counter", st.evictions),
        ("host_cache_restore_failures_total", "Restores refused by llama.cpp (prefilled instead)",
         "counter", st.restore_failures),
        ("host_cache_bytes", "Bytes of KV state held in host RAM", "gauge", cache.n_bytes),
        ("host_cache_entries", "Saved prompt states held in host RAM", "gauge", len(cache)),
        ("host_cache_capacity_bytes", "The host cache's budget (--cache-ram)", "gauge",
         cache.capacity_bytes),
    ]  # fmt: skip


def _pool_series(pool: ModelPool) -> list[tuple[str, str, str, str, float]]:
    """The model pool's series: (name, help, kind, labels, value)."""
    st = pool.stats
    rows = [
        ("model_loads_total", "Models loaded", "counter", "", st.loads),
        ("model_load_failures_total", "Model loads that failed", "counter", "",
         st.load_failures),
        ("model_load_seconds_total", "Seconds spent loading models", "counter", "",
         round(st.load_seconds, 6)),
        ("models_loaded", "Models loaded now", "gauge", "", len(pool.loaded)),
        ("models_loaded_bytes", "Estimated memory of the loaded models (weights, KV, compute)",
         "gauge", "", pool.loaded_bytes),
    ]  # fmt: skip
    for reason in ("idle", "evicted", "request"):
        rows.append(
            ("model_unloads_total", "Models unloaded, by reason", "counter",
             f'reason="{reason}"', st.unloads[reason])
        )  # fmt: skip
    if pool.memory_budget is not None:
        rows.append(("memory_budget_bytes", "The --memory-budget", "gauge", "", pool.memory_budget))
    for mid, entry in pool.entries.items():
        rows.append(
            ("model_loaded", "1 if the model is loaded, else 0", "gauge", f'model="{mid}"',
             int(entry.lm is not None))
        )  # fmt: skip
    return rows


def render_metrics(pool: ModelPool) -> str:
    """Prometheus exposition text: the pool's series, then every loaded model's (label
    model="id"; a model's counters start again from 0 when it is loaded again)."""
    sections: dict[str, list[str]] = {}

    def section(name: str, help_: str, kind: str) -> list[str]:
        full = PREFIX + name
        if full not in sections:
            sections[full] = [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"]
        return sections[full]

    for name, help_, kind, labels, value in _pool_series(pool):
        section(name, help_, kind).append(
            f"{PREFIX}{name}{{{labels}}} {value}" if labels else f"{PREFIX}{name} {value}"
        )
    for mid, lm in pool.loaded.items():
        label = f'model="{mid}"'
        st = lm.engine.stats
        with st.lock:
            for name, help_, attr in _COUNTERS:
                section(name, help_, "counter").append(
                    f"{PREFIX}{name}{{{label}}} {getattr(st, attr)}"
                )
            for name, help_, attr in _HISTOGRAMS:
                _histogram(
                    section(name, help_, "histogram"), PREFIX + name, label, getattr(st, attr)
                )
        for name, help_, value in _gauges(lm):
            section(name, help_, "gauge").append(f"{PREFIX}{name}{{{label}}} {value}")
        for name, help_, kind, value in _host_cache(lm):
            section(name, help_, kind).append(f"{PREFIX}{name}{{{label}}} {value}")
    lines = [line for lines in sections.values() for line in lines]
    lines += render_llamacpp(list(pool.loaded.values()))
    return "\n".join(lines) + "\n"
