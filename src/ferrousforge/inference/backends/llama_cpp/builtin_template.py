"""llama.cpp's built-in chat templates (llama_chat_apply_template): llama-server's --no-jinja.

libllama knows a fixed set of chat formats written in C++ (chatml, llama3, mistral-v7, ...).
It picks one from a name (``--chat-template llama3``) or by looking for marker strings in a
Jinja source (the model's own template); it never runs Jinja, so tools and template variables
have no place there.
"""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any

from ferrousforge.errors import ChatTemplateError


def builtin_template_names(lib: ModuleType) -> list[str]:
    """The names libllama accepts for its built-in templates."""
    n = lib.llama_chat_builtin_templates(None, 0)
    out = (ctypes.c_char_p * n)()
    n = lib.llama_chat_builtin_templates(out, n)
    return [name.decode() for name in out[:n] if name]


def is_supported(lib: ModuleType, template: str) -> bool:
    """Whether libllama recognises ``template`` (a built-in name or a Jinja source)."""
    msg = (lib.llama_chat_message * 1)()
    msg[0].role, msg[0].content = b"user", b"test"
    return lib.llama_chat_apply_template(template.encode(), msg, 1, True, None, 0) >= 0


def apply_builtin_template(
    lib: ModuleType, template: str, messages: list[dict[str, Any]], add_generation_prompt: bool
) -> str:
    """Render ``messages`` (role and text content) with the built-in format ``template`` names
    or resembles; ChatTemplateError when libllama knows no such format."""
    # ctypes keeps no reference to the bytes it is handed: hold them for the calls.
    encoded = [(str(m["role"]).encode(), _text(m.get("content")).encode()) for m in messages]
    chat = (lib.llama_chat_message * len(encoded))()
    for i, (role, content) in enumerate(encoded):
        chat[i].role, chat[i].content = role, content
    tmpl = template.encode()
    size = sum(len(r) + len(c) for r, c in encoded) * 5 // 4 + 256
    for _ in range(2):  # the first call says how large the prompt is when the guess is short
        buf = ctypes.create_string_buffer(size)
        n = lib.llama_chat_apply_template(
            tmpl, chat, len(encoded), add_generation_prompt, buf, size
        )
        if n < 0:
            raise ChatTemplateError(
                "this chat template is not one of llama.cpp's built-in templates "
                "(rendering without Jinja, as --no-jinja asks): use --jinja, or name a built-in "
                "template with --chat-template"
            )
        if n <= size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n
    raise AssertionError("llama_chat_apply_template: the prompt grew between two calls")


def _text(content: Any) -> str:
    """Message content as llama-server's legacy path joins it: text parts, one per line."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = ""
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                out += ("\n" if out else "") + str(part.get("text", ""))
        return out
    raise ChatTemplateError(f"message content must be a string or a list of parts, not {content!r}")
