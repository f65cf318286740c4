"""llama.cpp's own benchmarks as peers of `bench engine`: llama-bench and llama-batched-bench.

Built by bench/build_peers.sh into .cache/llama-tools/bin from the llama.cpp our library
comes from. Here: where they are, their command lines at the engine bench's shapes, and
parsers for what they print (llama-bench's ``-o json``, batched-bench's markdown table).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ferrousforge.errors import FerrousForgeError

LLAMA_BENCH = "llama-bench"
BATCHED_BENCH = "llama-batched-bench"


class PeerError(FerrousForgeError):
    """A llama.cpp tool failed or printed nothing we can read."""


def default_tools_dir() -> Path:
    """Where bench/build_peers.sh puts the tools: the checkout's .cache/llama-tools/bin
    (or the current directory's, when the package is not run from a checkout)."""
    checkout = Path(__file__).resolve().parents[3] / ".cache" / "llama-tools" / "bin"
    here = Path.cwd() / ".cache" / "llama-tools" / "bin"
    return checkout if checkout.is_dir() or not here.is_dir() else here


@dataclass(slots=True)
class Peers:
    """The tools found in one directory; ``missing`` says which are not there."""

    tools: Path
    llama_bench: Path | None = None
    batched_bench: Path | None = None
    missing: list[str] = field(default_factory=list)

    @classmethod
    def find(cls, tools: Path) -> Peers:
        found = {}
        missing = []
        for name in (LLAMA_BENCH, BATCHED_BENCH):
            exe = tools / name
            if exe.is_file() and os.access(exe, os.X_OK):
                found[name] = exe
            else:
                missing.append(name)
        return cls(tools, found.get(LLAMA_BENCH), found.get(BATCHED_BENCH), missing)

    def note(self) -> str:
        """One line for the report when a tool is missing ('' when both are there)."""
        if not self.missing:
            return ""
        return (
            f"{' and '.join(self.missing)} not found in {self.tools}: skipped "
            "(bench/build_peers.sh builds them; --llama-tools DIR points elsewhere)"
        )


def gpu_layers_arg(gpu: bool, n_gpu_layers: int) -> list[str]:
    """``-ngl``: 0 on the CPU (as the engine bench without --gpu), else the engine's count."""
    if not gpu:
        return ["-ngl", "0"]
    return ["-ngl", str(n_gpu_layers if n_gpu_layers >= 0 else 999)]


def llama_bench_cmd(
    exe: Path,
    model: Path,
    *,
    threads: int,
    pp: int,
    tg: int,
    batch: int,
    repetitions: int = 1,
    gpu: bool = False,
    n_gpu_layers: int = -1,
) -> list[str]:
    """llama-bench pp<pp> and tg<tg> (0 skips one), JSON on stdout. Same batch and ubatch as
    the engine bench's contexts; flash attention left at its default, auto, as ours."""
    return [
        str(exe),
        "-m",
        str(model),
        "-p",
        str(pp),
        "-n",
        str(tg),
        "-t",
        str(threads),
        "-b",
        str(batch),
        "-ub",
        str(batch),
        *gpu_layers_arg(gpu, n_gpu_layers),
        "-r",
        str(repetitions),
        "-o",
        "json",
    ]


def batched_bench_cmd(
    exe: Path,
    model: Path,
    *,
    threads: int,
    n_seqs: int,
    prompt_tokens: int,
    gen_tokens: int,
    batch: int,
    gpu: bool = False,
    n_gpu_layers: int = -1,
) -> list[str]:
    """llama-batched-bench at one level with the engine bench's context for that level.

    ``-no-kvu``: one KV stream per sequence, the engine's default (``-kvu`` would pool all
    cells in one unified buffer, a different attention layout). batched-bench sets
    n_seq_max to the largest -npl, and the cells are split evenly between the streams, so
    ``-c n_seqs x (P + G)`` with ``-npl n_seqs`` is exactly the engine's context."""
    return [
        str(exe),
        "-m",
        str(model),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-c",
        str(n_seqs * (prompt_tokens + gen_tokens)),
        "-b",
        str(batch),
        "-ub",
        str(batch),
        "-npp",
        str(prompt_tokens),
        "-ntg",
        str(gen_tokens),
        "-npl",
        str(n_seqs),
        "-no-kvu",
        *gpu_layers_arg(gpu, n_gpu_layers),
    ]


def test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    """llama-bench's name for a test: pp512, tg128, pp512+tg128, with @ d<depth>."""
    parts = ([f"pp{n_prompt}"] if n_prompt else []) + ([f"tg{n_gen}"] if n_gen else [])
    return "+".join(parts) + (f" @ d{n_depth}" if n_depth else "")


def parse_llama_bench_json(text: str) -> dict[str, float]:
    """llama-bench ``-o json`` (a list) or ``-o jsonl`` (one object a line): tokens/s per test
    name (``avg_ts``; the mean of ``samples_ts`` when that is missing)."""
    text = text.strip()
    try:
        rows = (
            json.loads(text)
            if text.startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
        )
    except json.JSONDecodeError as e:
        raise PeerError(f"llama-bench printed no JSON we can read: {e}") from None
    out: dict[str, float] = {}
    for row in rows:
        name = test_name(
            int(row.get("n_prompt", 0)), int(row.get("n_gen", 0)), int(row.get("n_depth", 0))
        )
        samples = row.get("samples_ts") or []
        ts = row.get("avg_ts", sum(samples) / len(samples) if samples else float("nan"))
        out[name] = float(ts)
    if not out:
        raise PeerError("llama-bench reported no test")
    return out


@dataclass(slots=True)
class BatchedRow:
    """One row of llama-batched-bench's table (times in s, speeds in tokens/s)."""

    pp: int
    tg: int
    b: int
    n_kv: int
    t_pp: float
    s_pp: float
    t_tg: float
    s_tg: float
    t: float
    s: float


_ROW = re.compile(r"^\|\s*\d")
_JSONL_KEYS = ("pp", "tg", "pl", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed")


def parse_batched_bench(text: str) -> list[BatchedRow]:
    """The data rows of batched-bench's markdown table (``|    PP |     TG |    B | ...``),
    or of its ``--output-format jsonl`` lines; header, separator and log lines are skipped."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            d = json.loads(line)
            rows.append(BatchedRow(*(d[k] for k in _JSONL_KEYS)))
        elif _ROW.match(line):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) != 10:
                raise PeerError(f"llama-batched-bench row with {len(cells)} columns: {line!r}")
            ints, floats = cells[:4], cells[4:]
            rows.append(BatchedRow(*(int(x) for x in ints), *(float(x) for x in floats)))
    return rows


def run_tool(cmd: list[str], tools: Path, timeout_s: float = 600.0) -> tuple[str, str]:
    """Run one tool (its shared libraries beside it); its stdout and stderr."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(tools), env.get("LD_LIBRARY_PATH", "")) if p
    )
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerError(f"{Path(cmd[0]).name}: {e}") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise PeerError(f"{Path(cmd[0]).name} exited with {done.returncode}:\n{tail}")
    return done.stdout, done.stderr
