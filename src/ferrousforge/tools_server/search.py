"""Built-in search tools: file_glob_search and grep_search (llama-server's names and results)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ferrousforge.tools_server.base import ServerTool, object_schema, resolve, text_lines, threaded

MAX_RESULTS = 100
LIST_TIMEOUT_S = 15  # budget for one listing (git or the walker)
# Listed but never walked: they can be enormous.
JUNK_DIRS = frozenset(
    (".git", ".svn", ".hg", "node_modules", "__pycache__", ".venv", "venv", "dist", "build")
    + ("target", ".cache", ".idea", ".vscode")
)


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` crosses directories, ``*`` and ``?`` do not."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 1 :]:
            j = pattern.index("]", i + 1)
            out.append("[" + pattern[i + 1 : j].replace("!", "^", 1) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, rel: str) -> bool:
    """A pattern without '/' matches the basename at any depth; otherwise the whole path."""
    if "/" not in pattern:
        return bool(_glob_regex(pattern).fullmatch(rel.rsplit("/", 1)[-1]))
    if pattern == "**" or pattern.startswith(("**/", "/")):
        return bool(_glob_regex(pattern).fullmatch(rel))
    return bool(_glob_regex("**/" + pattern).fullmatch(rel))


@dataclass
class Listing:
    entries: list[tuple[str, bool]] = field(default_factory=list)  # (relative path, is dir)
    truncated: bool = False
    error: str = ""


def list_entries(base: str, max_depth: int, kind: str) -> Listing:
    """Entries under ``base``: git's view of a repository for files, else a walk."""
    out = Listing()
    if not os.path.isdir(base):
        out.error = "path does not exist or is not a directory"
        return out
    if kind == "file":  # git ls-files knows .gitignore; it cannot list directories
        try:
            res = subprocess.run(
                ["git", "-C", base, "ls-files", "--cached", "--others", "--exclude-standard"],
                capture_output=True,
                timeout=LIST_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            res = None
        if res is not None and res.returncode == 0:
            for line in res.stdout.decode(errors="replace").splitlines():
                if not line or (max_depth > 0 and line.count("/") + 1 > max_depth):
                    continue
                if os.path.isfile(os.path.join(base, line)):
                    out.entries.append((line, False))
            return out
    deadline = time.monotonic() + LIST_TIMEOUT_S
    stack = [(base, "", 0)]
    while stack:
        folder, rel_dir, depth = stack.pop()
        try:
            items = list(os.scandir(folder))
        except OSError:
            out.truncated = True
            continue
        for item in items:
            if time.monotonic() > deadline:
                out.truncated = True
                return out
            rel = f"{rel_dir}{item.name}"
            try:
                is_dir = item.is_dir()
                is_file = not is_dir and item.is_file()
            except OSError:
                continue
            if is_dir:
                if kind in ("dir", "all"):
                    out.entries.append((rel, True))
                walk = item.name not in JUNK_DIRS and not item.is_symlink()
                if walk and (max_depth == 0 or depth + 1 < max_depth):
                    stack.append((item.path, rel + "/", depth + 1))
            elif is_file and kind in ("file", "all"):
                out.entries.append((rel, False))
    return out


def _file_glob_search(params: dict[str, Any]) -> dict[str, Any]:
    path = params["path"]
    base = os.path.abspath(resolve(path, params))
    include = params.get("include") or "**"
    exclude = params.get("exclude") or ""
    kind = params.get("type", "file")
    max_depth = max(0, int(params.get("max_depth", 0)))
    limit = int(params.get("limit", MAX_RESULTS))
    if limit < 1:
        return {"error": f"invalid limit: {limit} (expected 1 or more)"}
    limit = min(limit, MAX_RESULTS)
    if kind not in ("file", "dir", "all"):
        return {"error": f'invalid type: {kind} (expected "file", "dir" or "all")'}
    listing = list_entries(base, max_depth, kind)
    if listing.error:
        return {"error": f"{listing.error}: {path}"}
    matches = [
        (rel, is_dir)
        for rel, is_dir in listing.entries
        if glob_match(include, rel) and not (exclude and glob_match(exclude, rel))
    ]
    shown = matches[:limit]
    text = "".join(f"{rel}{'/' if is_dir else ''}\n" for rel, is_dir in shown)
    text += f"\n---\nTotal matches: {len(matches)}\n"
    if len(matches) > len(shown):
        text += (
            f"[{len(shown)} results limit reached ({len(matches)} total matches). "
            "Refine the glob pattern to narrow the search.]\n"
        )
    if listing.truncated:
        text += "[results truncated: time budget or unreadable directory]\n"
    entries = [{"path": rel, "type": "dir" if d else "file"} for rel, d in shown]
    return {"plain_text_response": text, "entries": entries, "base": base}


def _grep_search(params: dict[str, Any]) -> dict[str, Any]:
    path, source = params["path"], params["pattern"]
    include = params.get("include") or "**"
    exclude = params.get("exclude") or ""
    ctx = max(0, int(params.get("context_lines", 0)))
    show_num = bool(params.get("return_line_numbers")) or ctx > 0
    if params.get("literal"):
        source = re.escape(source)
    try:
        pattern = re.compile(source, re.IGNORECASE if params.get("ignore_case") else 0)
    except re.error as e:
        return {"error": f"invalid regex: {e}"}
    full = resolve(path, params)
    if os.path.isfile(full):
        files = [(full, path)]
    elif os.path.isdir(full):
        listing = list_entries(full, 0, "file")
        if listing.error:
            return {"error": f"{listing.error}: {path}"}
        files = [
            (os.path.join(full, rel), rel)
            for rel, _ in listing.entries
            if glob_match(include, rel) and not (exclude and glob_match(exclude, rel))
        ]
    else:
        return {"error": f"path does not exist: {path}"}
    out: list[str] = []
    total, capped = 0, False
    for fpath, shown in files:
        try:
            with open(fpath, encoding="utf-8", errors="replace", newline="") as f:
                lines = text_lines(f.read())
        except OSError:
            continue
        for i, line in enumerate(lines):
            if total >= MAX_RESULTS:
                capped = True
                break
            if not pattern.search(line):
                continue
            for j in range(max(0, i - ctx), min(len(lines) - 1, i + ctx) + 1):
                sep = ":" if j == i else "-"
                out.append(f"{shown}{sep}{f'{j + 1}{sep}' if show_num else ''}{lines[j]}\n")
            if ctx:
                out.append("--\n")
            total += 1
        if capped:
            break
    text = "".join(out) + f"\n---\nTotal matches: {total}\n"
    if capped:
        text += (
            f"[{MAX_RESULTS} matches limit reached. Narrow the path/pattern/include to see more.]\n"
        )
    return {"plain_text_response": text}


def search_tools() -> list[ServerTool]:
    """file_glob_search and grep_search."""
    s, i, b = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
    skips = "Respects .gitignore in a git repository, and common junk directories (.git, "
    skips += "node_modules, build, dist, etc.) otherwise."
    return [
        ServerTool(
            "file_glob_search",
            "File search",
            "builtin",
            write=False,
            uses_cwd=True,
            description="Find files (or directories) under a base directory by glob. " + skips,
            parameters=object_schema(
                {
                    "path": {**s, "description": "Base directory to search in"},
                    "include": {**s, "description": 'Glob of entries to include (default "**")'},
                    "exclude": {**s, "description": "Glob pattern for files to exclude"},
                    "type": {**s, "description": 'Entry type: "file" (default), "dir" or "all"'},
                    "max_depth": {**i, "description": "Depth limit (0: none; 1: children)"},
                    "limit": {**i, "description": f"Most results (max {MAX_RESULTS})"},
                },
                ["path"],
            ),
            invoke=threaded(_file_glob_search),
        ),
        ServerTool(
            "grep_search",
            "Grep search",
            "builtin",
            write=False,
            uses_cwd=True,
            description="Search file contents for a regular expression. " + skips,
            parameters=object_schema(
                {
                    "path": {**s, "description": "File or directory to search in"},
                    "pattern": {**s, "description": "Regular expression (or literal) to find"},
                    "include": {**s, "description": "Glob pattern to filter files"},
                    "exclude": {**s, "description": "Glob pattern to exclude files"},
                    "return_line_numbers": {**b, "description": "Include line numbers"},
                    "literal": {**b, "description": "Pattern is a literal string"},
                    "ignore_case": {**b, "description": "Case-insensitive search"},
                    "context_lines": {**i, "description": "Lines of context around matches"},
                },
                ["path", "pattern"],
            ),
            invoke=threaded(_grep_search),
        ),
    ]
