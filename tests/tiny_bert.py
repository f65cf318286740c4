"""A tiny BERT GGUF with random weights, written by the tests themselves (nothing downloads).

llama.cpp's "bert" architecture (src/models/bert.cpp): token, token-type and learned position
embeddings, a LayerNorm, then post-norm encoder blocks (separate Q/K/V with biases, GELU
feed-forward); the pooling (mean, CLS or rank) comes from ``bert.pooling_type``. With
``rank=True`` it also gets the classification head of BERT cross-encoders (``cls`` dense +
tanh, then ``cls.output`` to one score), which llama.cpp applies under rank pooling.

The vocabulary is WordPiece as llama.cpp stores it: a word-initial piece carries the phantom
space "\u2581" (HF's plain piece), a continuation piece has none (HF's "##" piece). Single
letters of both kinds are included, so every lowercase ASCII word tokenizes without [UNK].

    write_tiny_bert(tmp_path / "bert.gguf", pooling="cls")
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD = 32
N_LAYER = 2
N_HEAD = 2
N_FF = 64
N_CTX_TRAIN = 128
N_TOKEN_TYPES = 2

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL))
WORDS = (  # noqa: SIM905  (one readable line of words)
    "the a an of to in on and is are was cat cats dog dogs ship ships sea sail sails "
    "red green blue paris france capital city river tax law kitten purr bark run ran "
    "sat sun moon star tree"
).split()
SUFFIXES = ["s", "ing", "ed", "er"]
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
PUNCT = [".", ",", "?", "!", ":"]
SPACE = "\u2581"

POOLING = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS}


def vocabulary() -> tuple[list[str], list[int]]:
    """Token texts and llama token types (special ones CONTROL, [UNK] UNKNOWN)."""
    tokens = list(SPECIAL)
    tokens += [SPACE + w for w in WORDS + LETTERS + PUNCT]
    tokens += SUFFIXES + LETTERS
    tokens = list(dict.fromkeys(tokens))  # "s" is both a suffix and a letter
    types = [gguf.TokenType.CONTROL] * len(SPECIAL) + [gguf.TokenType.NORMAL] * (
        len(tokens) - len(SPECIAL)
    )
    types[UNK] = gguf.TokenType.UNKNOWN
    return tokens, [int(t) for t in types]


def write_tiny_bert(
    path: Path | str,
    *,
    pooling: str = "mean",
    rank: bool = False,
    seed: int = 0,
    embedding_length_out: int | None = None,
) -> Path:
    """Write a tiny random BERT GGUF (``pooling`` "mean" or "cls"; ``rank``: a reranker,
    rank pooling over [CLS] with a one-score classification head) and return its path.
    ``embedding_length_out`` declares embeddings narrower than the hidden state, as models
    with dense output layers do (LFM2-ColBERT)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, types = vocabulary()

    def mat(rows: int, cols: int) -> np.ndarray:
        # numpy (rows, cols) is llama.cpp's {cols, rows}; 1/sqrt(fan-in) keeps activations O(1)
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(n: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(n) * scale).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    arch = "bert"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-bert-rank" if rank else f"tiny-bert-{pooling}")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    if embedding_length_out is not None:
        w.add_embedding_length_out(embedding_length_out)
    w.add_feed_forward_length(N_FF)
    w.add_block_count(N_LAYER)
    w.add_head_count(N_HEAD)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.RANK if rank else POOLING[pooling])
    if rank:
        w.add_classifier_output_labels(["relevance"])  # n_cls_out = 1
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(N_TOKEN_TYPES)
    w.add_bos_token_id(CLS)  # WPM: "bos" is [CLS], prepended; [SEP] is appended
    w.add_sep_token_id(SEP)
    w.add_unk_token_id(UNK)
    w.add_pad_token_id(PAD)
    w.add_mask_token_id(MASK)
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)

    n_vocab = len(tokens)
    w.add_tensor("token_embd.weight", mat(n_vocab, N_EMBD) * np.float32(np.sqrt(N_EMBD)))
    w.add_tensor("token_types.weight", mat(N_TOKEN_TYPES, N_EMBD))
    w.add_tensor("position_embd.weight", mat(N_CTX_TRAIN, N_EMBD))
    w.add_tensor("token_embd_norm.weight", ones(N_EMBD))
    w.add_tensor("token_embd_norm.bias", vec(N_EMBD))
    for i in range(N_LAYER):
        blk = f"blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"{blk}.{name}.weight", mat(N_EMBD, N_EMBD))
            w.add_tensor(f"{blk}.{name}.bias", vec(N_EMBD))
        w.add_tensor(f"{blk}.attn_output_norm.weight", ones(N_EMBD))
        w.add_tensor(f"{blk}.attn_output_norm.bias", vec(N_EMBD))
        w.add_tensor(f"{blk}.ffn_up.weight", mat(N_FF, N_EMBD))
        w.add_tensor(f"{blk}.ffn_up.bias", vec(N_FF))
        w.add_tensor(f"{blk}.ffn_down.weight", mat(N_EMBD, N_FF))
        w.add_tensor(f"{blk}.ffn_down.bias", vec(N_EMBD))
        w.add_tensor(f"{blk}.layer_output_norm.weight", ones(N_EMBD))
        w.add_tensor(f"{blk}.layer_output_norm.bias", vec(N_EMBD))
    if rank:
        w.add_tensor("cls.weight", mat(N_EMBD, N_EMBD))
        w.add_tensor("cls.bias", vec(N_EMBD))
        w.add_tensor("cls.output.weight", mat(1, N_EMBD))
        w.add_tensor("cls.output.bias", vec(1))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
