"""Server-sent events: incremental parsing, and what one completion stream delivered."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

DONE = "[DONE]"


class SSEParser:
    """Turns a byte stream into the ``data`` payloads of its events.

    Handles events split across reads, CRLF line ends, comments and
    multi-line data (joined with newlines, as the SSE spec says).
    """

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the payloads of the events they complete."""
        self._buf += chunk
        out: list[str] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl == -1:
                return out
            line = self._buf[:nl].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buf = self._buf[nl + 1 :]
            if not line:  # a blank line ends the event
                if self._data:
                    out.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
            # other fields (event:, id:, retry:) and comments (":") carry nothing we need

    def close(self) -> list[str]:
        """End of stream: an event without its final blank line still counts."""
        out = self.feed(b"\n\n") if self._buf or self._data else []
        self._buf = b""
        return out


@dataclass(slots=True)
class StreamTally:
    """What a streamed /v1/completions response delivered, chunk by chunk."""

    content_times: list[float] = field(default_factory=list)  # arrival of chunks with text
    text: str = ""
    usage_tokens: int | None = None  # completion_tokens from a usage chunk, if sent
    finish_reason: str | None = None
    done: bool = False  # saw [DONE]
    error: str | None = None

    @property
    def n_tokens(self) -> int:
        """Tokens received: the server's own count if it sent usage, else the text chunks."""
        return self.usage_tokens if self.usage_tokens is not None else len(self.content_times)

    @property
    def counted_by(self) -> str:
        return "usage" if self.usage_tokens is not None else "chunks"

    def add(self, payload: str, now: float) -> None:
        """Account for one event payload that arrived at ``now``."""
        if payload.strip() == DONE:
            self.done = True
            return
        try:
            event = json.loads(payload)
        except json.JSONDecodeError:
            self.error = f"bad JSON in stream: {payload[:80]!r}"
            return
        if not isinstance(event, dict):
            return
        if "error" in event:
            err = event["error"]
            self.error = str(err.get("message", err) if isinstance(err, dict) else err)
            return
        usage = event.get("usage")
        if isinstance(usage, dict) and "completion_tokens" in usage:
            self.usage_tokens = int(usage["completion_tokens"])
        for choice in event.get("choices") or []:
            piece = choice.get("text")
            if piece is None:  # a chat chunk
                piece = (choice.get("delta") or {}).get("content")
            if piece:
                self.text += piece
                self.content_times.append(now)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
