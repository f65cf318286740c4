"""Built-in file tools: read_file, write_file, edit_file (llama-server's names and results)."""

from __future__ import annotations

import base64
import itertools
import os
from typing import Any

from ferrousforge.tools_server.base import ServerTool, object_schema, resolve, text_lines, threaded

READ_MAX_BYTES = 16 * 1024  # without a line range, larger files are refused
READ_MAX_BYTES_BASE64 = 32 * 1024 * 1024


def _read_file(params: dict[str, Any]) -> dict[str, Any]:
    path = params["path"]
    full = resolve(path, params)
    start = int(params.get("start_line", 1))
    end = int(params.get("end_line", -1))
    try:
        size = os.stat(full).st_size
    except OSError:
        return {"error": f"cannot stat file: {path}"}
    if params.get("resp_type") == "base64":  # from the x-resp-type header, not the model
        if size > READ_MAX_BYTES_BASE64:
            return {"error": f"file too large ({size} bytes, max {READ_MAX_BYTES_BASE64})"}
        try:
            data = open(full, "rb").read()  # noqa: SIM115 (closed by refcount)
        except OSError:
            return {"error": f"failed to open file: {path}"}
        return {"base64": base64.b64encode(data).decode(), "size_bytes": len(data)}
    if size > READ_MAX_BYTES and end == -1:
        return {
            "error": f"file too large ({size} bytes, max {READ_MAX_BYTES}). "
            "Use start_line/end_line to read a portion."
        }
    try:
        with open(full, encoding="utf-8", errors="replace", newline="") as f:
            text = f.read()
    except OSError:
        return {"error": f"failed to open file: {path}"}
    out: list[str] = []
    used = 0
    for n, line in enumerate(text_lines(text), 1):
        if n < start:
            continue
        if end != -1 and n > end:
            break
        piece = f"{n}\u2192{line}\n" if params.get("append_loc") else f"{line}\n"
        if used + len(piece) > READ_MAX_BYTES:
            out.append("[output truncated]")
            break
        out.append(piece)
        used += len(piece)
    return {"plain_text_response": "".join(out)}


def _write(full: str, content: str) -> bool:
    try:
        os.makedirs(os.path.dirname(full) or ".", exist_ok=True)
        with open(full, "w", encoding="utf-8", newline="") as f:
            f.write(content)
    except OSError:
        return False
    return True


def _write_file(params: dict[str, Any]) -> dict[str, Any]:
    path, content = params["path"], params["content"]
    if not _write(resolve(path, params), content):
        return {"error": f"failed to write file: {path}"}
    return {"result": "file written successfully", "path": path, "bytes": len(content.encode())}


def _count(haystack: str, needle: str) -> int:
    return haystack.count(needle)  # non-overlapping, as llama-server counts


def _edit_file(params: dict[str, Any]) -> dict[str, Any]:
    path, edits = params["path"], params.get("edits")
    if not isinstance(edits, list) or not edits:
        return {"error": '"edits" must be a non-empty array'}
    pairs: list[tuple[str, str]] = []
    for i, e in enumerate(edits):
        old, new = str(e["old_text"]), str(e["new_text"])
        if not old:
            return {"error": f"edits[{i}].old_text must not be empty"}
        pairs.append((old, new))
    full = resolve(path, params)
    try:
        with open(full, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return {"error": f"failed to open file: {path}"}
    # Exact matches only: llama-server also tries a whitespace/quote-normalised match.
    matched: list[tuple[int, int, int, str]] = []  # (start, length, edit index, new text)
    for i, (old, new) in enumerate(pairs):
        n = _count(text, old)
        if n == 0:
            return {
                "error": f"could not find edits[{i}].old_text in {path}, it must match the "
                "file's current content exactly"
            }
        if n > 1:
            return {
                "error": f"found {n} occurrences of edits[{i}].old_text in {path}, "
                "it must be unique"
            }
        matched.append((text.index(old), len(old), i, new))
    matched.sort()
    for (s1, l1, i1, _), (s2, _, i2, _) in itertools.pairwise(matched):
        if s1 + l1 > s2:
            return {
                "error": f"edits[{i1}] and edits[{i2}] overlap in {path}; merge them into one "
                "edit or target disjoint regions"
            }
    out, pos = [], 0
    for start, length, _, new in matched:
        out += [text[pos:start], new]
        pos = start + length
    result = "".join(out) + text[pos:]
    if result == text:
        return {"error": "no changes made: the replacement(s) produced identical content"}
    if not _write(full, result):
        return {"error": f"failed to write file: {path}"}
    return {"result": "file edited successfully", "path": path, "edits_applied": len(matched)}


def file_tools() -> list[ServerTool]:
    """read_file, write_file and edit_file."""
    s, i, b = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
    return [
        ServerTool(
            "read_file",
            "Read file",
            "builtin",
            write=False,
            uses_cwd=True,
            description="Read the contents of a file. Optionally specify a 1-based line range. "
            "If append_loc is true, each line is prefixed with its line number.",
            parameters=object_schema(
                {
                    "path": {**s, "description": "Path to the file"},
                    "start_line": {**i, "description": "First line to read, 1-based (default: 1)"},
                    "end_line": {**i, "description": "Last line to read, 1-based inclusive"},
                    "append_loc": {**b, "description": "Prefix each line with its line number"},
                },
                ["path"],
            ),
            invoke=threaded(_read_file),
        ),
        ServerTool(
            "write_file",
            "Write file",
            "builtin",
            write=True,
            uses_cwd=True,
            description="Write content to a file, creating it (including parent directories) "
            "if it does not exist. May use with edit_file for more complex edits.",
            parameters=object_schema(
                {
                    "path": {**s, "description": "Path of the file to write"},
                    "content": {**s, "description": "Content to write"},
                },
                ["path", "content"],
            ),
            invoke=threaded(_write_file),
        ),
        ServerTool(
            "edit_file",
            "Edit file",
            "builtin",
            write=True,
            uses_cwd=True,
            description="Edit a file by replacing exact text. Each old_text must be unique in "
            "the file and edits must not overlap.",
            parameters=object_schema(
                {
                    "path": {**s, "description": "Path to the file to edit"},
                    "edits": {
                        "type": "array",
                        "description": "One or more exact text replacements to apply",
                        "items": object_schema(
                            {
                                "old_text": {**s, "description": "Exact, unique text to find"},
                                "new_text": {**s, "description": "Text to replace it with"},
                            },
                            ["old_text", "new_text"],
                        ),
                    },
                },
                ["path", "edits"],
            ),
            invoke=threaded(_edit_file),
        ),
    ]
