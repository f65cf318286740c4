"""llama-server's ``llamacpp:`` metrics, so that dashboards built on llama-server keep working.

llama-server serves one model and labels nothing: each series here is the sum over the
loaded models (their counters start again from 0 when a model is loaded again). Names,
types and help texts are llama-server's (tools/server/server-task.cpp, ``to_metrics``);
``kv_cache_usage_ratio`` and ``kv_cache_tokens`` are the gauges older llama-servers export.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferrousforge.inference.backends.llama_cpp.backend import LoadedModel

PREFIX = "llamacpp:"


@dataclass(slots=True)
class _Totals:
    prompt_tokens: int = 0
    prompt_cached: int = 0
    prompt_seconds: float = 0.0
    predicted: int = 0
    predicted_steps: int = 0
    predicted_seconds: float = 0.0
    decodes: int = 0
    busy_seqs: int = 0
    n_tokens_max: int = 0
    draft_tokens: int = 0
    draft_accepted: int = 0
    drafts: int = 0
    processing: int = 0
    deferred: int = 0
    kv_tokens: int = 0
    kv_cells: int = 0

    def add(self, lm: LoadedModel) -> None:
        sched, st = lm.engine.scheduler, lm.engine.stats
        with st.lock:
            # An embedding decode is prompt work too (llama-server decodes it in a slot).
            self.prompt_tokens += st.prompt_tokens_decoded + st.embedding_tokens
            self.prompt_cached += st.cached_prompt_tokens
            self.prompt_seconds += st.prompt_seconds + st.embedding_seconds
            self.predicted += st.generated_tokens
            self.predicted_steps += st.generation_steps
            self.predicted_seconds += st.generation_seconds
            self.decodes += st.decode_steps + st.embedding_decodes
            self.busy_seqs += st.busy_seqs_sum
            self.n_tokens_max = max(self.n_tokens_max, st.n_tokens_max)
        self.draft_tokens += sched.drafted
        self.draft_accepted += sched.accepted
        self.drafts += sched.drafts
        self.processing += sched.busy_slots()
        self.deferred += len(sched.waiting)
        self.kv_tokens += sched.kv_tokens()
        self.kv_cells += sched.kv_cells


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def render_llamacpp(models: list[LoadedModel]) -> list[str]:
    """The ``llamacpp:`` series (HELP, TYPE and one unlabelled sample each)."""
    t = _Totals()
    for lm in models:
        t.add(lm)
    counters = [
        ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens",
         t.prompt_tokens),
        ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache",
         t.prompt_cached),
        ("prompt_seconds_total", "Total time spent processing prompts", t.prompt_seconds),
        ("tokens_predicted_total", "Number of generation tokens processed", t.predicted),
        ("tokens_predicted_seconds_total", "Total time spent generating tokens",
         t.predicted_seconds),
        ("n_decode_total", "Total number of llama_decode() calls, excluding speculative "
         "decoding and multimodal decoding", t.decodes),
        ("n_tokens_max", "Largest observed sequence length (prompt + generation)",
         t.n_tokens_max),
        ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated",
         t.draft_tokens),
        ("spec_decode_num_accepted_tokens_total",
         "Speculative: Total draft tokens accepted by the target model", t.draft_accepted),
        ("spec_decode_num_drafts_total",
         "Speculative: Total speculative decoding verification steps", t.drafts),
    ]  # fmt: skip
    gauges = [
        ("prompt_tokens_seconds", "Average prompt throughput in tokens/s",
         _rate(t.prompt_tokens, t.prompt_seconds)),
        # Over decode steps, as llama-server: the first token comes with the prompt.
        ("predicted_tokens_seconds", "Average generation throughput in tokens/s",
         _rate(t.predicted_steps, t.predicted_seconds)),
        ("requests_processing", "Number of requests processing", t.processing),
        ("requests_deferred", "Number of requests deferred", t.deferred),
        ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
         _rate(t.busy_seqs, t.decodes)),
        ("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
         _rate(t.kv_tokens, t.kv_cells)),
        ("kv_cache_tokens", "KV-cache tokens.", t.kv_tokens),
    ]  # fmt: skip
    lines = []
    for kind, items in (("counter", counters), ("gauge", gauges)):
        for name, help_, value in items:
            lines += [
                f"# HELP {PREFIX}{name} {help_}",
                f"# TYPE {PREFIX}{name} {kind}",
                f"{PREFIX}{name} {value}",
            ]
    return lines
