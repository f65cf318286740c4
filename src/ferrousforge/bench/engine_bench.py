"""`ferrousforge bench engine`: the engine against raw llama_decode, in one process.

Two parts, each measured through the engine and through bare llama_decode
calls on a context of the same shape, so overhead shows as a ratio:

- batched decode in the manner of llama-batched-bench: N sequences of P prompt
  tokens generate G tokens each (greedy, EOS ignored, prompts distinct, no
  prefix cache); the decode rate once every sequence is generating (S_TG),
  end-to-end rate and time to first token.
- pp/tg in the manner of llama-bench: one 512-token prompt, and 128 tokens
  generated one at a time from a one-token prompt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ferrousforge.api.request import InferenceOptions
from ferrousforge.bench.breakdown import StepBreakdown
from ferrousforge.bench.prompts import token_prompts
from ferrousforge.bench.raw import RawDecoder, RawRun
from ferrousforge.bench.stats import median, ratio
from ferrousforge.inference.backend import (
    Accelerator,
    AcceleratorType,
    BackendConfig,
    ModelHandle,
)
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend
from ferrousforge.inference.backends.llama_cpp.context import LlamaContext
from ferrousforge.inference.backends.llama_cpp.library import load_library

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineBenchConfig:
    """What to measure. Defaults: issue 3's shapes on the default model, 2 threads."""

    model: Path
    levels: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    prompt_tokens: int = 128
    gen_tokens: int = 128
    threads: int = 2
    batch_size: int = 512
    pp_tokens: int = 512  # 0 skips pp
    tg_tokens: int = 128  # 0 skips tg
    repeat: int = 1  # batched runs per level (median kept); pp/tg run 3 x repeat times
    seed: int = 0
    gpu: bool = False  # offload to the library's GPU backend (CUDA, Metal, Vulkan...)
    n_gpu_layers: int = -1  # with gpu: layers to offload (-1: all)
    main_gpu: int = 0

    @property
    def accelerator(self) -> Accelerator:
        return AcceleratorType.Cuda(device_id=self.main_gpu) if self.gpu else AcceleratorType.Cpu()

    def __post_init__(self) -> None:
        if not self.levels or min(self.levels) < 1:
            raise ValueError("levels: must be positive sequence counts")
        if self.prompt_tokens < 1 or self.gen_tokens < 2:
            raise ValueError("prompt_tokens: must be >= 1 and gen_tokens >= 2")
        if self.repeat < 1:
            raise ValueError("repeat: must be >= 1")


@dataclass(slots=True)
class LevelResult:
    """One concurrency level; *_tps are generated tokens per second."""

    sequences: int
    engine_tg_tps: float  # while every sequence is generating (S_TG)
    raw_tg_tps: float
    tg_ratio: float
    engine_e2e_tps: float  # all generated tokens / submit-to-last-token
    raw_e2e_tps: float
    e2e_ratio: float
    engine_ttft_p50_s: float
    raw_ttft_p50_s: float
    mean_batch: float  # engine: sequences sampled per decode step
    complete: bool  # every request got gen_tokens tokens
    breakdown: dict[str, float] = field(default_factory=dict)  # ms per step, engine and raw
    # Over the --repeat runs, each side's fastest: the runs least disturbed by other load.
    engine_tg_best: float = float("nan")
    raw_tg_best: float = float("nan")
    best_ratio: float = float("nan")


@dataclass(slots=True)
class SingleResult:
    """A llama-bench test (pp512 or tg128): tokens per second."""

    test: str
    engine_tps: float  # median of the runs
    raw_tps: float
    ratio: float
    engine_best: float = float("nan")  # fastest run of each side
    raw_best: float = float("nan")
    best_ratio: float = float("nan")


@dataclass(slots=True)
class EngineBenchReport:
    config: dict
    levels: list[LevelResult] = field(default_factory=list)
    single: list[SingleResult] = field(default_factory=list)
    started_at: str = ""
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class _Trace:
    """One engine request as its consumer saw it."""

    token_times: list[float] = field(default_factory=list)
    n_tokens: int = 0
    ttft_s: float = 0.0


def _options(n: int) -> InferenceOptions:
    return InferenceOptions(max_tokens=n, temperature=0.0, ignore_eos=True)


async def _consume(stream) -> _Trace:
    tr = _Trace()
    async for out in stream:
        if out.token_ids:
            tr.n_tokens += len(out.token_ids)
            tr.token_times.extend([time.perf_counter()] * len(out.token_ids))
        if out.finish_reason is not None:
            tr.ttft_s = out.ttft_s
    return tr


async def _engine_run(
    backend: LlamaCppBackend, handle: ModelHandle, prompts: list[list[int]], n_gen: int
) -> tuple[list[_Trace], float, float]:
    """Submit every prompt at once; returns the traces, the start time and the wall time."""
    t0 = time.perf_counter()
    streams = [s for p in prompts for s in backend.submit(handle, p, _options(n_gen))]
    traces = await asyncio.gather(*(_consume(s) for s in streams))
    return list(traces), t0, time.perf_counter() - t0


def steady_rate(traces: list[_Trace]) -> float:
    """Tokens/s between the last first token and the first last token: all sequences busy."""
    if not traces or not all(tr.token_times for tr in traces):
        return float("nan")
    t_start = max(tr.token_times[0] for tr in traces)
    t_end = min(tr.token_times[-1] for tr in traces)
    if t_end <= t_start:
        return float("nan")
    n = sum(1 for tr in traces for t in tr.token_times if t_start < t <= t_end)
    return n / (t_end - t_start)


class _Loaded:
    """A model loaded with one engine plus a second context of the same shape for raw runs."""

    def __init__(
        self, backend: LlamaCppBackend, handle: ModelHandle, config: BackendConfig
    ) -> None:
        self.backend, self.handle = backend, handle
        lm = backend.loaded(handle)
        self.engine = lm.engine
        self.vocab = lm.vocab
        self.raw_ctx = LlamaContext(load_library(config.library_path), lm.model, config)
        self.raw = RawDecoder(self.raw_ctx)

    @classmethod
    async def open(cls, cfg: EngineBenchConfig, config: BackendConfig) -> _Loaded:
        backend = LlamaCppBackend()
        handle = await backend.load_model(cfg.model, config, cfg.accelerator)
        return cls(backend, handle, config)

    async def close(self) -> None:
        self.raw.close()
        self.raw_ctx.close()
        await self.backend.unload_model(self.handle)

    async def warm_up(self) -> None:
        """First decodes allocate compute buffers; keep that out of every timing."""
        prompt = token_prompts(1, 8, self.vocab.n_tokens, seed=99)
        self.raw.run(prompt, 4)
        await _engine_run(self.backend, self.handle, prompt, 4)


def _config(cfg: EngineBenchConfig, parallel: int, n_ctx: int) -> BackendConfig:
    return BackendConfig(
        num_threads=cfg.threads,
        context_size=n_ctx,
        batch_size=cfg.batch_size,
        ubatch_size=cfg.batch_size,
        max_parallel=parallel,
        prefix_cache=False,
        n_gpu_layers=cfg.n_gpu_layers,
        main_gpu=cfg.main_gpu,
    )


async def bench_level(cfg: EngineBenchConfig, n_seqs: int) -> LevelResult:
    """Batched decode of ``n_seqs`` sequences: engine and raw on the same context shape."""
    n_ctx = n_seqs * (cfg.prompt_tokens + cfg.gen_tokens)
    loaded = await _Loaded.open(cfg, _config(cfg, n_seqs, n_ctx))
    try:
        await loaded.warm_up()
        runs = []
        for r in range(cfg.repeat):
            prompts = token_prompts(
                n_seqs,
                cfg.prompt_tokens,
                loaded.vocab.n_tokens,
                seed=cfg.seed + r,
                avoid=loaded.vocab.eog_ids,
            )
            raw = loaded.raw.run(prompts, cfg.gen_tokens)
            st = loaded.engine.stats
            steps0, busy0 = st.decode_steps, st.busy_slots_sum
            cpu0 = time.thread_time()  # the event loop's CPU: it runs alongside llama_decode
            with StepBreakdown(loaded.engine) as bd:
                traces, _, wall = await _engine_run(
                    loaded.backend, loaded.handle, prompts, cfg.gen_tokens
                )
            loop_cpu_s = time.thread_time() - cpu0
            steps, busy = st.decode_steps - steps0, st.busy_slots_sum - busy0
            result = _level_result(
                n_seqs, cfg.gen_tokens, raw, traces, wall, busy / steps if steps else 0.0
            )
            result.breakdown = _breakdown(bd, raw, cfg.gen_tokens)
            result.breakdown["loop_cpu_ms"] = 1000 * loop_cpu_s / max(1, bd.times.steps)
            runs.append(result)
            log.info("level %d run %d: %s", n_seqs, r, runs[-1])
        return _median_level(runs)
    finally:
        await loaded.close()


def _level_result(
    n_seqs: int, n_gen: int, raw: RawRun, traces: list[_Trace], wall: float, mean_batch: float
) -> LevelResult:
    engine_tg = steady_rate(traces)
    raw_tg = raw.decode_tokens / raw.decode_s if raw.decode_s else float("nan")
    engine_e2e = sum(tr.n_tokens for tr in traces) / wall
    raw_e2e = raw.generated / raw.total_s
    return LevelResult(
        sequences=n_seqs,
        engine_tg_tps=engine_tg,
        raw_tg_tps=raw_tg,
        tg_ratio=ratio(engine_tg, raw_tg),
        engine_e2e_tps=engine_e2e,
        raw_e2e_tps=raw_e2e,
        e2e_ratio=ratio(engine_e2e, raw_e2e),
        engine_ttft_p50_s=median([tr.ttft_s for tr in traces]),
        raw_ttft_p50_s=median(raw.ttft_s),
        mean_batch=mean_batch,
        complete=all(tr.n_tokens == n_gen for tr in traces),
    )


def _breakdown(bd: StepBreakdown, raw: RawRun, n_gen: int) -> dict[str, float]:
    """Mean ms per generation step (one token per sequence, no prompt chunk) split into
    llama_decode, sampling and the rest (Python), for the engine and for raw."""
    out = {f"engine_{k}": v for k, v in bd.gen_times.per_step_ms().items()}
    out["engine_gen_steps"] = bd.gen_times.steps
    out["engine_steps"] = bd.times.steps
    out["engine_all_python_p50_ms"] = bd.times.per_step_ms()["python_p50_ms"]
    gen_steps = max(1, n_gen - 1)
    out["raw_step_ms"] = 1000 * raw.decode_s / gen_steps
    out["raw_decode_ms"] = 1000 * raw.decode_only_s / gen_steps
    out["raw_sample_ms"] = 1000 * raw.sample_s / gen_steps
    out["raw_python_ms"] = out["raw_step_ms"] - out["raw_decode_ms"] - out["raw_sample_ms"]
    # The engine does the same C work per step as raw plus its own Python: the ratio that
    # overhead alone implies, robust to the CPU noise that swamps wall-clock ratios.
    out["implied_ratio"] = ratio(
        out["raw_step_ms"],
        out["raw_step_ms"] - out["raw_python_ms"] + out["engine_python_p50_ms"],
    )
    return out


def _median_level(runs: list[LevelResult]) -> LevelResult:
    """The run with the median engine/raw decode ratio (keeps each row from one run),
    plus the best-of-runs figures."""
    ordered = sorted(runs, key=lambda r: r.tg_ratio)
    mid = ordered[len(ordered) // 2]
    mid.complete = all(r.complete for r in runs)
    mid.engine_tg_best = max(r.engine_tg_tps for r in runs)
    mid.raw_tg_best = max(r.raw_tg_tps for r in runs)
    mid.best_ratio = ratio(mid.engine_tg_best, mid.raw_tg_best)
    return mid


async def bench_single(cfg: EngineBenchConfig) -> list[SingleResult]:
    """llama-bench's pp<N> and tg<N>, each engine vs raw, alternating, median of the runs."""
    n_ctx = max(cfg.pp_tokens + 1, cfg.tg_tokens + 1, 256)
    loaded = await _Loaded.open(cfg, _config(cfg, 1, n_ctx))
    results = []
    try:
        await loaded.warm_up()
        n_vocab, avoid = loaded.vocab.n_tokens, loaded.vocab.eog_ids
        tests = []
        if cfg.pp_tokens:
            tests.append((f"pp{cfg.pp_tokens}", cfg.pp_tokens, 1))
        if cfg.tg_tokens:
            tests.append((f"tg{cfg.tg_tokens}", 1, cfg.tg_tokens))
        for name, n_prompt, n_gen in tests:
            eng, raw = [], []
            for r in range(3 * cfg.repeat):
                prompt = token_prompts(1, n_prompt, n_vocab, seed=cfg.seed + r, avoid=avoid)
                rr = loaded.raw.run(prompt, n_gen)
                traces, _, wall = await _engine_run(loaded.backend, loaded.handle, prompt, n_gen)
                if n_gen == 1:  # prompt processing: time to the first token
                    raw.append(n_prompt / rr.prefill_s)
                    eng.append(n_prompt / traces[0].ttft_s)
                else:
                    raw.append(n_gen / rr.total_s)
                    eng.append(traces[0].n_tokens / wall)
            e, w = median(eng), median(raw)
            be, bw = max(eng), max(raw)
            results.append(SingleResult(name, e, w, ratio(e, w), be, bw, ratio(be, bw)))
    finally:
        await loaded.close()
    return results


async def run_engine_bench(cfg: EngineBenchConfig) -> EngineBenchReport:
    """Run every level, then pp/tg. One model load per context shape."""
    t0 = time.perf_counter()
    cfg_dict = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    report = EngineBenchReport(
        config=cfg_dict, started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    for n in cfg.levels:
        report.levels.append(await bench_level(cfg, n))
    if cfg.pp_tokens or cfg.tg_tokens:
        report.single = await bench_single(cfg)
    report.wall_s = time.perf_counter() - t0
    return report


def format_report(report: EngineBenchReport) -> str:
    """The report as plain-text tables."""
    c = report.config
    lines = [
        f"batched decode: {c['prompt_tokens']} prompt + {c['gen_tokens']} generated tokens "
        f"per sequence, {c['threads']} threads, greedy, EOS ignored, no prefix cache, "
        f"{'GPU (' + str(c['n_gpu_layers']) + ' layers)' if c.get('gpu') else 'CPU'}",
        f"{'seqs':>4} {'engine t/s':>10} {'raw t/s':>9} {'ratio':>6} | {'e2e eng':>8} "
        f"{'e2e raw':>8} {'ratio':>6} | {'ttft eng':>9} {'ttft raw':>9} {'batch':>5} ok | "
        f"best: {'engine':>7} {'raw':>7} {'ratio':>6}",
    ]
    for r in report.levels:
        lines.append(
            f"{r.sequences:>4} {r.engine_tg_tps:>10.1f} {r.raw_tg_tps:>9.1f} {r.tg_ratio:>6.1%} | "
            f"{r.engine_e2e_tps:>8.1f} {r.raw_e2e_tps:>8.1f} {r.e2e_ratio:>6.1%} | "
            f"{r.engine_ttft_p50_s * 1000:>7.0f}ms {r.raw_ttft_p50_s * 1000:>7.0f}ms "
            f"{r.mean_batch:>5.1f} {'yes' if r.complete else ' NO'} | "
            f"      {r.engine_tg_best:>7.1f} {r.raw_tg_best:>7.1f} {r.best_ratio:>6.1%}"
        )
    lines += [
        "",
        "per generation step (one token per sequence), ms; loop: event-loop thread CPU per"
        " step, concurrent with decode",
        f"{'seqs':>4} {'eng step':>8} {'decode':>7} {'sample':>7} {'python':>7} {'py p50':>7} "
        f"{'py max':>7} {'loop':>6} | {'raw step':>8} {'decode':>7} {'sample':>7} {'python':>7} "
        "| implied",
    ]
    for r in report.levels:
        b = r.breakdown
        if b:
            lines.append(
                f"{r.sequences:>4} {b['engine_step_ms']:>8.2f} {b['engine_decode_ms']:>7.2f} "
                f"{b['engine_sample_ms']:>7.3f} {b['engine_python_ms']:>7.3f} "
                f"{b['engine_python_p50_ms']:>7.3f} {b['engine_python_max_ms']:>7.2f} "
                f"{b.get('loop_cpu_ms', float('nan')):>6.3f} | "
                f"{b['raw_step_ms']:>8.2f} {b['raw_decode_ms']:>7.2f} {b['raw_sample_ms']:>7.3f} "
                f"{b['raw_python_ms']:>7.3f} | {b['implied_ratio']:>6.1%}"
            )
    if report.single:
        lines += [
            "",
            f"{'test':>6} {'engine t/s':>10} {'raw t/s':>9} {'ratio':>6} | best: {'engine':>7} "
            f"{'raw':>7} {'ratio':>6}",
        ]
        for s in report.single:
            lines.append(
                f"{s.test:>6} {s.engine_tps:>10.1f} {s.raw_tps:>9.1f} {s.ratio:>6.1%} | "
                f"      {s.engine_best:>7.1f} {s.raw_best:>7.1f} {s.best_ratio:>6.1%}"
            )
    return "\n".join(lines)
