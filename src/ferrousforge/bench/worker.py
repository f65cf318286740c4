"""One side of `bench engine` in a process of its own: the engine, or the raw decoder.

The parent (engine_bench) starts ``python -m ferrousforge.bench.worker engine|raw``,
sends the context shape as the first JSON line on stdin, then one JSON command per
line; each answer is one JSON line on the protocol channel (the process's original
stdout; C code's stdout goes to stderr). Each side decodes from the thread it would
use: the engine from its engine thread, as in `ferrousforge serve`; raw from the
process's main thread, as llama-batched-bench. Two sides in one process would not
measure that: whichever decodes second on another thread pays for a second OpenMP
thread team (issue 10).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ferrousforge.api.request import InferenceOptions
from ferrousforge.bench.breakdown import StepBreakdown
from ferrousforge.bench.prompts import token_prompts
from ferrousforge.bench.raw import RawDecoder
from ferrousforge.bench.stats import median
from ferrousforge.errors import FerrousForgeError
from ferrousforge.inference.backend import AcceleratorType, BackendConfig

SIDES = ("engine", "raw")


@dataclass(slots=True)
class Shape:
    """What a worker loads: the model and one context shape."""

    model: str
    threads: int
    batch_size: int
    parallel: int
    n_ctx: int
    gpu: bool = False
    n_gpu_layers: int = -1
    main_gpu: int = 0
    draft_max: int = 0

    def backend_config(self) -> BackendConfig:
        return BackendConfig(
            num_threads=self.threads,
            context_size=self.n_ctx,
            batch_size=self.batch_size,
            ubatch_size=self.batch_size,
            max_parallel=self.parallel,
            prefix_cache=False,
            n_gpu_layers=self.n_gpu_layers,
            main_gpu=self.main_gpu,
            draft_max=self.draft_max,
        )

    def accelerator(self):
        return AcceleratorType.Cuda(device_id=self.main_gpu) if self.gpu else AcceleratorType.Cpu()


@dataclass(slots=True)
class Trace:
    """One engine request as its consumer saw it."""

    token_times: list[float] = field(default_factory=list)
    n_tokens: int = 0
    ttft_s: float = 0.0


def steady_rate(traces: list[Trace]) -> float:
    """Tokens/s between the last first token and the first last token: all sequences busy."""
    if not traces or not all(tr.token_times for tr in traces):
        return float("nan")
    t_start = max(tr.token_times[0] for tr in traces)
    t_end = min(tr.token_times[-1] for tr in traces)
    if t_end <= t_start:
        return float("nan")
    n = sum(1 for tr in traces for t in tr.token_times if t_start < t <= t_end)
    return n / (t_end - t_start)


def _options(n: int) -> InferenceOptions:
    return InferenceOptions(max_tokens=n, temperature=0.0, ignore_eos=True)


async def _consume(stream) -> Trace:
    tr = Trace()
    async for out in stream:
        if out.token_ids:
            tr.n_tokens += len(out.token_ids)
            tr.token_times.extend([time.perf_counter()] * len(out.token_ids))
        if out.finish_reason is not None:
            tr.ttft_s = out.ttft_s
    return tr


class EngineSide:
    """The engine as `ferrousforge serve` runs it: the backend's engine thread decodes,
    this process's event loop consumes the streams."""

    def __init__(self, backend, handle) -> None:
        self.backend, self.handle = backend, handle
        lm = backend.loaded(handle)
        self.engine, self.vocab = lm.engine, lm.vocab

    @classmethod
    async def open(cls, shape: Shape) -> EngineSide:
        from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend

        backend = LlamaCppBackend()
        handle = await backend.load_model(
            Path(shape.model), shape.backend_config(), shape.accelerator()
        )
        return cls(backend, handle)

    async def close(self) -> None:
        await self.backend.unload_model(self.handle)

    async def _run(self, prompts: list[list[int]], n_gen: int) -> tuple[list[Trace], float]:
        """Submit every prompt at once; the traces and the wall time."""
        t0 = time.perf_counter()
        streams = [s for p in prompts for s in self.backend.submit(self.handle, p, _options(n_gen))]
        traces = await asyncio.gather(*(_consume(s) for s in streams))
        return list(traces), time.perf_counter() - t0

    async def warm_up(self) -> dict:
        """First decodes allocate compute buffers; keep that out of every timing."""
        await self._run(token_prompts(1, 8, self.vocab.n_tokens, seed=99), 4)
        return {}

    async def batched(self, n_seqs: int, prompt_tokens: int, gen_tokens: int, seed: int) -> dict:
        prompts = token_prompts(
            n_seqs, prompt_tokens, self.vocab.n_tokens, seed=seed, avoid=self.vocab.eog_ids
        )
        st = self.engine.stats
        steps0, busy0 = st.decode_steps, st.busy_slots_sum
        cpu0 = time.thread_time()  # the event loop's CPU: it runs alongside llama_decode
        with StepBreakdown(self.engine) as bd:
            traces, wall = await self._run(prompts, gen_tokens)
        loop_cpu_s = time.thread_time() - cpu0
        steps, busy = st.decode_steps - steps0, st.busy_slots_sum - busy0
        breakdown = {f"engine_{k}": v for k, v in bd.gen_times.per_step_ms().items()}
        breakdown["engine_gen_steps"] = bd.gen_times.steps
        breakdown["engine_steps"] = bd.times.steps
        breakdown["engine_all_python_p50_ms"] = bd.times.per_step_ms()["python_p50_ms"]
        breakdown["loop_cpu_ms"] = 1000 * loop_cpu_s / max(1, bd.times.steps)
        return {
            "tg_tps": steady_rate(traces),
            "e2e_tps": sum(tr.n_tokens for tr in traces) / wall,
            "ttft_p50_s": median([tr.ttft_s for tr in traces]),
            "mean_batch": busy / steps if steps else 0.0,
            "complete": all(tr.n_tokens == gen_tokens for tr in traces),
            "breakdown": breakdown,
            "decoded_by": _decoded_by(bd.decode_threads),
        }

    async def single(self, n_prompt: int, n_gen: int, seed: int) -> dict:
        """pp (n_gen 1: prompt tokens / time to first token) or tg (tokens / wall time)."""
        prompt = token_prompts(
            1, n_prompt, self.vocab.n_tokens, seed=seed, avoid=self.vocab.eog_ids
        )
        traces, wall = await self._run(prompt, n_gen)
        if n_gen == 1:
            return {"tps": n_prompt / traces[0].ttft_s}
        return {"tps": traces[0].n_tokens / wall}


class RawSide:
    """Bare llama_decode from this process's main thread, as llama-batched-bench."""

    def __init__(self, shape: Shape) -> None:
        from ferrousforge.inference.backends.llama_cpp.context import LlamaContext
        from ferrousforge.inference.backends.llama_cpp.library import load_library
        from ferrousforge.inference.backends.llama_cpp.model import LlamaModel

        config = shape.backend_config()
        lib = load_library(config.library_path)
        self.model = LlamaModel(lib, Path(shape.model), config, shape.accelerator())
        try:
            self.ctx = LlamaContext(lib, self.model, config)
        except BaseException:
            self.model.close()
            raise
        self.vocab = self.model.vocab
        self.raw = RawDecoder(self.ctx)

    async def close(self) -> None:
        self.raw.close()
        self.ctx.close()
        self.model.close()

    async def warm_up(self) -> dict:
        self.raw.run(token_prompts(1, 8, self.vocab.n_tokens, seed=99), 4)
        return {}

    async def batched(self, n_seqs: int, prompt_tokens: int, gen_tokens: int, seed: int) -> dict:
        prompts = token_prompts(
            n_seqs, prompt_tokens, self.vocab.n_tokens, seed=seed, avoid=self.vocab.eog_ids
        )
        run = self.raw.run(prompts, gen_tokens)
        gen_steps = max(1, gen_tokens - 1)
        step = 1000 * run.decode_s / gen_steps
        decode = 1000 * run.decode_only_s / gen_steps
        sample = 1000 * run.sample_s / gen_steps
        return {
            "tg_tps": run.decode_tokens / run.decode_s if run.decode_s else float("nan"),
            "e2e_tps": run.generated / run.total_s,
            "ttft_p50_s": median(run.ttft_s),
            "mean_batch": float(n_seqs),
            "complete": all(len(o) == gen_tokens for o in run.outputs),
            "decoded_by": _decoded_by(self.raw.decode_threads),
            "breakdown": {
                "raw_step_ms": step,
                "raw_decode_ms": decode,
                "raw_sample_ms": sample,
                "raw_python_ms": step - decode - sample,
            },
        }

    async def single(self, n_prompt: int, n_gen: int, seed: int) -> dict:
        prompt = token_prompts(
            1, n_prompt, self.vocab.n_tokens, seed=seed, avoid=self.vocab.eog_ids
        )
        run = self.raw.run(prompt, n_gen)
        return {"tps": n_prompt / run.prefill_s if n_gen == 1 else n_gen / run.total_s}


def _decoded_by(threads: set[str]) -> str:
    """Where llama_decode ran: this process and the threads' names."""
    return f"pid {os.getpid()}, thread {', '.join(sorted(threads)) or '?'}"


def _protocol_channel() -> TextIO:
    """The original stdout for answers; fd 1 then points at stderr, so that whatever C
    code prints cannot corrupt the protocol."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return channel


def _error(e: BaseException) -> dict:
    return {"ok": False, "error": str(e), "type": type(e).__name__}


async def serve(side_name: str, inp: TextIO, out: TextIO) -> None:
    """Load, answer "ready", then run commands until "quit" or end of input."""

    def answer(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    line = await asyncio.to_thread(inp.readline)
    try:
        shape = Shape(**json.loads(line))
        side = await EngineSide.open(shape) if side_name == "engine" else RawSide(shape)
    except (FerrousForgeError, ValueError, TypeError, OSError) as e:
        answer(_error(e))
        return
    answer({"ok": True, "pid": os.getpid()})
    try:
        while line := await asyncio.to_thread(inp.readline):
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "quit":
                break
            try:
                answer({"ok": True, **await getattr(side, op)(**cmd)})
            except FerrousForgeError as e:
                answer(_error(e))
    finally:
        await side.close()
        answer({"ok": True, "closed": True})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in SIDES:
        print(f"usage: python -m ferrousforge.bench.worker {'|'.join(SIDES)}", file=sys.stderr)
        return 2
    out = _protocol_channel()
    try:
        asyncio.run(serve(argv[0], sys.stdin, out))
    except Exception as e:  # an unexpected failure: the parent shows it, not a hang
        traceback.print_exc()
        out.write(json.dumps(_error(e)) + "\n")
        out.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
