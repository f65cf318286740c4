"""The shapes llama-server takes as embedding input, flattened into one prompt per input.

A prompt is a text, token ids, or a mixed list of both (texts are tokenized where they
stand). ``input`` may be one prompt or a list of them; an entry may also be an object,
``{"prompt_string": "..."}`` or ``{"content": [{"type": "text", "text": "..."}, ...]}``
(OpenAI's content parts, the texts joined). Anything else is a ValueError naming it.
"""

from __future__ import annotations

from typing import Any

from ferrousforge.api.schemas import MAX_PROMPT_TOKENS, MAX_TEXT_CHARS

MAX_INPUTS = 2048  # OpenAI's own limit per request

Prompt = str | list[int | str]
_MEDIA = {"image_url": "images", "input_audio": "audio", "input_video": "video"}


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_text(text: str, where: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{where}: longer than {MAX_TEXT_CHARS} characters")
    return text


def _mixed(items: list, where: str) -> list[int | str]:
    if not items:
        raise ValueError(f"{where}: must not be empty")
    if len(items) > MAX_PROMPT_TOKENS:
        raise ValueError(f"{where}: more than {MAX_PROMPT_TOKENS} items")
    for j, x in enumerate(items):
        if isinstance(x, str):
            _check_text(x, f"{where}[{j}]")
        elif not _is_id(x):
            raise ValueError(f"{where}[{j}]: must be a token id or a text")
    return items


def _content(parts: Any, where: str) -> str:
    if not isinstance(parts, list):
        raise ValueError(f"{where}: must be a list of content parts")
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in _MEDIA:
            raise ValueError(f"{where}[{j}]: this model takes no {_MEDIA[kind]}, only text")
        else:
            raise ValueError(f"{where}[{j}]: must be a part of type 'text' with a 'text'")
    return _check_text("".join(texts), where)


def _entry(x: Any, where: str) -> Prompt:
    if isinstance(x, str):
        return _check_text(x, where)
    if isinstance(x, list):
        return _mixed(x, where)
    if isinstance(x, dict):
        if "content" in x:
            return _content(x["content"], f"{where}.content")
        if isinstance(x.get("prompt_string"), str):
            if x.get("multimodal_data"):
                raise ValueError(f"{where}.multimodal_data: this model takes only text")
            return _check_text(x["prompt_string"], f"{where}.prompt_string")
    raise ValueError(
        f"{where}: must be a text, token ids, {{'prompt_string': ...}} or {{'content': [...]}}"
    )


def parse_prompts(x: Any, field: str = "input") -> list[Prompt]:
    """One prompt per input: a list holding any token id is a single prompt."""
    if isinstance(x, list):
        if not x:
            raise ValueError(f"{field}: must not be empty")
        if any(_is_id(v) for v in x):
            return [_mixed(x, field)]
        if len(x) > MAX_INPUTS:
            raise ValueError(f"{field}: more than {MAX_INPUTS} inputs")
        return [_entry(v, f"{field}[{i}]") for i, v in enumerate(x)]
    return [_entry(x, field)]
