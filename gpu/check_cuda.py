"""One-shot check that FerrousForge runs a model on CUDA through a dynamic libllama.

    FERROUSFORGE_LLAMA_LIB=/tmp/build/bin python gpu/check_cuda.py [--model M.gguf]
    .venv/bin/python gpu/check_cuda.py --cpu      # the same checks on the bundled CPU library

Checks: the library loads in dynamic mode and supports GPU offload; the model
loads with AcceleratorType.Cuda(0) and llama.cpp's log shows every layer
offloaded to CUDA; 8 greedy prompts decoded together (infer_batch) each equal
the same prompt decoded alone; a stream equals its non-streamed twin; a chat
prompt renders through the GGUF's template; single-stream and 8-stream tokens/s;
unload. Prints a PASS/FAIL table; with $OUT (or --out) set, writes
check_cuda.log (every llama.cpp log line included) and check_cuda.json there.
Exit status 0 only if every check passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from ferrousforge.api.request import InferenceOptions  # noqa: E402
from ferrousforge.inference.backend import (  # noqa: E402
    AcceleratorType,
    BackendConfig,
    BackendInput,
)
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend  # noqa: E402
from ferrousforge.inference.backends.llama_cpp import library as ff_library  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a land far away,",
    "def fibonacci(n):",
    "List three colours:",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "In 1969, the first humans landed on",
    "Water boils at a temperature of",
    "A haiku about GPUs:\n",
]
STEP_TIMEOUT_S = 180.0

results: list[dict] = []
log = logging.getLogger("check_cuda")


def record(name: str, ok: bool, detail: str = "", warn: bool = False) -> bool:
    results.append({"check": name, "ok": bool(ok), "warn": warn, "detail": detail})
    log.info("%s %s: %s", ("WARN" if warn else "PASS") if ok else "FAIL", name, detail)
    return ok


def margins(out) -> list[float]:
    """Top-1 minus top-2 log-probability at each generated token (needs logprobs>=2)."""
    res = []
    for lp in out.logprobs or []:
        top = sorted((t[2] for t in lp.top), reverse=True)
        res.append(round(top[0] - top[1], 4) if len(top) >= 2 else float("inf"))
    return res


class LlamaLines(logging.Handler):
    """Every llama.cpp log line (the library's own ring buffer keeps only 400)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def setup_logging(out_dir: Path | None) -> LlamaLines:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO)
    console.setFormatter(fmt)
    root.addHandler(console)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(out_dir / "check_cuda.log", mode="w")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    llama_lines = LlamaLines()
    ll = logging.getLogger("ferrousforge.llama_cpp")
    ll.setLevel(logging.DEBUG)
    ll.addHandler(llama_lines)
    return llama_lines


def top_ids(out, k: int) -> set[int]:
    lp = (out.logprobs or [])[k] if k < len(out.logprobs or []) else None
    return {t[0] for t in lp.top} if lp is not None else set()


def first_divergence(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


async def step(coro, timeout: float = STEP_TIMEOUT_S):
    return await asyncio.wait_for(coro, timeout)


async def run(args, llama_lines: LlamaLines) -> None:
    cpu = args.cpu
    if cpu:
        os.environ.pop(ff_library.ENV_VAR, None)
    lib_req = None if cpu else (args.lib or os.environ.get(ff_library.ENV_VAR))

    # ---- 1. library -------------------------------------------------------------
    t0 = time.perf_counter()
    lib = ff_library.load_library(lib_req)
    info = ff_library.library_info()
    sysinfo = lib.llama_print_system_info().decode(errors="replace")
    gpu_offload = bool(lib.llama_supports_gpu_offload())
    print(f"\nlibrary: mode={info.mode} path={info.path} ({time.perf_counter() - t0:.2f}s)")
    print(f"llama_print_system_info: {sysinfo}")
    print(f"llama_supports_gpu_offload: {gpu_offload}\n")
    if cpu:
        record("library", info.mode == "bundled", f"{info.mode} {info.path}")
    else:
        record("library dynamic", info.mode == "dynamic", f"{info.mode} {info.path}")
        record("gpu offload supported", gpu_offload, f"llama_supports_gpu_offload={gpu_offload}")
        record("system info names CUDA", "CUDA" in sysinfo, sysinfo.strip()[:200])

    # ---- 2. load -----------------------------------------------------------------
    backend = LlamaCppBackend()
    config = BackendConfig(num_threads=args.threads, context_size=4096, max_parallel=8,
                           flash_attention=args.flash_attention)
    acc = AcceleratorType.Cpu() if cpu else AcceleratorType.Cuda(device_id=0)
    n0 = len(llama_lines.lines)
    t0 = time.perf_counter()
    handle = await step(backend.load_model(args.model, config, acc))
    load_s = time.perf_counter() - t0
    lm = backend.loaded(handle)
    load_lines = llama_lines.lines[n0:]
    record("load", True, f"{Path(args.model).name} in {load_s:.2f}s: {lm.model.description}, "
           f"n_ctx={lm.n_ctx}, n_seq_max={lm.context.n_seq_max}, n_ctx_seq={lm.context.n_ctx_seq}")
    interesting = re.compile(r"offload|CUDA|GPU|flash_attn|Flash Attention|buffer size|"
                             r"splits|assigned to device|ggml_cuda", re.IGNORECASE)
    for line in llama_lines.lines:
        if interesting.search(line) and "llama_graph_n_input_tensors" not in line:
            print("  llama.cpp:", line)
    fa = [ln for ln in load_lines if "Flash Attention" in ln]
    print("  flash attention:", fa[-1].strip() if fa else "(no resolve line)")
    offl = [re.search(r"offloaded (\d+)/(\d+) layers to GPU", ln) for ln in load_lines]
    offl = [m for m in offl if m]
    if cpu:
        n_off = int(offl[-1].group(1)) if offl else 0
        record("no layers offloaded (cpu)", n_off == 0,
               offl[-1].group(0) if offl else "no 'offloaded' line (as expected on CPU)")
    else:
        if offl:
            n, m = int(offl[-1].group(1)), int(offl[-1].group(2))
            record("all layers offloaded to GPU", n == m and n > 0, offl[-1].group(0))
        else:
            record("all layers offloaded to GPU", False,
                   "no 'offloaded N/M layers to GPU' log line")
        on_cuda = [ln for ln in load_lines
                   if re.search(r"layer +\d+ assigned to device CUDA0", ln)]
        record("layers assigned to CUDA0", len(on_cuda) > 0,
               f"{len(on_cuda)} 'assigned to device CUDA0' lines")
        cuda_buf = [ln for ln in load_lines if re.search(r"CUDA0.*buffer size", ln)]
        record("CUDA0 buffers (weights/KV/compute)", len(cuda_buf) > 0,
               "; ".join(s.strip() for s in cuda_buf[:4]) or "no 'CUDA0 ... buffer size' line")

    # ---- 3. throughput (first, on a fresh engine) -------------------------------------
    n_tok = args.bench_tokens
    bench = InferenceOptions(temperature=0.0, max_tokens=n_tok, ignore_eos=True)
    await step(backend.infer(handle, BackendInput.Text("warm up"), bench))
    t0 = time.perf_counter()
    one = await step(backend.infer(handle, BackendInput.Text(PROMPTS[0]), bench))
    one_s = time.perf_counter() - t0
    single_tps = len(one.token_ids) / one_s
    record("throughput 1 stream", len(one.token_ids) == n_tok,
           f"{single_tps:.1f} tok/s wall ({len(one.token_ids)} tok in {one_s:.2f}s); "
           f"engine timing {one.timings.generation_tokens_per_s:.1f} tok/s, "
           f"ttft {one.timings.prompt_ms:.1f} ms")
    t0 = time.perf_counter()
    many = await step(backend.infer_batch(handle, [BackendInput.Text(p) for p in PROMPTS], bench))
    many_s = time.perf_counter() - t0
    total = sum(len(o.token_ids) for o in many)
    agg_tps = total / many_s
    record(f"throughput {len(PROMPTS)} streams", total == n_tok * len(PROMPTS),
           f"{agg_tps:.1f} tok/s aggregate ({total} tok in {many_s:.2f}s), "
           f"{agg_tps / single_tps:.2f}x single; per-stream engine "
           f"{sum(o.timings.generation_tokens_per_s for o in many) / len(many):.1f} tok/s")
    bench_info = {"single_tok_s": single_tps, "aggregate_tok_s": agg_tps,
                  "streams": len(PROMPTS), "tokens_per_stream": n_tok}

    # ---- 4. batch == alone -----------------------------------------------------------
    # logprobs=2 gives the top-2 margin at each step: a divergence where the alone run's
    # top-2 gap was tiny is a float near-tie flip (random weights have many), not a bug.
    greedy = InferenceOptions(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
                              logprobs=2)
    inputs = [BackendInput.Text(p) for p in PROMPTS]
    alone = []
    for inp in inputs:
        alone.append(await step(backend.infer(handle, inp, greedy)))
    ok_len = all(len(o.token_ids) == args.max_tokens and o.finish_reason == "length" for o in alone)
    distinct = len({tuple(o.token_ids) for o in alone})
    record("alone: greedy runs produce max_tokens", ok_len and distinct == len(alone),
           f"{[len(o.token_ids) for o in alone]}, {distinct} distinct outputs; "
           f"first {alone[0].text[:50]!r}")
    print("  smallest top-2 margins (alone runs):",
          sorted(round(m, 4) for o in alone for m in margins(o))[:5])

    def compare(name: str, outs: list, extra: str, idx: list[int] | None = None) -> None:
        """Token-exact, or else every divergence a near-tie swap: at the first differing
        token each run's choice is the other's runner-up (a float rounding flip between
        kernels). A KV mix-up or wrong position gives an unrelated token instead."""
        exact, ties, bugs = True, [], []
        for i, b in zip(idx or range(len(outs)), outs, strict=True):
            a = alone[i]
            if a.token_ids == b.token_ids:
                continue
            exact = False
            k = first_divergence(a.token_ids, b.token_ids)
            if not (0 <= k < min(len(a.token_ids), len(b.token_ids))):
                bugs.append(f"#{i} lengths differ ({len(a.token_ids)} vs {len(b.token_ids)})")
                continue
            ta, tb = top_ids(a, k), top_ids(b, k)
            swap = b.token_ids[k] in ta and a.token_ids[k] in tb
            desc = (f"#{i} diverges at token {k} (top-2 margin alone {margins(a)[k]}, "
                    f"other {margins(b)[k]}{'' if swap else ', NOT a top-2 swap'})")
            (ties if swap else bugs).append(desc)
        if exact:
            record(name, True, f"all {len(outs)} token-identical; {extra}")
        elif not bugs:
            record(name, True, f"WARN {len(ties)}/{len(outs)} differ by near-tie flips only: "
                   + "; ".join(ties), warn=True)
        else:
            record(name, False, "; ".join(bugs + ties))

    t0 = time.perf_counter()
    batch = await step(backend.infer_batch(handle, inputs, greedy))
    compare(f"infer_batch x{len(inputs)} == alone (greedy, {args.max_tokens} tok)", batch,
            f"batch wall {time.perf_counter() - t0:.2f}s")
    # Again, now that every prompt is in the prefix cache of some slot.
    batch2 = await step(backend.infer_batch(handle, inputs, greedy))
    compare("infer_batch again (prefix cache) == alone", batch2,
            f"{sum(o.usage.cached_tokens for o in batch2)} prompt tokens from cache")
    # Staggered: requests join while others are mid-generation (mixed prefill + decode steps).
    async def later(i: int):
        await asyncio.sleep(0.002 * i)
        return await backend.infer(handle, inputs[i], greedy)
    staggered = await step(asyncio.gather(*(later(i) for i in range(len(inputs)))))
    compare("staggered concurrent infer == alone", list(staggered), "mixed prefill/decode steps")

    # ---- 5. stream --------------------------------------------------------------------
    chunks = []

    async def _stream():
        async for c in backend.infer_stream(handle, inputs[1], greedy):
            chunks.append(c)
    await step(_stream())
    last = chunks[-1] if chunks else None
    streamed = SimpleNamespace(token_ids=[t for c in chunks for t in c.token_ids],
                               logprobs=[lp for c in chunks for lp in (c.logprobs or [])])
    record("infer_stream chunks", len(chunks) > 1 and last is not None
           and last.finish_reason == "length" and last.usage is not None,
           f"{len(chunks)} chunks, {len(streamed.token_ids)} tokens, "
           f"finish={last.finish_reason if last else None}")
    compare("infer_stream == infer", [streamed], "text deltas joined", idx=[1])

    # ---- 6. chat template -------------------------------------------------------------
    chat = BackendInput.Chat([{"role": "user", "content": "Name three colours."}])
    prompt = backend.render_chat(handle, chat)
    out = await step(backend.infer(handle, chat, InferenceOptions(temperature=0.0, max_tokens=16,
                                                                  ignore_eos=True)))
    record("chat template + infer", "<|im_start|>" in prompt and len(out.token_ids) == 16,
           f"prompt {prompt[:50]!r}..., {len(out.token_ids)} tokens")

    # ---- 7. unload --------------------------------------------------------------------
    await step(backend.unload_model(handle))
    try:
        backend.loaded(handle)
        record("unload", False, "handle still loaded")
    except Exception as e:
        record("unload", True, f"handle gone ({type(e).__name__})")
    results.append({"bench": bench_info, "system_info": sysinfo, "library": str(info.path)})


def main() -> int:
    ap = argparse.ArgumentParser(description="FerrousForge CUDA check")
    ap.add_argument("--model", default=str(REPO / ".gpu/tiny-llama.gguf"))
    ap.add_argument("--cpu", action="store_true",
                    help="bundled library and AcceleratorType.Cpu() (proves the script here)")
    ap.add_argument("--lib", default=None, help="libllama dir (default: $FERROUSFORGE_LLAMA_LIB)")
    ap.add_argument("--out", default=os.environ.get("OUT") or None,
                    help="directory for check_cuda.log/json (default: $OUT)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--bench-tokens", type=int, default=256)
    ap.add_argument("--flash-attention", default="auto", choices=["auto", "on", "off"])
    args = ap.parse_args()
    out_dir = Path(args.out) if args.out else None
    llama_lines = setup_logging(out_dir)
    print(f"FerrousForge check: {'CPU (bundled)' if args.cpu else 'CUDA (dynamic)'}, "
          f"model {args.model}, python {sys.version.split()[0]}")

    crashed = None
    try:
        asyncio.run(run(args, llama_lines))
    except BaseException as e:  # report what ran, then the error
        crashed = e
        traceback.print_exc()
        record("no exception", False, f"{type(e).__name__}: {e}"[:300])

    checks = [r for r in results if "check" in r]
    width = max(len(r["check"]) for r in checks) if checks else 10
    print("\n" + "=" * (width + 60))
    for r in checks:
        tag = ("WARN" if r.get("warn") else "PASS") if r["ok"] else "FAIL"
        print(f"{tag}  {r['check']:<{width}}  {r['detail'][:160]}")
    ok = bool(checks) and all(r["ok"] for r in checks) and crashed is None
    print("=" * (width + 60))
    n_warn = sum(bool(r.get("warn")) for r in checks)
    n_ok = sum(r["ok"] for r in checks)
    print(f"OVERALL: {'PASS' if ok else 'FAIL'} ({n_ok}/{len(checks)} passed"
          f"{f', {n_warn} with warnings' if n_warn else ''})")
    if out_dir is not None:
        (out_dir / "check_cuda.json").write_text(json.dumps(results, indent=2))
        (out_dir / "llama_log.txt").write_text("\n".join(llama_lines.lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
