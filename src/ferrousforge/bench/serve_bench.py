"""`ferrousforge bench serve`: load-test OpenAI-compatible servers with streaming completions.

Each request streams POST /v1/completions with a prompt of the chosen workload
(workloads.py: ``fresh``, ``repetitive`` or ``returning``), ``max_tokens`` =
``min_tokens`` and ``ignore_eos`` so output length is fixed (servers that ignore one of
the two still honour the other). ``concurrency`` workers share a
queue of requests; one async client with no per-token work beyond parsing, so the
client costs the server little CPU on a small machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import asdict, dataclass, field

import httpx

from ferrousforge.bench.sse import SSEParser, StreamTally
from ferrousforge.bench.stats import percentile, ratio
from ferrousforge.bench.workloads import WORKLOADS, workload_prompt

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServeBenchConfig:
    """What to send. ``urls`` entries are ``URL`` or ``NAME=URL``."""

    urls: list[str]
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    requests: int = 0  # per level; 0: max(4, 2 x concurrency)
    max_tokens: int = 128
    prompt_tokens: int = 128
    model: str | None = None
    timeout_s: float = 300.0
    warmup: bool = True
    ready_s: float = 120.0  # how long warm-up retries while a server is still loading
    extra_body: dict = field(default_factory=dict)  # merged into every request body
    rounds: int = 1  # each level this many times per server, interleaved between servers
    workload: str = "fresh"  # fresh | repetitive | returning (see workloads.py)

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload: expected one of {', '.join(WORKLOADS)}")
        if not self.urls:
            raise ValueError("urls: give at least one server")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("concurrency: must be positive integers")
        if self.rounds < 1:
            raise ValueError("rounds: must be >= 1")
        if self.max_tokens < 1 or self.requests < 0:
            raise ValueError("max_tokens: must be >= 1 and requests >= 0")

    def n_requests(self, concurrency: int) -> int:
        return self.requests or max(4, 2 * concurrency)


@dataclass(slots=True)
class RequestRecord:
    ok: bool
    n_tokens: int = 0
    counted_by: str = "chunks"
    ttft_s: float = float("nan")
    itl_s: list[float] = field(default_factory=list)
    latency_s: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class LevelStats:
    """One server at one concurrency level."""

    concurrency: int
    requests: int
    errors: int
    complete: bool  # every request succeeded and got max_tokens tokens
    incomplete: int  # successful requests with fewer or more tokens than asked
    tokens: int
    wall_s: float
    tokens_per_s: float
    requests_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    itl_p50_s: float
    itl_p95_s: float
    counted_by: str
    error_samples: list[str] = field(default_factory=list)
    # FerrousForge only (from its /metrics): decode steps during the level and the mean
    # time inside one (llama_decode and sampling), to compare with `bench engine`'s.
    engine_steps: int = 0
    engine_step_ms: float = float("nan")
    # Workload "returning": the second round (the same prompts again); the fields above
    # are the first round's.
    returning: LevelStats | None = None

    @property
    def all_complete(self) -> bool:
        """Every request of both rounds succeeded with max_tokens tokens."""
        return self.complete and (self.returning is None or self.returning.complete)


@dataclass(slots=True)
class ServerResult:
    name: str
    url: str
    model: str
    levels: list[LevelStats] = field(default_factory=list)


@dataclass(slots=True)
class ServeReport:
    config: dict
    servers: list[ServerResult] = field(default_factory=list)
    started_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def split_url(entry: str) -> tuple[str, str]:
    """``NAME=URL`` or ``URL`` -> (name, base URL without a trailing / or /v1)."""
    name, sep, url = entry.partition("=")
    if not sep or "://" in name:
        name, url = "", entry
    url = url.rstrip("/").removesuffix("/v1")
    return name or url.split("://", 1)[-1], url


async def discover_model(client: httpx.AsyncClient, url: str) -> str:
    """The first model the server lists, or "default" if it lists none."""
    try:
        r = await client.get(f"{url}/v1/models", timeout=10)
        r.raise_for_status()
        data = r.json().get("data") or []
        return data[0]["id"] if data else "default"
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
        log.warning("%s: could not list models (%s); sending model=default", url, e)
        return "default"


def request_body(cfg: ServeBenchConfig, model: str, index: int) -> dict:
    body = {
        "model": model,
        "prompt": workload_prompt(cfg.workload, index, cfg.prompt_tokens),
        "max_tokens": cfg.max_tokens,
        "min_tokens": cfg.max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(cfg.extra_body)
    return body


async def one_request(
    client: httpx.AsyncClient, url: str, body: dict, timeout_s: float
) -> RequestRecord:
    """Stream one completion; never raises (failures become the record's error)."""
    tally, parser = StreamTally(), SSEParser()
    t0 = time.perf_counter()
    try:
        async with client.stream(
            "POST", f"{url}/v1/completions", json=body, timeout=timeout_s
        ) as r:
            if r.status_code != 200:
                detail = (await r.aread()).decode("utf-8", errors="replace")[:200]
                return RequestRecord(
                    False,
                    error=f"HTTP {r.status_code}: {detail}",
                    latency_s=time.perf_counter() - t0,
                )
            async for chunk in r.aiter_raw():
                now = time.perf_counter()
                for payload in parser.feed(chunk):
                    tally.add(payload, now)
            for payload in parser.close():
                tally.add(payload, time.perf_counter())
    except (httpx.HTTPError, OSError) as e:
        return RequestRecord(
            False, error=f"{type(e).__name__}: {e}", latency_s=time.perf_counter() - t0
        )
    return record_from_tally(tally, t0, time.perf_counter())


def record_from_tally(tally: StreamTally, t0: float, t_end: float) -> RequestRecord:
    times = tally.content_times
    rec = RequestRecord(
        ok=tally.error is None,
        n_tokens=tally.n_tokens,
        counted_by=tally.counted_by,
        latency_s=t_end - t0,
        error=tally.error,
    )
    if times:
        rec.ttft_s = times[0] - t0
        rec.itl_s = [b - a for a, b in itertools.pairwise(times)]
    elif rec.ok:
        rec.ok, rec.error = False, "the stream carried no text"
    return rec


_STEP_SERIES = ("ferrousforge_step_seconds_total", "ferrousforge_decode_steps_total")


async def engine_counters(client: httpx.AsyncClient, url: str) -> tuple[float, int] | None:
    """FerrousForge's step seconds and decode steps, summed over its models (None: the
    server does not expose them)."""
    try:
        r = await client.get(f"{url}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    sums = dict.fromkeys(_STEP_SERIES, 0.0)
    seen = False
    for line in r.text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
            seen = True
    return (sums[_STEP_SERIES[0]], int(sums[_STEP_SERIES[1]])) if seen else None


async def run_level(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    cfg: ServeBenchConfig,
    concurrency: int,
    first_index: int,
) -> tuple[list[RequestRecord], float]:
    """``n_requests`` requests through ``concurrency`` workers that share one queue.

    Returns the records and the wall time of the level."""
    n = cfg.n_requests(concurrency)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(first_index + i)
    records: list[RequestRecord] = []

    async def worker() -> None:
        while not queue.empty():
            body = request_body(cfg, model, queue.get_nowait())
            records.append(await one_request(client, url, body, cfg.timeout_s))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records, time.perf_counter() - t0


def summarize(
    concurrency: int, records: list[RequestRecord], wall_s: float, max_tokens: int
) -> LevelStats:
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s for r in ok]
    itl = [x for r in ok for x in r.itl_s]
    tokens = sum(r.n_tokens for r in ok)
    incomplete = sum(1 for r in ok if r.n_tokens != max_tokens)
    errors = [r.error or "" for r in records if not r.ok]
    return LevelStats(
        concurrency=concurrency,
        requests=len(records),
        errors=len(errors),
        complete=not errors and incomplete == 0,
        incomplete=incomplete,
        tokens=tokens,
        wall_s=wall_s,
        tokens_per_s=tokens / wall_s if wall_s else 0.0,
        requests_per_s=len(ok) / wall_s if wall_s else 0.0,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p95_s=percentile(ttft, 95),
        itl_p50_s=percentile(itl, 50),
        itl_p95_s=percentile(itl, 95),
        counted_by="usage" if ok and all(r.counted_by == "usage" for r in ok) else "chunks",
        error_samples=sorted(set(errors))[:3],
    )


async def warm_up(client: httpx.AsyncClient, url: str, body: dict, ready_s: float) -> None:
    """Wait until a short completion succeeds: some servers list models before they load
    them, and first requests pay for lazy allocations. Keeps both out of the figures."""
    body = body | {"max_tokens": 4, "min_tokens": 4}
    deadline = time.monotonic() + ready_s
    while True:
        rec = await one_request(client, url, body, timeout_s=max(1.0, ready_s))
        if rec.ok or time.monotonic() > deadline:
            if not rec.ok:
                log.warning("%s: warm-up request failed (%s); measuring anyway", url, rec.error)
            return
        await asyncio.sleep(0.5)


@dataclass(slots=True)
class _Server:
    name: str
    url: str
    client: httpx.AsyncClient
    model: str = ""


async def run_serve_bench(cfg: ServeBenchConfig) -> ServeReport:
    """Every level of every server, one at a time (two at once would share the CPU).

    Levels are interleaved: for each round and level, each server in turn, the
    order rotating between rounds, so a drift in the machine's speed hits every
    server alike. A level's figures pool its requests over the rounds.
    """
    cfg_dict = asdict(cfg)
    report = ServeReport(cfg_dict, started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # A fresh connection per request: llama-server (cpp-httplib) closes a keep-alive
    # connection after 5 requests, and a POST on a connection it just closed fails.
    limits = httpx.Limits(max_connections=max(cfg.concurrency) + 4, max_keepalive_connections=0)
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for s, entry in enumerate(cfg.urls):
            name, url = split_url(entry)
            client = await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, timeout=cfg.timeout_s)
            )
            srv = _Server(name, url, client)
            srv.model = cfg.model or await discover_model(client, url)
            if cfg.warmup:
                body = request_body(cfg, srv.model, 1_000_000 * (s + 1) - 1)
                await warm_up(client, url, body, cfg.ready_s)
            servers.append(srv)
        # (server, level, pass) -> records and wall time; pass 1: returning's second round
        pooled: dict[tuple[int, int, int], tuple[list[RequestRecord], float]] = {}
        passes = 2 if cfg.workload == "returning" else 1
        steps_used: dict[tuple[int, int, int], tuple[float, int]] = {}
        for r in range(cfg.rounds):
            order = [(i + r) % len(servers) for i in range(len(servers))]
            for k, c in enumerate(cfg.concurrency):
                for s in order:
                    srv = servers[s]
                    first = 1_000_000 * (s + 1) + 100_000 * r + 10_000 * k
                    for p in range(passes):  # the same indices: the same prompts again
                        before = await engine_counters(srv.client, srv.url)
                        recs, wall = await run_level(srv.client, srv.url, srv.model, cfg, c, first)
                        after = await engine_counters(srv.client, srv.url)
                        if before is not None and after is not None:
                            secs, steps = steps_used.get((s, k, p), (0.0, 0))
                            steps_used[(s, k, p)] = (
                                secs + after[0] - before[0],
                                steps + after[1] - before[1],
                            )
                        log.info(
                            "%s c=%d round %d pass %d: %d requests in %.2fs",
                            *(srv.name, c, r, p, len(recs), wall),
                        )
                        prev, prev_wall = pooled.get((s, k, p), ([], 0.0))
                        pooled[(s, k, p)] = (prev + recs, prev_wall + wall)
        for s, srv in enumerate(servers):
            result = ServerResult(srv.name, srv.url, srv.model)
            for k, c in enumerate(cfg.concurrency):
                level = summarize(c, *pooled[(s, k, 0)], cfg.max_tokens)
                _set_steps(level, steps_used.get((s, k, 0)))
                if passes == 2:
                    level.returning = summarize(c, *pooled[(s, k, 1)], cfg.max_tokens)
                    _set_steps(level.returning, steps_used.get((s, k, 1)))
                result.levels.append(level)
            report.servers.append(result)
    return report


def _set_steps(level: LevelStats, used: tuple[float, int] | None) -> None:
    if used is not None and used[1] > 0:
        level.engine_steps = used[1]
        level.engine_step_ms = 1000 * used[0] / used[1]


def format_serve(report: ServeReport) -> str:
    """Plain-text table: one row per server and concurrency level (and per round of the
    returning workload: ``first`` and ``again``)."""
    head = (
        f"{'server':<18} {'conc':>4} {'reqs':>4} {'tok/s':>7} {'req/s':>6} "
        f"{'ttft p50':>9} {'ttft p95':>9} {'itl p50':>8} {'itl p95':>8} {'step':>7} {'err':>3} "
        "complete"
    )
    returning = report.config.get("workload") == "returning"
    lines = [f"workload: {report.config.get('workload', 'fresh')}", head]
    for srv in report.servers:
        for lv in srv.levels:
            rows = [("first", lv), ("again", lv.returning)] if lv.returning else [("", lv)]
            for label, st in rows:
                if st is None:
                    continue
                name = f"{srv.name[:12]} {label}" if returning else srv.name
                ok = "yes" if st.complete else f"NO ({st.incomplete} short)"
                lines.append(
                    f"{name[:18]:<18} {st.concurrency:>4} {st.requests:>4} "
                    f"{st.tokens_per_s:>7.1f} {st.requests_per_s:>6.2f} "
                    f"{_ms(st.ttft_p50_s):>9} {_ms(st.ttft_p95_s):>9} {_ms(st.itl_p50_s):>8} "
                    f"{_ms(st.itl_p95_s):>8} {_step(st):>7} {st.errors:>3} {ok}"
                )
                lines += [f"    error: {e}" for e in st.error_samples]
    return "\n".join(lines)


def format_ratios(report: ServeReport, baseline: str) -> str:
    """Every server side by side with ``baseline`` (a server's name), level by level.

    ``x`` columns are server / baseline: above 1 is better for tok/s, below 1 is better
    for TTFT. For the returning workload, ``again`` is the second round's TTFT."""
    base = next((s for s in report.servers if s.name == baseline), None)
    if base is None:
        return f"no server named {baseline!r}: no ratios"
    returning = report.config.get("workload") == "returning"
    head = (
        f"{'server':<18} {'conc':>4} {'tok/s':>7} {'x':>6} {'ttft p50':>9} {'x':>6} "
        f"{'ttft p95':>9} {'x':>6}"
    )
    if returning:
        head += f" | {'again p50':>9} {'x':>6} {'again p95':>9} {'x':>6}"
    lines = [f"workload: {report.config.get('workload', 'fresh')}; x: server / {baseline}", head]
    for srv in report.servers:
        for lv, b in zip(srv.levels, base.levels, strict=True):
            line = (
                f"{srv.name[:18]:<18} {lv.concurrency:>4} {lv.tokens_per_s:>7.1f} "
                f"{_x(lv.tokens_per_s, b.tokens_per_s)} {_ms(lv.ttft_p50_s):>9} "
                f"{_x(lv.ttft_p50_s, b.ttft_p50_s)} {_ms(lv.ttft_p95_s):>9} "
                f"{_x(lv.ttft_p95_s, b.ttft_p95_s)}"
            )
            if returning and lv.returning and b.returning:
                a, ab = lv.returning, b.returning
                line += (
                    f" | {_ms(a.ttft_p50_s):>9} {_x(a.ttft_p50_s, ab.ttft_p50_s)} "
                    f"{_ms(a.ttft_p95_s):>9} {_x(a.ttft_p95_s, ab.ttft_p95_s)}"
                )
            lines.append(line)
    return "\n".join(lines)


def _step(st: LevelStats) -> str:
    """FerrousForge's mean ms inside one decode step during the level ("-": not exposed)."""
    ms = st.engine_step_ms
    return "-" if ms != ms else f"{ms:.2f}ms"


def _x(a: float, b: float) -> str:
    r = ratio(a, b)
    return f"{'-':>6}" if r != r else f"{r:>5.2f}x"


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.0f}ms"
