"""The public library API on the real default model."""

import asyncio
import gc
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from model_traits import (
    TOP_N,
    assert_same_or_near_tie,
    batch_invariant,
    chat_template_for_tests,
    loaded_model,
)

from ferrousforge.api.request import InferenceOptions
from ferrousforge.errors import (
    AcceleratorUnavailableError,
    ChatTemplateError,
    ContextOverflowError,
    ModelLoadError,
)
from ferrousforge.inference.backend import (
    AcceleratorType,
    BackendConfig,
    BackendInput,
    BackendOutput,
    InferenceBackend,
)
from ferrousforge.inference.backends.llama_cpp import LlamaCppBackend
from ferrousforge.inference.backends.llama_cpp.chat_template import render_chat

GREEDY = InferenceOptions(temperature=0, max_tokens=24)
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
]


@pytest.fixture(scope="module")
def backend_and_handle(model_path):
    with loaded_model(model_path, context_size=2048, max_parallel=4) as loaded:
        yield loaded


@pytest.fixture
def backend(backend_and_handle):
    return backend_and_handle[0]


@pytest.fixture
def handle(backend_and_handle):
    return backend_and_handle[1]


def test_backend_implements_the_protocol():
    assert isinstance(LlamaCppBackend(), InferenceBackend)


async def test_the_readme_example_runs(model_path):
    backend = LlamaCppBackend()
    progress: list[float] = []
    config = BackendConfig(
        num_threads=2, context_size=2048, batch_size=512, progress_callback=progress.append
    )
    handle = await backend.load_model(Path(model_path), config, None)
    options = InferenceOptions(temperature=0.7, max_tokens=20, min_tokens=2, seed=7)
    out = await backend.infer(handle, BackendInput.Text("Hello, how are you?"), options)
    assert isinstance(out, BackendOutput.Text)
    assert out.text and out.usage.completion_tokens <= 20
    outs = await backend.infer_batch(
        handle, [BackendInput.Text("Prompt 1"), BackendInput.Text("Prompt 2")], options
    )
    assert len(outs) == 2 and all(o.text for o in outs)
    chunks = [c async for c in backend.infer_stream(handle, BackendInput.Text("Hi"), options)]
    assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].usage is not None
    await backend.unload_model(handle)
    assert progress and progress[-1] == pytest.approx(1.0)


async def test_infer_reports_usage_timings_and_finish_reason(backend, handle):
    out = await backend.infer(handle, BackendInput.Text("1, 2, 3, 4,"), GREEDY)
    assert out.finish_reason == "length"
    assert out.usage.completion_tokens == 24 == len(out.token_ids)
    assert out.usage.prompt_tokens == len(backend.tokenize(handle, "1, 2, 3, 4,"))
    assert out.text.startswith(" 5")  # the prompt reached the model and the text is its tokens
    assert out.timings.prompt_ms > 0 and out.timings.generation_tokens_per_s > 0


async def test_stream_concatenates_to_the_same_text(backend, handle):
    whole = await backend.infer(handle, BackendInput.Text("Once upon a time"), GREEDY)
    chunks = [
        c async for c in backend.infer_stream(handle, BackendInput.Text("Once upon a time"), GREEDY)
    ]
    assert "".join(c.text for c in chunks) == whole.text
    assert [t for c in chunks for t in c.token_ids] == whole.token_ids
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 24
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_batch_equals_each_prompt_alone_at_temperature_zero(backend, handle):
    # README, "Determinism": identical on the default model; elsewhere only near-ties may flip.
    opts = GREEDY.replace(logprobs=TOP_N)
    batch = await backend.infer_batch(handle, [BackendInput.Text(p) for p in PROMPTS], opts)
    for prompt, out in zip(PROMPTS, batch, strict=True):
        alone = await backend.infer(handle, BackendInput.Text(prompt), opts)
        assert len(out.token_ids) == len(alone.token_ids) == 24
        assert_same_or_near_tie(alone, out, prompt)


async def test_batch_really_decodes_sequences_together(backend, handle):
    engine = backend.loaded(handle).engine
    before = (engine.stats.decode_steps, engine.stats.busy_slots_sum)
    await backend.infer_batch(handle, [BackendInput.Text(p) for p in PROMPTS], GREEDY)
    steps = engine.stats.decode_steps - before[0]
    sampled = engine.stats.busy_slots_sum - before[1]
    assert sampled == 4 * 24
    assert steps < 2 * 24, f"{steps} decode steps for 4x24 tokens: not batched"


async def test_same_seed_same_output_and_different_seed_differs(backend, handle, model_path):
    opts = InferenceOptions(
        temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=24, seed=1234
    )
    prompt = BackendInput.Text("My favourite animal is")
    # README, "Determinism": with the prefix cache off, a rerun evaluates the same batch
    # shapes, so the same seed gives the same output on any model.
    cold = LlamaCppBackend()
    lm = cold.load_model_sync(
        model_path,
        BackendConfig(num_threads=2, context_size=512, max_parallel=1, prefix_cache=False),
        AcceleratorType.Cpu(),
    )
    try:
        a = await cold.infer(lm.handle, prompt, opts)
        b = await cold.infer(lm.handle, prompt, opts)
        c = await cold.infer(lm.handle, prompt, opts.replace(seed=99))
    finally:
        lm.close()
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    if batch_invariant():  # the default model: also when the rerun is a prefix-cache hit
        warm = [await backend.infer(handle, prompt, opts) for _ in range(2)]
        assert warm[1].usage.cached_tokens > 0
        assert warm[0].token_ids == warm[1].token_ids == a.token_ids


async def test_tokens_and_chat_inputs(backend, handle):
    ids = backend.tokenize(handle, "The capital of France is")
    by_ids = await backend.infer(handle, BackendInput.Tokens(ids), GREEDY)
    by_text = await backend.infer(handle, BackendInput.Text("The capital of France is"), GREEDY)
    assert by_ids.token_ids == by_text.token_ids
    chat_in = BackendInput.Chat(
        [{"role": "user", "content": "Say hi"}], chat_template=chat_template_for_tests()
    )
    chat = await backend.infer(handle, chat_in, InferenceOptions(temperature=0, max_tokens=40))
    rendered = backend.render_chat(handle, chat_in)
    assert "Say hi" in rendered and chat.text.strip()
    assert chat.usage.prompt_tokens == len(backend.tokenize(handle, rendered))
    with pytest.raises(ValueError, match="tokens: token id 999999"):
        await backend.infer(handle, BackendInput.Tokens([1, 999999]), GREEDY)


def test_chat_without_a_template_is_a_clear_error():
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat(None, [{"role": "user", "content": "hi"}], bos_token="", eos_token="")
    with pytest.raises(ChatTemplateError, match="failed to render"):
        render_chat(
            "{{ raise_exception('bad role') }}",
            [{"role": "user", "content": "x"}],
            bos_token="",
            eos_token="",
        )


async def test_stop_strings_ignore_eos_and_min_tokens(backend, handle):
    base = await backend.infer(handle, BackendInput.Text("1, 2, 3, 4,"), GREEDY)
    assert " 7" in base.text
    stopped = await backend.infer(
        handle, BackendInput.Text("1, 2, 3, 4,"), GREEDY.replace(stop=[" 7"])
    )
    assert stopped.finish_reason == "stop" and " 7" not in stopped.text
    assert base.text.startswith(stopped.text)
    # A strong bias makes the end-of-generation token the greedy choice at every step.
    eos = backend.loaded(handle).vocab.eos
    to_eos = InferenceOptions(temperature=0, max_tokens=20, logit_bias={eos: 100.0})
    prompt = BackendInput.Text("Reply with one word: yes or no?")
    short = await backend.infer(handle, prompt, to_eos)
    assert short.finish_reason == "stop" and short.usage.completion_tokens == 0
    forced = await backend.infer(handle, prompt, to_eos.replace(ignore_eos=True))
    assert forced.finish_reason == "length" and forced.usage.completion_tokens == 20
    assert eos not in forced.token_ids
    at_least = await backend.infer(handle, prompt, to_eos.replace(min_tokens=5))
    assert at_least.finish_reason == "stop" and at_least.usage.completion_tokens == 5


async def test_grammar_constrains_output_and_bad_grammar_names_the_field(backend, handle):
    out = await backend.infer(
        handle,
        BackendInput.Text("Is the sky blue? Answer:"),
        InferenceOptions(temperature=0.8, seed=3, max_tokens=8, grammar='root ::= " yes" | " no"'),
    )
    assert out.text in (" yes", " no")
    with pytest.raises(ValueError, match="^grammar:"):
        await backend.infer(handle, BackendInput.Text("x"), InferenceOptions(grammar="root ::= ("))
    # min > max: llama.cpp would expand it until the process runs out of memory.
    with pytest.raises(ValueError, match="^grammar: repetition"):
        opts = InferenceOptions(grammar="root ::= [a-z]{3,1}")
        await backend.infer(handle, BackendInput.Text("x"), opts)


async def test_every_sampler_option_runs(backend, handle):
    """Smoke: every option builds a chain that samples (effects: test_regressions_sampler)."""
    opts = InferenceOptions(
        temperature=0.9,
        top_k=20,
        top_p=0.9,
        min_p=0.02,
        typical_p=0.95,
        repeat_penalty=1.2,
        repeat_last_n=32,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=5,
        logit_bias={1: -100.0},
        dry_multiplier=0.8,
        xtc_probability=0.3,
        max_tokens=10,
    )
    for extra in ({}, {"mirostat": 1}, {"mirostat": 2}):
        out = await backend.infer(
            handle, BackendInput.Text("Tell me a story"), opts.replace(**extra)
        )
        assert out.usage.completion_tokens >= 1


async def test_logit_bias_bans_a_token(backend, handle):
    base = await backend.infer(handle, BackendInput.Text("The capital of France is"), GREEDY)
    banned = base.token_ids[0]
    out = await backend.infer(
        handle,
        BackendInput.Text("The capital of France is"),
        GREEDY.replace(logit_bias={banned: float("-inf")}),
    )
    assert out.token_ids[0] != banned


async def test_logprobs_and_prompt_logprobs(backend, handle):
    out = await backend.infer(
        handle,
        BackendInput.Text("The capital of France is"),
        GREEDY.replace(max_tokens=3, logprobs=3, echo_logprobs=True),
    )
    assert len(out.logprobs) == 3
    first = out.logprobs[0]
    assert first.top[0][0] == first.token  # greedy picks the most likely token
    assert first.logprob <= 0 and len(first.top) == 3
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == out.usage.prompt_tokens


async def test_context_overflow_is_an_error_not_truncation(backend, handle):
    with pytest.raises(ContextOverflowError, match="exceeds the context size of 512"):
        await backend.infer(
            handle, BackendInput.Text("word " * 300), InferenceOptions(max_tokens=300)
        )


async def test_accelerator_the_library_lacks_is_a_clear_error(model_path):
    with pytest.raises(AcceleratorUnavailableError, match="no GPU support"):
        await LlamaCppBackend().load_model(
            model_path, BackendConfig(), AcceleratorType.Cuda(device_id=0)
        )


@pytest.mark.parametrize("make", ["missing", "directory", "not_gguf", "truncated"])
async def test_bad_model_files_raise_model_load_error(tmp_path, model_path, make):
    path = tmp_path / "m.gguf"
    if make == "directory":
        path = tmp_path
    elif make == "not_gguf":
        path.write_bytes(b"not a model at all")
    elif make == "truncated":
        path.write_bytes(model_path.read_bytes()[:5_000_000])
    with pytest.raises(ModelLoadError, match=str(path.name if make != "directory" else tmp_path)):
        await LlamaCppBackend().load_model(path)


async def test_file_llama_cpp_rejects_carries_its_log_lines(tmp_path):
    # A valid header with one tensor and no hyperparameters passes our checks; llama.cpp refuses it.
    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x)) + x.encode()

    head = (
        b"GGUF"
        + struct.pack("<IQQ", 3, 1, 1)
        + s("general.architecture")
        + struct.pack("<I", 8)
        + s("llama")
        + s("w")
        + struct.pack("<IQQIQ", 2, 32, 2, 0, 0)  # F32 [32, 2] at offset 0: 256 bytes
    )
    path = tmp_path / "empty.gguf"
    path.write_bytes(head + b"\0" * (32 - len(head) % 32) + b"\0" * 256)
    with pytest.raises(ModelLoadError, match="llama.cpp failed to load the model") as err:
        await LlamaCppBackend().load_model(path)
    assert "llama.cpp said" in str(err.value)


def test_library_not_found_explains_where_it_looked(tmp_path):
    code = (
        "from ferrousforge.inference.backends.llama_cpp.library import load_library\n"
        "from ferrousforge.errors import LibraryNotFoundError\n"
        "try:\n    load_library()\nexcept LibraryNotFoundError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, FERROUSFORGE_LLAMA_LIB=str(tmp_path / "nowhere"))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.stdout.startswith("ERR libllama not found at"), r.stdout + r.stderr
    assert "FERROUSFORGE_LLAMA_LIB" in r.stdout


def test_dynamic_mode_loads_a_library_directory():
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    code = (
        "from ferrousforge.inference.backends.llama_cpp.library import load_library, library_info\n"
        "load_library(); i = library_info(); print(i.mode, i.path)\n"
    )
    env = dict(os.environ, FERROUSFORGE_LLAMA_LIB=str(lib_dir))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.stdout.split()[0] == "dynamic", r.stdout + r.stderr
    assert r.stdout.split()[1] == str(lib_dir / "libllama.so")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def test_load_unload_cycles_do_not_leak(model_path):
    backend = LlamaCppBackend()
    config = BackendConfig(num_threads=2, context_size=512, max_parallel=2)

    async def cycle():
        h = await backend.load_model(model_path, config)
        await backend.infer(
            h, BackendInput.Text("Hi"), InferenceOptions(temperature=0, max_tokens=2)
        )
        await backend.unload_model(h)
        gc.collect()

    for _ in range(3):
        await cycle()
    baseline = _rss_mb()
    for _ in range(20):
        await cycle()
    grown = _rss_mb() - baseline
    assert grown < 40, f"RSS grew by {grown:.0f} MB over 20 load/unload cycles"
    await asyncio.sleep(0)


async def test_max_tokens_zero_returns_only_prompt_logprobs(backend, handle):
    out = await backend.infer(
        handle,
        BackendInput.Text("The capital of France is"),
        InferenceOptions(max_tokens=0, logprobs=1, echo_logprobs=True),
    )
    assert out.finish_reason == "length" and out.token_ids == [] and out.text == ""
    assert len(out.prompt_logprobs) == out.usage.prompt_tokens
    assert all(lp.logprob <= 0 for lp in out.prompt_logprobs[1:])
