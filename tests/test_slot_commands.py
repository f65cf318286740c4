"""Slot commands on the engine thread with a scripted runner: list, erase, save, restore."""

import threading
from array import array

import pytest
from scripted_runner import ScriptedRunner, ScriptedSampler, piece

from ferrousforge.engine.engine import Engine
from ferrousforge.engine.sequence import SamplingLimits
from ferrousforge.engine.slot_files import pack_tokens, unpack_tokens
from ferrousforge.errors import SlotBusyError

PROMPT = list(range(3, 43))  # 40 tokens: long enough for the prefix cache to reuse


@pytest.fixture
def engine():
    e = Engine(ScriptedRunner(n_slots=2), piece)
    yield e
    e.shutdown()


async def run(engine: Engine, prompt: list[int], n: int = 4):
    last = None
    async for out in engine.add_request(prompt, SamplingLimits(max_tokens=n), ScriptedSampler()):
        last = out
    return last


async def test_save_erase_restore_brings_back_the_cached_prefix(engine, tmp_path):
    await run(engine, PROMPT)
    path = str(tmp_path / "s.bin")
    saved = await engine.slot_command("save", 0, path=path, filename="s.bin")
    assert saved["n_saved"] == len(PROMPT) + 3  # the last token sampled is not in the KV
    assert (await engine.slot_command("erase", 0))["n_erased"] == saved["n_saved"]
    # Nothing cached any more: the prompt is computed again.
    assert (await run(engine, PROMPT)).cached_tokens == 0
    await engine.slot_command("erase", 0)
    restored = await engine.slot_command("restore", 1, path=path, filename="s.bin")
    assert restored["n_restored"] == saved["n_saved"]
    assert (await run(engine, PROMPT)).cached_tokens == len(PROMPT) - 1


async def test_list_shows_the_request_that_ran_in_each_slot(engine):
    infos = await engine.slot_command("list")
    assert [(i.id, i.is_processing, i.request_id) for i in infos] == [
        (0, False, None),
        (1, False, None),
    ]
    await run(engine, PROMPT, n=5)
    first = (await engine.slot_command("list"))[0]
    assert (first.request_id, len(first.prompt_ids), len(first.output_ids)) == (1, 40, 5)
    assert not first.is_processing and first.max_tokens == 5


class GatedRunner(ScriptedRunner):
    """Its second step waits for ``gate``: a command sent meanwhile finds the slot busy."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.gate = threading.Event()
        self.steps = 0

    def execute(self, plan):
        self.steps += 1
        if self.steps == 2:
            self.gate.wait(30)
        return super().execute(plan)


async def test_a_busy_slot_is_refused_and_a_bad_file_leaves_the_slot_empty(tmp_path):
    runner = GatedRunner(n_slots=2, n_batch=64)  # the prompt in one step, then a token
    engine = Engine(runner, piece)
    try:
        await _busy_then_bad_file(engine, runner, tmp_path)
    finally:
        runner.gate.set()
        engine.shutdown()


async def _busy_then_bad_file(engine: Engine, runner: GatedRunner, tmp_path) -> None:
    stream = engine.add_request(PROMPT, SamplingLimits(max_tokens=200), ScriptedSampler())
    await stream.__anext__()  # it runs in slot 0 now
    busy = engine.slot_command("save", 0, path=str(tmp_path / "x"), filename="x")
    runner.gate.set()  # the command runs before the step after next: 200 tokens are far off
    with pytest.raises(SlotBusyError):
        await busy
    with pytest.raises(ValueError, match="no slot 7"):
        await engine.slot_command("erase", 7)
    stream.abort()
    bad = tmp_path / "bad.bin"
    # A packed token list that says 5 tokens and holds none, then one cell of KV.
    bad.write_bytes(array("i", [3, -1, 1, 5, 42]).tobytes())
    with pytest.raises(ValueError, match="truncated"):
        await engine.slot_command("restore", 1, path=str(bad), filename="bad.bin")
    assert engine.runner.kv[1] == 0  # the failed restore left the slot empty
    assert (await engine.slot_command("list"))[1].n_cached == 0


def test_token_lists_packed_as_llama_server_packs_them():
    assert pack_tokens([7, 8]) == [-1, 1, 2, 7, 8, 0]
    assert unpack_tokens(pack_tokens([7, 8])) == [7, 8]
    assert unpack_tokens([7, 8]) == [7, 8]  # a plain list, as older servers wrote
    with pytest.raises(ValueError, match="media"):
        unpack_tokens([-1, 1, 1, 7, 1, 3])
