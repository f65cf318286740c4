"""Slot commands (llama-server's POST /slots/ID?action=save|restore|erase) and slot snapshots.

They run on the engine thread, between steps, since the engine owns the context. A save file
is llama.cpp's sequence state file (``llama_state_seq_save_file``); its token list is packed
as llama-server packs it (LLAMA_TOKEN_NULL, version 1, the tokens, no media), so a file saved
by either server restores in the other. A plain token list (older llama-server) restores too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ferrousforge.errors import NativeCallError, SlotBusyError

TOKEN_NULL = -1
PACKED_VERSION = 1

SlotAction = Literal["save", "restore", "erase", "list"]


def pack_tokens(tokens: list[int]) -> list[int]:
    """llama-server's packed token list: marker, version, count, tokens, no media chunks."""
    return [TOKEN_NULL, PACKED_VERSION, len(tokens), *tokens, 0]


def unpack_tokens(packed: list[int]) -> list[int]:
    """The tokens of a packed list (or of a plain one, as older servers wrote)."""
    if not packed or packed[0] != TOKEN_NULL:
        return packed
    if len(packed) < 3 or packed[1] != PACKED_VERSION:
        raise ValueError("unsupported token list version in the slot file")
    n = packed[2]
    tokens, rest = packed[3 : 3 + n], packed[3 + n :]
    if len(tokens) != n or not rest:
        raise ValueError("truncated token list in the slot file")
    if rest[0] != 0:
        raise ValueError("the slot file holds media chunks: this server has no mmproj")
    return tokens


@dataclass(slots=True)
class SlotCommand:
    """One command for the engine thread; ``future`` gets its result dict or an error."""

    action: SlotAction
    slot: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    path: str | None = None  # save/restore: the file
    filename: str | None = None  # as the client named it, for the answer
    started: float = field(default_factory=time.perf_counter)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        def done() -> None:
            if self.future.done():  # the caller went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # the caller's loop is closed
            pass


@dataclass(slots=True, frozen=True)
class SlotInfo:
    """One slot as GET /slots shows it, copied on the engine thread. The request fields
    are those of the request running in it, else of the last one that ran (None: none)."""

    id: int
    n_ctx: int
    is_processing: bool
    speculative: bool
    request_id: int | None = None
    prompt_ids: tuple[int, ...] = ()
    output_ids: tuple[int, ...] = ()
    n_prompt_processed: int = 0
    n_prompt_cached: int = 0
    max_tokens: int | None = None
    has_next_token: bool = False
    options: Any = None  # the sampler's options, when it keeps them
    n_cached: int = 0  # tokens whose KV the slot holds (prompt cache)


def snapshot(slot, n_ctx: int, speculative: bool) -> SlotInfo:
    seq = slot.seq if slot.seq is not None else slot.last
    if seq is None:
        return SlotInfo(slot.id, n_ctx, False, speculative, n_cached=len(slot.cached))
    n_prompt = len(seq.prompt_ids)
    return SlotInfo(
        id=slot.id,
        n_ctx=n_ctx,
        is_processing=slot.seq is not None,
        speculative=speculative,
        request_id=seq.request_id,
        prompt_ids=tuple(seq.prompt_ids),
        output_ids=tuple(seq.output_ids),
        n_prompt_processed=max(0, min(seq.n_computed, n_prompt) - seq.n_cached_prompt),
        n_prompt_cached=seq.n_cached_prompt,
        max_tokens=seq.limits.max_tokens,
        has_next_token=not seq.is_finished,
        options=getattr(seq.sampler, "options", None),
        n_cached=len(slot.kv_tokens()),
    )


def run_command(cmd: SlotCommand, scheduler, runner, speculative: bool = False) -> Any:
    """Run ``cmd`` on the engine thread; its answer in llama-server's shape (a SlotInfo
    list for "list"). A busy slot is refused: its KV changes every step."""
    if cmd.action == "list":
        return [snapshot(s, scheduler.n_ctx, speculative) for s in scheduler.slots]
    if not 0 <= cmd.slot < len(scheduler.slots):
        raise ValueError(f"id_slot: no slot {cmd.slot} (this model has {len(scheduler.slots)})")
    slot = scheduler.slots[cmd.slot]
    if slot.seq is not None:
        raise SlotBusyError(f"slot {cmd.slot} is processing a request; try again when it ends")
    if cmd.action == "erase":
        n = len(slot.cached)
        runner.release_slot(slot.id, 0)
        slot.cached, slot.saved = [], False
        return {"id_slot": cmd.slot, "n_erased": n}
    if cmd.action == "save":
        tokens = list(slot.cached)
        n_written = runner.save_slot_file(slot.id, cmd.path, pack_tokens(tokens))
        if not n_written:
            raise NativeCallError(f"could not save slot {cmd.slot} to {cmd.filename} (see the log)")
        return {
            "id_slot": cmd.slot,
            "filename": cmd.filename,
            "n_saved": len(tokens),
            "n_written": n_written,
            "timings": {"save_ms": cmd.elapsed_ms()},
        }
    n_read, packed = runner.load_slot_file(slot.id, cmd.path)
    slot.cached, slot.saved = [], False
    try:
        if not n_read:
            raise ValueError(
                "unable to restore slot: no room in the KV cache or not a slot file of this model"
            )
        tokens = unpack_tokens(packed)
        if len(tokens) > scheduler.n_ctx:
            raise ValueError("unable to restore slot: it holds more tokens than a slot's context")
    except ValueError:
        runner.release_slot(slot.id, 0)  # a failed restore leaves the slot empty and usable
        raise
    slot.cached = tokens
    return {
        "id_slot": cmd.slot,
        "filename": cmd.filename,
        "n_restored": len(tokens),
        "n_read": n_read,
        "timings": {"restore_ms": cmd.elapsed_ms()},
    }
