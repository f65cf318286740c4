"""The built-in server tools on a temporary folder (model-free), as llama-server answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ferrousforge.tools_server.base import ToolRuntimeError, check_runtime
from ferrousforge.tools_server.registry import builtin_tools
from ferrousforge.tools_server.search import glob_match

TOOLS = {t.name: t for t in builtin_tools()}


async def call(name: str, **params: Any) -> dict[str, Any]:
    return await TOOLS[name].invoke(params, None)


async def test_write_read_edit_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "a.txt")
    assert (await call("write_file", path=path, content="one\ntwo\nthree\n"))["result"] == (
        "file written successfully"
    )
    assert await call("read_file", path=path) == {"plain_text_response": "one\ntwo\nthree\n"}
    assert await call("read_file", path=path, start_line=2, end_line=2, append_loc=True) == {
        "plain_text_response": "2\u2192two\n"
    }
    edits = [{"old_text": "two", "new_text": "2"}, {"old_text": "three\n", "new_text": "3\n4\n"}]
    res = await call("edit_file", path=path, edits=edits)
    assert (res["result"], res["edits_applied"]) == ("file edited successfully", 2)
    assert Path(path).read_text() == "one\n2\n3\n4\n"


async def test_edit_refusals(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("dup\ndup\nx y\n")
    res = await call("edit_file", path=str(path), edits=[{"old_text": "dup", "new_text": "z"}])
    assert "unique" in res["error"]
    overlap = [{"old_text": "dup\nx", "new_text": "a"}, {"old_text": "x y", "new_text": "b"}]
    assert "overlap" in (await call("edit_file", path=str(path), edits=overlap))["error"]
    missing = [{"old_text": "nope", "new_text": "b"}]
    assert "could not find" in (await call("edit_file", path=str(path), edits=missing))["error"]
    assert path.read_text() == "dup\ndup\nx y\n"


async def test_relative_paths_use_the_cwd(tmp_path: Path) -> None:
    (tmp_path / "rel.txt").write_text("hello\n")
    res = await call("read_file", path="rel.txt", cwd=str(tmp_path))
    assert res == {"plain_text_response": "hello\n"}
    assert "cannot stat" in (await call("read_file", path=str(tmp_path / "none")))["error"]


async def test_file_glob_search_types_depth_limit_and_junk(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.o").write_text("")
    (tmp_path / "top.txt").write_text("")
    (tmp_path / "a" / "mid.txt").write_text("")
    (tmp_path / "a" / "b" / "deep.md").write_text("")
    res = await call("file_glob_search", path=str(tmp_path), type="all")
    entries = {e["path"]: e["type"] for e in res["entries"]}
    assert entries == {
        "a": "dir",
        "a/b": "dir",
        "build": "dir",  # listed, never walked
        "top.txt": "file",
        "a/mid.txt": "file",
        "a/b/deep.md": "file",
    }
    assert "a/b/\n" in res["plain_text_response"]
    res = await call("file_glob_search", path=str(tmp_path), include="*.txt", max_depth=1)
    assert [e["path"] for e in res["entries"]] == ["top.txt"]
    res = await call("file_glob_search", path=str(tmp_path), limit=1)
    assert len(res["entries"]) == 1 and "Total matches: 3" in res["plain_text_response"]
    res = await call("file_glob_search", path=str(tmp_path), type="bogus")
    assert "invalid type" in res["error"]


async def test_grep_search(tmp_path: Path) -> None:
    (tmp_path / "x.py").write_text("alpha\nbeta\ngamma\n")
    (tmp_path / "y.txt").write_text("beta again\n")
    res = await call(
        "grep_search", path=str(tmp_path), pattern="bet+a", include="*.py", return_line_numbers=True
    )
    assert res["plain_text_response"] == "x.py:2:beta\n\n---\nTotal matches: 1\n"
    res = await call("grep_search", path=str(tmp_path), pattern="(", literal=True)
    assert "Total matches: 0" in res["plain_text_response"]
    assert "invalid regex" in (await call("grep_search", path=str(tmp_path), pattern="("))["error"]


async def test_exec_shell_command_output_exit_code_and_timeout(tmp_path: Path) -> None:
    res = await call(
        "exec_shell_command", command="echo out; echo err >&2; exit 3", cwd=str(tmp_path)
    )
    text = res["plain_text_response"]
    assert "out" in text and "err" in text and text.endswith("[exit code: 3]")
    res = await call("exec_shell_command", command="sleep 30", timeout=1)
    assert res["plain_text_response"].endswith("[exit due to timed out]")
    await call("exec_shell_command", command="echo hi > made.txt", cwd=str(tmp_path))
    assert (tmp_path / "made.txt").read_text() == "hi\n"


async def test_exec_shell_command_streams_chunks() -> None:
    chunks: list[str] = []

    async def push(chunk: str) -> bool:
        chunks.append(chunk)
        return True

    assert await TOOLS["exec_shell_command"].invoke({"command": "echo hello"}, push) == {}
    assert "hello" in "".join(chunks) and chunks[-1] == "\n[exit code: 0]"


def test_glob_match_bare_patterns_match_basenames() -> None:
    assert glob_match("*.py", "a/b/c.py")
    assert glob_match("src/*.py", "x/src/c.py")
    assert not glob_match("src/*.py", "src/a/c.py")
    assert glob_match("src/**/*.py", "src/a/b/c.py")
    assert glob_match("**", "a/b")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fake:x", "unknown tool runtime"),
        ("ssh:-oProxyCommand=x", "invalid ssh target"),
        ("docker-container:--privileged", "invalid container id"),
        ("docker-container:abc123", "not supported by FerrousForge"),
    ],
)
def test_tool_runtimes_are_refused_by_name(spec: str, message: str) -> None:
    with pytest.raises(ToolRuntimeError, match=message):
        check_runtime(spec)
