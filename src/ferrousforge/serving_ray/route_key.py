"""The text a request's prefix-cache affinity is judged by, read leniently from its body.

The key is the model name, then the system prompt, the messages (role and text), the prompt
or the input, each separated by a control character, so a conversation's next turn starts
with the previous turn's key. A body that is not JSON, or has none of these, gives "".
"""

from __future__ import annotations

from typing import Any

import orjson

SEP = "\x1e"  # record separator: never typed into a prompt
MAX_KEY_CHARS = 64 * 1024  # beyond this the prefix decides nothing more


def _text(value: Any) -> str:
    """The text of a content field: a string, a list of parts, token ids, or a dict part."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        for field in ("text", "content", "input_text"):
            if field in value:
                return _text(value[field])
    return ""


def route_key(body: bytes) -> str:
    """The affinity key of a request body (see the module docstring)."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [_text(data.get("model")), _text(data.get("system"))]
    parts += [_text(data.get(f)) for f in ("instructions",)]
    messages = data.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                parts.append(f"{_text(m.get('role'))}:{_text(m.get('content'))}")
    for field in ("prompt", "input", "content"):
        if field in data:
            parts.append(_text(data[field]))
    key = SEP.join(parts)
    return key[:MAX_KEY_CHARS] if key.strip(SEP) else ""
