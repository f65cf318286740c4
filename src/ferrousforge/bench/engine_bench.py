"""`ferrousforge bench engine`: the engine against raw llama_decode and llama.cpp's tools.

Three sides at the same shapes, each in a process of its own and decoding from the
thread it would use (see worker.py): the engine (its engine thread, as in
`ferrousforge serve`), the raw decoder (bare llama_decode from a main thread, as
llama-batched-bench), and, when bench/build_peers.sh has built them, llama.cpp's own
llama-batched-bench and llama-bench. Runs alternate between the sides, the order
rotating, so a drift in the machine's speed hits them alike.

- batched decode in the manner of llama-batched-bench: N sequences of P prompt
  tokens generate G tokens each (greedy, EOS ignored, prompts distinct, no
  prefix cache); the decode rate once every sequence is generating (S_TG),
  end-to-end rate and time to first token.
- pp/tg in the manner of llama-bench: one 512-token prompt, and 128 tokens
  generated one at a time from a one-token prompt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ferrousforge.bench.peers import (
    PeerError,
    Peers,
    batched_bench_cmd,
    default_tools_dir,
    llama_bench_cmd,
    parse_batched_bench,
    parse_llama_bench_json,
    run_tool,
)
from ferrousforge.bench.stats import median, ratio
from ferrousforge.bench.subproc import WorkerProcess
from ferrousforge.bench.worker import Shape

log = logging.getLogger(__name__)

NAN = float("nan")


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
    # Speculative decoding in the engine (0: off). Off by default: raw, llama-bench and
    # llama-batched-bench decode one token per sequence per step, and so does the engine.
    draft_max: int = 0
    peers: bool = True  # also run llama-bench / llama-batched-bench when built
    llama_tools: Path | None = None  # where they are (None: bench/build_peers.sh's output)

    def __post_init__(self) -> None:
        if not self.levels or min(self.levels) < 1:
            raise ValueError("levels: must be positive sequence counts")
        if self.prompt_tokens < 1 or self.gen_tokens < 2:
            raise ValueError("prompt_tokens: must be >= 1 and gen_tokens >= 2")
        if self.repeat < 1:
            raise ValueError("repeat: must be >= 1")

    def shape(self, parallel: int, n_ctx: int) -> Shape:
        return Shape(
            model=str(self.model),
            threads=self.threads,
            batch_size=self.batch_size,
            parallel=parallel,
            n_ctx=n_ctx,
            gpu=self.gpu,
            n_gpu_layers=self.n_gpu_layers,
            main_gpu=self.main_gpu,
            draft_max=self.draft_max,
        )


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
    engine_tg_best: float = NAN
    raw_tg_best: float = NAN
    best_ratio: float = NAN
    # llama-batched-bench at the same shape (NaN when not run): S_TG and engine / it.
    peer_tg_tps: float = NAN
    peer_ratio: float = NAN
    peer_tg_best: float = NAN
    peer_best_ratio: float = NAN
    # Where each side's llama_decode ran ("pid 123, thread MainThread"): separate processes.
    decoded_by: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class SingleResult:
    """A llama-bench test (pp512 or tg128): tokens per second."""

    test: str
    engine_tps: float  # median of the runs
    raw_tps: float
    ratio: float
    engine_best: float = NAN  # fastest run of each side
    raw_best: float = NAN
    best_ratio: float = NAN
    peer_tps: float = NAN  # llama-bench's figure for the test (median of its runs)
    peer_ratio: float = NAN  # engine / llama-bench
    peer_best: float = NAN
    peer_best_ratio: float = NAN


@dataclass(slots=True)
class EngineBenchReport:
    config: dict
    levels: list[LevelResult] = field(default_factory=list)
    single: list[SingleResult] = field(default_factory=list)
    started_at: str = ""
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # peers skipped or failed
    peer_commands: list[str] = field(default_factory=list)  # one of each tool, as run

    def to_dict(self) -> dict:
        return asdict(self)


class PeerRunner:
    """llama.cpp's tools at the bench's shapes; a tool that is missing or fails is noted in
    the report and skipped from then on."""

    def __init__(self, cfg: EngineBenchConfig, report: EngineBenchReport) -> None:
        self.cfg, self.report = cfg, report
        self.peers = Peers.find(cfg.llama_tools or default_tools_dir())
        if cfg.peers and (note := self.peers.note()):
            report.notes.append(note)
        if not cfg.peers:
            self.peers.llama_bench = self.peers.batched_bench = None
        self._shown: set[str] = set()

    def _run(self, cmd: list[str]) -> tuple[str, str]:
        name = Path(cmd[0]).name
        if name not in self._shown:
            self._shown.add(name)
            self.report.peer_commands.append(" ".join(cmd))
        return run_tool(cmd, self.peers.tools)

    def batched_tg(self, n_seqs: int) -> float | None:
        """llama-batched-bench's S_TG at ``n_seqs`` sequences; None when not run."""
        exe, c = self.peers.batched_bench, self.cfg
        if exe is None:
            return None
        cmd = batched_bench_cmd(
            exe,
            c.model,
            threads=c.threads,
            n_seqs=n_seqs,
            prompt_tokens=c.prompt_tokens,
            gen_tokens=c.gen_tokens,
            batch=c.batch_size,
            gpu=c.gpu,
            n_gpu_layers=c.n_gpu_layers,
        )
        try:
            out, err = self._run(cmd)  # the table is printed through llama.cpp's log
            rows = [r for r in parse_batched_bench(out + "\n" + err) if r.b == n_seqs]
            if not rows:
                raise PeerError(f"llama-batched-bench printed no row for {n_seqs} sequences")
        except PeerError as e:
            self.report.notes.append(f"llama-batched-bench skipped from now on: {e}")
            self.peers.batched_bench = None
            return None
        return rows[0].s_tg

    def single(self) -> dict[str, float] | None:
        """llama-bench's pp and tg (one repetition); None when not run."""
        exe, c = self.peers.llama_bench, self.cfg
        if exe is None:
            return None
        cmd = llama_bench_cmd(
            exe,
            c.model,
            threads=c.threads,
            pp=c.pp_tokens,
            tg=c.tg_tokens,
            batch=c.batch_size,
            gpu=c.gpu,
            n_gpu_layers=c.n_gpu_layers,
        )
        try:
            return parse_llama_bench_json(self._run(cmd)[0])
        except PeerError as e:
            self.report.notes.append(f"llama-bench skipped from now on: {e}")
            self.peers.llama_bench = None
            return None


def rotation(sides: list[str], run: int) -> list[str]:
    """The order of the sides in run ``run``: rotated by one each run."""
    k = run % len(sides)
    return sides[k:] + sides[:k]


def bench_level(cfg: EngineBenchConfig, n_seqs: int, peers: PeerRunner) -> LevelResult:
    """Batched decode of ``n_seqs`` sequences: engine, raw and batched-bench, same shape."""
    shape = cfg.shape(n_seqs, n_seqs * (cfg.prompt_tokens + cfg.gen_tokens))
    runs = []
    with WorkerProcess("raw", shape) as raw, WorkerProcess("engine", shape) as engine:
        workers = {"raw": raw, "engine": engine}
        for w in workers.values():
            w.ask("warm_up")
        for r in range(cfg.repeat):
            got: dict = {}
            for side in rotation(["raw", "engine", "peer"], r):
                if side == "peer":
                    got[side] = peers.batched_tg(n_seqs)
                else:
                    got[side] = workers[side].ask(
                        "batched",
                        n_seqs=n_seqs,
                        prompt_tokens=cfg.prompt_tokens,
                        gen_tokens=cfg.gen_tokens,
                        seed=cfg.seed + r,
                    )
            runs.append(level_result(n_seqs, got["engine"], got["raw"], got["peer"]))
            log.info("level %d run %d: %s", n_seqs, r, runs[-1])
    return _median_level(runs)


def level_result(n_seqs: int, eng: dict, raw: dict, peer_tg: float | None) -> LevelResult:
    """One run of a level from the two workers' answers and batched-bench's S_TG."""
    breakdown = {**eng["breakdown"], **raw["breakdown"]}
    # The engine does the same C work per step as raw plus its own Python: the ratio that
    # overhead alone implies, robust to the CPU noise that swamps wall-clock ratios.
    breakdown["implied_ratio"] = ratio(
        breakdown["raw_step_ms"],
        breakdown["raw_step_ms"] - breakdown["raw_python_ms"] + breakdown["engine_python_p50_ms"],
    )
    peer = NAN if peer_tg is None else peer_tg
    return LevelResult(
        sequences=n_seqs,
        engine_tg_tps=eng["tg_tps"],
        raw_tg_tps=raw["tg_tps"],
        tg_ratio=ratio(eng["tg_tps"], raw["tg_tps"]),
        engine_e2e_tps=eng["e2e_tps"],
        raw_e2e_tps=raw["e2e_tps"],
        e2e_ratio=ratio(eng["e2e_tps"], raw["e2e_tps"]),
        engine_ttft_p50_s=eng["ttft_p50_s"],
        raw_ttft_p50_s=raw["ttft_p50_s"],
        mean_batch=eng["mean_batch"],
        complete=eng["complete"] and raw["complete"],
        breakdown=breakdown,
        peer_tg_tps=peer,
        peer_ratio=ratio(eng["tg_tps"], peer),
        decoded_by={"engine": eng.get("decoded_by", ""), "raw": raw.get("decoded_by", "")},
    )


def _median_level(runs: list[LevelResult]) -> LevelResult:
    """The run with the median engine/raw decode ratio (keeps each row from one run),
    plus the best-of-runs figures."""
    ordered = sorted(runs, key=lambda r: r.tg_ratio)
    mid = ordered[len(ordered) // 2]
    mid.complete = all(r.complete for r in runs)
    mid.engine_tg_best = max(r.engine_tg_tps for r in runs)
    mid.raw_tg_best = max(r.raw_tg_tps for r in runs)
    mid.best_ratio = ratio(mid.engine_tg_best, mid.raw_tg_best)
    peer = [r.peer_tg_tps for r in runs if r.peer_tg_tps == r.peer_tg_tps]
    if peer:
        mid.peer_tg_best = max(peer)
        mid.peer_best_ratio = ratio(mid.engine_tg_best, mid.peer_tg_best)
    return mid


def bench_single(cfg: EngineBenchConfig, peers: PeerRunner) -> list[SingleResult]:
    """llama-bench's pp<N> and tg<N>: engine, raw and llama-bench, alternating, median."""
    tests = []
    if cfg.pp_tokens:
        tests.append((f"pp{cfg.pp_tokens}", cfg.pp_tokens, 1))
    if cfg.tg_tokens:
        tests.append((f"tg{cfg.tg_tokens}", 1, cfg.tg_tokens))
    shape = cfg.shape(1, max(cfg.pp_tokens + 1, cfg.tg_tokens + 1, 256))
    tps: dict[str, dict[str, list[float]]] = {
        t[0]: {"engine": [], "raw": [], "peer": []} for t in tests
    }
    with WorkerProcess("raw", shape) as raw, WorkerProcess("engine", shape) as engine:
        workers = {"raw": raw, "engine": engine}
        for w in workers.values():
            w.ask("warm_up")
        for r in range(3 * cfg.repeat):
            for side in rotation(["raw", "engine", "peer"], r):
                if side == "peer":
                    for name, value in (peers.single() or {}).items():
                        if name in tps:
                            tps[name]["peer"].append(value)
                    continue
                for name, n_prompt, n_gen in tests:
                    answer = workers[side].ask(
                        "single", n_prompt=n_prompt, n_gen=n_gen, seed=cfg.seed + r
                    )
                    tps[name][side].append(answer["tps"])
    return [single_result(name, sides) for name, sides in tps.items()]


def single_result(name: str, sides: dict[str, list[float]]) -> SingleResult:
    """Medians and bests of each side's runs of one test, with the ratios."""
    e, w, p = (median(sides[k]) if sides[k] else NAN for k in ("engine", "raw", "peer"))
    be, bw, bp = (max(sides[k], default=NAN) for k in ("engine", "raw", "peer"))
    return SingleResult(
        name, e, w, ratio(e, w), be, bw, ratio(be, bw), p, ratio(e, p), bp, ratio(be, bp)
    )


def run_engine_bench(cfg: EngineBenchConfig) -> EngineBenchReport:
    """Every level, then pp/tg. Each side loads the model in its own process per shape."""
    t0 = time.perf_counter()
    cfg_dict = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    report = EngineBenchReport(
        config=cfg_dict, started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    peers = PeerRunner(cfg, report)
    for n in cfg.levels:
        report.levels.append(bench_level(cfg, n, peers))
    if cfg.pp_tokens or cfg.tg_tokens:
        report.single = bench_single(cfg, peers)
    report.wall_s = time.perf_counter() - t0
    return report


def format_report(report: EngineBenchReport) -> str:
    """The report as plain-text tables."""
    c = report.config
    lines = [
        f"batched decode: {c['prompt_tokens']} prompt + {c['gen_tokens']} generated tokens "
        f"per sequence, {c['threads']} threads, greedy, EOS ignored, no prefix cache, "
        f"{'GPU (' + str(c['n_gpu_layers']) + ' layers)' if c.get('gpu') else 'CPU'}; "
        f"engine speculation {f'draft_max {d}' if (d := c.get('draft_max')) else 'off'}; "
        "engine and raw each in its own process; bb: llama-batched-bench S_TG",
        f"{'seqs':>4} {'engine t/s':>10} {'raw t/s':>9} {'ratio':>6} {'bb t/s':>8} {'eng/bb':>6} | "
        f"{'e2e eng':>8} {'e2e raw':>8} {'ratio':>6} | {'ttft eng':>9} {'ttft raw':>9} "
        f"{'batch':>5} ok | best: {'engine':>7} {'raw':>7} {'ratio':>6} {'bb':>7} {'eng/bb':>6}",
    ]
    for r in report.levels:
        lines.append(
            f"{r.sequences:>4} {r.engine_tg_tps:>10.1f} {r.raw_tg_tps:>9.1f} {r.tg_ratio:>6.1%} "
            f"{r.peer_tg_tps:>8.1f} {r.peer_ratio:>6.1%} | "
            f"{r.engine_e2e_tps:>8.1f} {r.raw_e2e_tps:>8.1f} {r.e2e_ratio:>6.1%} | "
            f"{r.engine_ttft_p50_s * 1000:>7.0f}ms {r.raw_ttft_p50_s * 1000:>7.0f}ms "
            f"{r.mean_batch:>5.1f} {'yes' if r.complete else ' NO'} | "
            f"      {r.engine_tg_best:>7.1f} {r.raw_tg_best:>7.1f} {r.best_ratio:>6.1%} "
            f"{r.peer_tg_best:>7.1f} {r.peer_best_ratio:>6.1%}"
        )
    for r in report.levels[:1]:
        where = "; ".join(f"{k}: {v}" for k, v in r.decoded_by.items())
        lines.append(f"llama_decode ran in ({r.sequences} seqs) {where}")
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
                f"{b.get('loop_cpu_ms', NAN):>6.3f} | "
                f"{b['raw_step_ms']:>8.2f} {b['raw_decode_ms']:>7.2f} {b['raw_sample_ms']:>7.3f} "
                f"{b['raw_python_ms']:>7.3f} | {b['implied_ratio']:>6.1%}"
            )
    if report.single:
        lines += [
            "",
            "lb: llama-bench",
            f"{'test':>6} {'engine t/s':>10} {'raw t/s':>9} {'ratio':>6} {'lb t/s':>8} "
            f"{'eng/lb':>6} | best: {'engine':>7} {'raw':>7} {'ratio':>6} {'lb':>7} {'eng/lb':>6}",
        ]
        for s in report.single:
            lines.append(
                f"{s.test:>6} {s.engine_tps:>10.1f} {s.raw_tps:>9.1f} {s.ratio:>6.1%} "
                f"{s.peer_tps:>8.1f} {s.peer_ratio:>6.1%} | "
                f"      {s.engine_best:>7.1f} {s.raw_best:>7.1f} {s.best_ratio:>6.1%} "
                f"{s.peer_best:>7.1f} {s.peer_best_ratio:>6.1%}"
            )
    if report.peer_commands:
        lines += ["", "peers run as:", *(f"  {cmd}" for cmd in report.peer_commands)]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
