"""StepBreakdown: where an engine step's time goes (llama_decode, sampling, Python).

Wraps, for the duration of a ``with`` block, the engine's ``step``, its
context's ``decode`` and SamplerChain.sample with timers. Bench-only: the
wrappers cost about a microsecond per call, and nothing in the engine changes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ferrousforge.bench.stats import percentile
from ferrousforge.engine.engine import Engine
from ferrousforge.inference.backends.llama_cpp.sampler import SamplerChain


@dataclass(slots=True)
class StepTimes:
    """Totals over the steps that decoded something; *_ms are means per such step."""

    steps: int = 0
    step_s: float = 0.0
    decode_s: float = 0.0
    sample_s: float = 0.0
    python_each_s: list[float] = field(default_factory=list)  # per step: not decode or sample

    def per_step_ms(self) -> dict[str, float]:
        n = self.steps or 1
        other = self.step_s - self.decode_s - self.sample_s
        return {
            "step_ms": 1000 * self.step_s / n,
            "decode_ms": 1000 * self.decode_s / n,
            "sample_ms": 1000 * self.sample_s / n,
            "python_ms": 1000 * other / n,
            "python_p50_ms": 1000 * percentile(self.python_each_s, 50),
            "python_max_ms": 1000 * max(self.python_each_s, default=float("nan")),
        }


class StepBreakdown:
    """Times one engine's steps while active. Use from the thread that owns the bench."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.times = StepTimes()  # every step that decoded something
        self.gen_times = StepTimes()  # steps of one token per sequence: comparable to raw
        self._saved_sample = None
        self._in_step = False
        self.decode_threads: set[str] = set()  # names of the threads that called llama_decode

    def __enter__(self) -> StepBreakdown:
        t, g = self.times, self.gen_times
        n_slots = self.engine.runner.n_slots
        engine, ctx = self.engine, self.engine.runner.ctx  # type: ignore[attr-defined]
        step, decode = engine.step, ctx.decode
        sample = self._saved_sample = SamplerChain.sample

        cur = StepTimes()  # the step in progress; added to the totals when it ends
        gen_only = [False]

        def timed_step() -> None:
            self._in_step = True
            t0 = time.perf_counter()
            try:
                step()
            finally:
                if cur.decode_s:  # idle steps (nothing scheduled) are not steps
                    dt = time.perf_counter() - t0
                    for acc in (t, g) if gen_only[0] else (t,):
                        acc.steps += 1
                        acc.step_s += dt
                        acc.python_each_s.append(dt - cur.decode_s - cur.sample_s)
                        acc.decode_s += cur.decode_s
                        acc.sample_s += cur.sample_s
                cur.decode_s = cur.sample_s = 0.0
                self._in_step = False

        def timed_decode(batch) -> int:
            gen_only[0] = batch.n_tokens <= n_slots  # no prompt chunk in this step
            self.decode_threads.add(threading.current_thread().name)
            t0 = time.perf_counter()
            try:
                return decode(batch)
            finally:
                cur.decode_s += time.perf_counter() - t0

        def timed_sample(chain: SamplerChain, ctx_ptr, row: int, banned=None) -> int | None:
            t0 = time.perf_counter()
            try:
                return sample(chain, ctx_ptr, row, banned)
            finally:
                cur.sample_s += time.perf_counter() - t0

        engine.step = timed_step  # type: ignore[method-assign]
        ctx.decode = timed_decode
        SamplerChain.sample = timed_sample  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        # The last step may still be returning after its outputs reached the caller.
        deadline = time.monotonic() + 5.0
        while self._in_step and time.monotonic() < deadline:
            time.sleep(0.001)
        del self.engine.step  # back to the class's method
        del self.engine.runner.ctx.decode  # type: ignore[attr-defined]
        SamplerChain.sample = self._saved_sample  # type: ignore[method-assign]
