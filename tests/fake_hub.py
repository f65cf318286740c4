"""A Hugging Face Hub on loopback for the pull tests, and a GGUF splitter to host a split model.

It answers the routes huggingface_hub uses (read from huggingface_hub 2.4's source):
``GET /api/models/{repo}/tree/{revision}`` (list_repo_tree / list_repo_files), and ``HEAD`` /
``GET /{repo}/resolve/{revision}/{path}`` (hf_hub_download: X-Repo-Commit, ETag and
Content-Length on HEAD, Range on GET for a resumed download). Files are served from disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ferrousforge.inference.gguf import read_gguf

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_CHUNK = 1 << 20


@cache
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FakeHub:
    """Repos of files on disk, served over HTTP; every request is recorded in ``requests``
    as (method, path, Range header). ``faults["repo/file"]`` lists what the next GETs of a
    file meet, one entry each: "cut" (the body stops half way, as a dropped connection
    would) or "down" (503)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Path]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.faults: dict[str, list[str]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, path: str, source: Path) -> None:
        self.repos.setdefault(repo_id, {})[path] = source

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self) -> list[str]:
        """The files whose bytes were asked for (GET on resolve), in order."""
        return [
            p.split("/resolve/main/", 1)[1]
            for m, p, _ in self.requests
            if m == "GET" and "/resolve/" in p
        ]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the test output is the record
            pass

        def _error(self, code: str, status: int = 404) -> None:
            body = json.dumps({"error": code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _route(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
                return self._tree("/".join(parts[2:4]))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._file("/".join(parts[:2]), "/".join(parts[4:]))
            return self._error("NotFound")

        do_GET = do_HEAD = _route

        def _tree(self, repo_id: str) -> None:
            files = hub.repos.get(repo_id)
            if files is None:
                return self._error("RepoNotFound")
            entries = []
            for name, source in sorted(files.items()):
                size = source.stat().st_size
                lfs = {"oid": _sha256(source), "size": size, "pointerSize": 134}
                entries.append(
                    {"type": "file", "oid": lfs["oid"][:40], "size": size, "path": name, "lfs": lfs}
                )
            body = json.dumps(entries).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self, repo_id: str, name: str) -> None:
            if repo_id not in hub.repos:
                return self._error("RepoNotFound")
            source = hub.repos[repo_id].get(name)
            if source is None:
                return self._error("EntryNotFound")
            key = f"{repo_id}/{name}"
            fault = None
            if self.command == "GET" and hub.faults.get(key):
                fault = hub.faults[key].pop(0)
            if fault == "down":
                return self._error("ServiceUnavailable", 503)
            size = source.stat().st_size
            start, end = 0, size - 1
            wanted = self.headers.get("Range")
            if wanted and self.command == "GET":
                first, _, last = wanted.removeprefix("bytes=").partition("-")
                start, end = int(first), int(last) if last else size - 1
            self.send_response(206 if wanted and self.command == "GET" else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{_sha256(source)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if wanted and self.command == "GET":
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            stop = end + 1
            if fault == "cut":
                stop = start + (end + 1 - start) // 2
                self.close_connection = True
            with source.open("rb") as f:
                f.seek(start)
                left = stop - start
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    self.wfile.write(chunk)
                    left -= len(chunk)
            self.wfile.flush()

    return Handler


# ---- a valid two-part split of a GGUF (what llama.cpp's gguf-split writes) ------------------

_U16, _U32, _I32 = 2, 4, 5  # GGUF value types


def _kv(key: str, vtype: int, fmt: str, value: int) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + struct.pack(fmt, value)


def write_split(source: Path, first: Path, second: Path) -> None:
    """Split ``source`` into two GGUF files by tensors, with the ``split.*`` keys llama.cpp
    reads: the first part keeps all metadata, the second holds only its tensors."""
    info = read_gguf(source)
    raw = source.read_bytes()
    align = info.metadata.get("general.alignment", 32)
    t0 = info.tensors[0].name.encode()
    kv_end = raw.index(struct.pack("<Q", len(t0)) + t0, 24)  # the tensor infos begin here
    by_offset = sorted(info.tensors, key=lambda t: t.offset)
    ends = [t.offset for t in by_offset[1:]] + [len(raw) - info.data_offset]
    chunks = {
        t.name: raw[info.data_offset + t.offset : info.data_offset + e]
        for t, e in zip(by_offset, ends, strict=True)
    }
    half = len(by_offset) // 2
    for no, (path, tensors) in enumerate(((first, by_offset[:half]), (second, by_offset[half:]))):
        keys = [
            _kv("split.no", _U16, "<H", no),
            _kv("split.count", _U16, "<H", 2),
            _kv("split.tensors.count", _I32, "<i", len(by_offset)),
        ]
        if no and "general.alignment" in info.metadata:
            keys.append(_kv("general.alignment", _U32, "<I", align))
        own_kv = raw[24:kv_end] if no == 0 else b""
        n_kv = (struct.unpack_from("<Q", raw, 16)[0] if no == 0 else 0) + len(keys)
        header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), n_kv) + own_kv + b"".join(keys)
        infos, data = b"", bytearray()
        for t in tensors:
            name = t.name.encode()
            infos += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(t.shape))
            infos += struct.pack(f"<{len(t.shape)}Q", *t.shape)
            infos += struct.pack("<IQ", t.ggml_type, len(data))
            data += chunks[t.name]
            data += b"\0" * (-len(data) % align)
        head = header + infos
        head += b"\0" * (-len(head) % align)
        with path.open("wb") as f:
            f.write(head)
            f.write(data)


def copy_as(source: Path, target: Path) -> Path:
    """``target`` holding ``source``'s bytes (a link where the filesystem allows)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source)
    except OSError:
        shutil.copyfile(source, target)
    return target
