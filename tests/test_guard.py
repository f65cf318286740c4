"""The C++ guard, with the real library and model: requests that used to abort the process
(a C++ exception crossing ctypes) now end cleanly, and the engine keeps serving."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferrousforge.api.json_schema import schema_to_gbnf
from ferrousforge.api.request import InferenceOptions
from ferrousforge.errors import GrammarError, SamplingBudgetError
from ferrousforge.inference.backend import AcceleratorType, BackendConfig, BackendInput
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend
from ferrousforge.inference.backends.llama_cpp.library import library_info, native_guard
from ferrousforge.models.default_model import bundled_model_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loaded(model_path):
    backend = LlamaCppBackend()
    lm = backend.load_model_sync(
        model_path, BackendConfig(max_parallel=4, context_size=4096), AcceleratorType.Cpu()
    )
    yield backend, lm.handle
    lm.close()


def greedy(**kw) -> InferenceOptions:
    return InferenceOptions(temperature=0, **{"max_tokens": 48, **kw})


def test_guard_is_built_and_catches_its_own_exception():
    from ferrousforge.inference.backends.llama_cpp.library import load_library

    load_library()
    status = native_guard().status
    assert status.active, status.detail  # the self-test ran in load_guard
    assert Path(status.detail).is_file()


OK_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


@pytest.mark.parametrize(
    ("options", "check"),
    [
        # A complete grammar with end-of-generation banned used to throw
        # "Unexpected empty grammar stack" inside llama.cpp: SIGABRT.
        (dict(grammar=schema_to_gbnf(OK_SCHEMA), ignore_eos=True, max_tokens=64),
         lambda t: isinstance(json.loads(t)["ok"], bool)),
        (dict(grammar=schema_to_gbnf({"type": "boolean"}), min_tokens=5),
         lambda t: json.loads(t) in (True, False)),
        (dict(grammar='root ::= "a"', ignore_eos=True), lambda t: t == "a"),
        (dict(grammar='root ::= "a"', min_tokens=3), lambda t: t == "a"),
        (dict(grammar='root ::= "yes" | "no"', ignore_eos=True), lambda t: t in ("yes", "no")),
    ],
)  # fmt: skip
async def test_completed_grammar_ends_with_stop(loaded, options, check):
    backend, h = loaded
    out = await backend.infer(h, BackendInput.Text("Answer:"), greedy(**options))
    assert out.finish_reason == "stop"
    assert check(out.text), out.text


async def test_completed_grammar_ends_streams_too(loaded):
    backend, h = loaded
    opts = greedy(grammar='root ::= "yes" | "no"', ignore_eos=True)
    chunks = [c async for c in backend.infer_stream(h, BackendInput.Text("Answer:"), opts)]
    assert "".join(c.text for c in chunks) in ("yes", "no")
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    "grammar", ["root ::= [z-a]", "root ::= [^\\x00-\\U0010FFFF]", 'root ::= "\\UFFFFFFFF"']
)
async def test_grammar_no_character_can_satisfy_is_refused_or_ends_at_once(loaded, grammar):
    backend, h = loaded
    try:
        out = await backend.infer(h, BackendInput.Text("Answer:"), greedy(grammar=grammar))
    except GrammarError as e:
        assert str(e).startswith("grammar:")
    else:
        # A vocabulary with partial-UTF-8 byte tokens (Gemma's) lets a first byte through;
        # then nothing is allowed, and the request must end there instead of crashing.
        assert out.finish_reason == "stop" and out.usage.completion_tokens <= 4
    out = await backend.infer(h, BackendInput.Text("Hello"), greedy(max_tokens=4, ignore_eos=True))
    assert out.usage.completion_tokens == 4  # the engine still serves


async def test_default_model_refuses_a_grammar_no_token_can_start(loaded):
    backend, h = loaded
    if backend.loaded(h).handle.path.resolve() != bundled_model_path().resolve():
        pytest.skip("which byte tokens a vocabulary has decides this; checked on the default")
    with pytest.raises(GrammarError, match="no token can start"):
        await backend.infer(
            h, BackendInput.Text("x"), greedy(grammar="root ::= [^\\x00-\\U0010FFFF]")
        )


async def test_every_allowed_token_banned_stops_instead_of_crashing(loaded):
    backend, h = loaded
    vocab = backend.loaded(h).vocab
    only_a = [t for t in range(vocab.n_tokens) if vocab.piece(t) == b"a"]
    bias = {t: float("-inf") for t in only_a}
    # The only tokens the grammar allows at the start are banned: nothing can be sampled.
    out = await backend.infer(
        h, BackendInput.Text("x"), greedy(grammar='root ::= "a"', logit_bias=bias)
    )
    assert (out.text, out.finish_reason) == ("", "stop")


# Grammars whose tokens the model would rarely pick first: most steps are constrained picks.
ODD_GRAMMARS = [
    'root ::= "Zebra" [0-9] [0-9] " quux " ("yes" | "no" | "maybe") " {" [a-z]+ "}"',
    schema_to_gbnf(
        {
            "type": "object",
            "properties": {"colour": {"enum": ["ochre", "teal"]}, "n": {"type": "integer"}},
            "required": ["colour", "n"],
        }
    ),
]


@pytest.mark.parametrize("grammar", ODD_GRAMMARS)
@pytest.mark.parametrize(
    "sampling",
    [
        dict(temperature=0),
        dict(temperature=1.0, top_k=40, seed=7),
        dict(temperature=0.8, top_k=3, seed=3),
    ],
)
async def test_constrained_pick_from_the_best_tokens_equals_the_whole_vocabulary(
    loaded, monkeypatch, grammar, sampling
):
    """The guard constrains the best-scoring tokens before the whole vocabulary when the chain
    keeps only the best k (greedy, top-k): the output is the same as constraining them all."""
    from ferrousforge.inference.backends.llama_cpp.sampler import SamplerChain

    backend, h = loaded
    opts = InferenceOptions(grammar=grammar, max_tokens=24, **sampling)

    async def text() -> str:
        return (await backend.infer(h, BackendInput.Text("Tell me a story."), opts)).text

    await text()  # the prompt is cached from here on, for both runs alike
    shortlisted = await text()
    build = SamplerChain._build

    def whole_vocabulary(self, *args):
        build(self, *args)
        assert self.best_k in (0, 1, sampling.get("top_k", 1))
        self.best_k = 0

    monkeypatch.setattr(SamplerChain, "_build", whole_vocabulary)
    assert await text() == shortlisted


async def test_grammar_over_the_sampling_budget_is_refused_before_the_engine(model_path):
    backend = LlamaCppBackend()
    h = await backend.load_model(model_path, BackendConfig(max_parallel=1, sample_budget_ms=0.001))
    try:
        with pytest.raises(GrammarError, match="budget"):
            await backend.infer(
                h, BackendInput.Text("x"), greedy(grammar=schema_to_gbnf(OK_SCHEMA))
            )
        # Without a grammar the engine's own per-token check ends the request.
        with pytest.raises(SamplingBudgetError, match="budget"):
            await backend.infer(h, BackendInput.Text("x"), greedy(max_tokens=4))
        assert backend.loaded(h).engine.in_flight == 0
    finally:
        await backend.unload_model(h)


async def test_penalty_windows_never_exceed_the_context(loaded, monkeypatch):
    backend, h = loaded
    lm = backend.loaded(h)
    lib = lm.model._lib
    seen = {}
    real_pen, real_dry = lib.llama_sampler_init_penalties, lib.llama_sampler_init_dry

    def pen(n_vocab, last_n, *rest):
        seen["penalties"] = last_n
        return real_pen(n_vocab, last_n, *rest)

    def dry(vocab, mult, base, allowed, last_n, *rest):
        seen["dry"] = last_n
        return real_dry(vocab, mult, base, allowed, last_n, *rest)

    monkeypatch.setattr(lib, "llama_sampler_init_penalties", pen)
    monkeypatch.setattr(lib, "llama_sampler_init_dry", dry)
    opts = greedy(
        max_tokens=4, repeat_penalty=1.1, repeat_last_n=2**20, dry_multiplier=0.8,
        dry_penalty_last_n=2**20,
    )  # fmt: skip
    out = await backend.infer(h, BackendInput.Text("Hello"), opts)
    assert out.usage.completion_tokens == 4
    assert seen == {"penalties": lm.n_ctx_seq, "dry": lm.n_ctx_seq}
    await backend.infer(h, BackendInput.Text("Hello"), opts.replace(repeat_last_n=-1))
    assert seen["penalties"] == lm.n_ctx_seq  # -1: the whole context


@pytest.mark.skipif(sys.platform != "linux", reason="copies a Linux libllama tree")
def test_dynamic_library_gets_a_guard_built_against_its_own_header(tmp_path):
    from ferrousforge.inference.backends.llama_cpp.library import load_library

    load_library()
    lib_dir = library_info().path.parent
    header = next(p for p in [lib_dir.parent.parent / "include" / "llama.h"] if p.is_file())
    tree = tmp_path / "llama.cpp"
    shutil.copytree(header.parent, tree / "include")
    shutil.copytree(lib_dir, tree / "build" / "bin")
    env = {**os.environ, "FERROUSFORGE_LLAMA_LIB": str(tree / "build" / "bin"),
           "FERROUSFORGE_CACHE": str(tmp_path / "cache")}  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", "doctor"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "library mode  dynamic" in r.stdout
    assert f"c++ guard     on: {tmp_path / 'cache'}" in r.stdout
    assert "c++ runtime   shared" in r.stdout
    # Without a header for that library the guard is off, and doctor says so.
    (tree / "include" / "llama.h").unlink()
    r = subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", "doctor"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert "c++ guard     OFF: no llama.h" in r.stdout
