"""Narrow down a crash while loading a model: plain bindings, main thread, one step per call.

    python gpu/probe_load.py MODEL STEP     # STEP: vocab | cpu | gpu | tokenize-gpu
Each step is meant to run in its own process (gpu/run_check.sh does) so a crash names it.
"""

import ctypes
import sys

from ferrousforge.inference.backends.llama_cpp.library import load_library

model, step = sys.argv[1].encode(), sys.argv[2]
lib = load_library()
lib.llama_backend_init()
lines: list[str] = []
cb = lib.llama_log_callback(lambda level, text, data: lines.append(text.decode(errors="replace")))
lib.llama_log_set(cb, ctypes.c_void_p())
p = lib.llama_model_default_params()
p.vocab_only = step == "vocab"
p.n_gpu_layers = 99 if step.endswith("gpu") else 0
print(f"{step}: loading", flush=True)
m = lib.llama_model_load_from_file(model, p)
print(f"{step}: loaded={bool(m)}", flush=True)
if m and step == "tokenize-gpu":
    vocab = lib.llama_model_get_vocab(m)
    buf = (lib.llama_token * 64)()
    n = lib.llama_tokenize(vocab, b"Hello 12 world\n", 15, buf, 64, True, False)
    print(f"{step}: tokens={list(buf[:n])}", flush=True)
if m:
    lib.llama_model_free(m)
print(f"{step}: ok", flush=True)
