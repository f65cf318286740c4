"""llama-server's slot routes: GET /slots and POST /slots/{id}?action=save|restore|erase.

A slot is one of a model's ``--parallel`` sequences; its KV stays after a request ends and
is the prefix cache of the next. Save and restore write and read llama.cpp sequence state
files in ``--slot-save-path`` (on the engine thread, between steps; a busy slot is refused).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ferrousforge.api.openapi import ERROR_RESPONSES
from ferrousforge.api.request import InferenceOptions
from ferrousforge.api.routes import model_for, state
from ferrousforge.engine.slot_files import SlotInfo
from ferrousforge.errors import NotSupportedError

router = APIRouter()

DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed per request
ACTIONS = ("save", "restore", "erase")


def params_json(opts: InferenceOptions, max_tokens: int | None = None) -> dict[str, Any]:
    """Sampling options under llama-server's names (its slot and props ``params``)."""
    n_predict = -1 if max_tokens is None else max_tokens
    return {
        "seed": DEFAULT_SEED if opts.seed is None else opts.seed,
        "temperature": opts.temperature,
        "top_k": opts.top_k,
        "top_p": opts.top_p,
        "min_p": opts.min_p,
        "xtc_probability": opts.xtc_probability,
        "xtc_threshold": opts.xtc_threshold,
        "typical_p": opts.typical_p,
        "repeat_last_n": opts.repeat_last_n,
        "repeat_penalty": opts.repeat_penalty,
        "presence_penalty": opts.presence_penalty,
        "frequency_penalty": opts.frequency_penalty,
        "dry_multiplier": opts.dry_multiplier,
        "dry_base": opts.dry_base,
        "dry_allowed_length": opts.dry_allowed_length,
        "dry_penalty_last_n": opts.dry_penalty_last_n,
        "dry_sequence_breakers": list(opts.dry_sequence_breakers),
        "mirostat": opts.mirostat,
        "mirostat_tau": opts.mirostat_tau,
        "mirostat_eta": opts.mirostat_eta,
        "max_tokens": n_predict,
        "n_predict": n_predict,
        "ignore_eos": opts.ignore_eos,
        "stop": list(opts.stop),
        "n_probs": opts.logprobs or 0,
        "min_keep": 0,
        "grammar": opts.grammar or "",
        "logit_bias": [[t, b] for t, b in opts.logit_bias.items()],
    }


def slot_json(info: SlotInfo, detokenize) -> dict[str, Any]:
    """One slot in llama-server's shape; the request fields only once a request ran in it."""
    out: dict[str, Any] = {
        "id": info.id,
        "n_ctx": info.n_ctx,
        "speculative": info.speculative,
        "is_processing": info.is_processing,
    }
    if info.request_id is None:
        return out
    n_decoded = len(info.output_ids)
    remain = -1 if info.max_tokens is None else max(0, info.max_tokens - n_decoded)
    out |= {
        "id_task": info.request_id,
        "n_prompt_tokens": len(info.prompt_ids),
        "n_prompt_tokens_processed": info.n_prompt_processed,
        "n_prompt_tokens_cache": info.n_prompt_cached,
        "next_token": [
            {
                "has_next_token": info.has_next_token,
                "has_new_line": False,
                "n_remain": remain,
                "n_decoded": n_decoded,
            }
        ],
        "prompt": detokenize(list(info.prompt_ids)),
        "generated": detokenize(list(info.output_ids)),
    }
    if info.options is not None:
        out["params"] = params_json(info.options, info.max_tokens)
    return out


def _check_enabled(request: Request) -> None:
    if not state(request).settings.slots:
        raise NotSupportedError(
            "This server does not support slots endpoint. Start it with `--slots`"
        )


@router.get("/slots", responses=ERROR_RESPONSES)
async def get_slots(request: Request, model: str | None = None) -> JSONResponse:
    """Each slot of the model: its context, whether it is processing, and the request that
    runs (or last ran) in it. 501 with --no-slots."""
    _check_enabled(request)
    async with model_for(request, model) as (_, lm):
        infos = await lm.engine.slot_command("list")
        body = [slot_json(i, lm.vocab.detokenize) for i in infos]
    if request.query_params.get("fail_on_no_slot") and all(s["is_processing"] for s in body):
        return JSONResponse(
            {"error": {"code": 503, "message": "no slot available", "type": "unavailable_error"}},
            status_code=503,
        )
    return JSONResponse(body)


def _save_path(request: Request, filename: Any) -> tuple[str, str]:
    """The file a save or restore names, inside --slot-save-path; no traversal out of it."""
    folder = state(request).settings.slot_save_path
    if not folder:
        raise NotSupportedError(
            "This server does not support slots action. Start it with `--slot-save-path`"
        )
    if not isinstance(filename, str) or not valid_filename(filename):
        raise ValueError("filename: Invalid filename (a plain file name, no folders)")
    return str(Path(folder) / filename), filename


def valid_filename(name: str) -> bool:
    """A plain file name: no folder part, nothing hidden or special, at most 255 bytes."""
    return (
        0 < len(name.encode()) <= 255
        and name not in (".", "..")
        and not name.startswith(".")
        and not any(c in name for c in '/\\:*?"<>|')
        and all(c.isprintable() for c in name)
        and name.strip() == name
        and os.path.basename(name) == name
    )


@router.post("/slots/{id_slot}", responses=ERROR_RESPONSES)
async def post_slot(id_slot: str, request: Request, model: str | None = None) -> dict:
    """``?action=save|restore`` (body ``{"filename": ...}``, in --slot-save-path) or
    ``?action=erase`` (the slot's cached KV goes)."""
    _check_enabled(request)
    action = request.query_params.get("action")
    try:
        slot = int(id_slot)
    except ValueError:
        raise ValueError("id_slot: Invalid slot ID") from None
    if action not in ACTIONS:
        raise ValueError(f"action: Invalid action (one of {', '.join(ACTIONS)})")
    path = filename = None
    if action != "erase":
        try:
            body = await request.json()
        except ValueError:
            raise ValueError('send the body as JSON: {"filename": ...}') from None
        path, filename = _save_path(
            request, body.get("filename") if isinstance(body, dict) else None
        )
    async with model_for(request, model) as (_, lm):
        return await lm.engine.slot_command(action, slot, path=path, filename=filename)
