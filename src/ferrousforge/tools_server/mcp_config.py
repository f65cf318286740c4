"""MCP server definitions: the Cursor-style ``{"mcpServers": {name: {command, args, env}}}``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server, run as a child process speaking JSON-RPC on stdio."""

    name: str
    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_ms: int = 30_000  # per tool call


def parse_mcp_servers(text: str) -> list[McpServerConfig]:
    """The servers in one JSON document; ValueError if it is not JSON."""
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"failed to parse MCP config JSON: {e}") from None
    servers = doc.get("mcpServers") if isinstance(doc, dict) else None
    if not isinstance(servers, dict):
        log.warning("MCP config: no servers found in JSON")
        return []
    out = []
    for name, cfg in servers.items():
        if not isinstance(cfg, dict) or not cfg.get("command"):
            log.warning("MCP server '%s' has no command, skipping", name)
            continue
        out.append(
            McpServerConfig(
                name=name,
                command=str(cfg["command"]),
                args=[str(a) for a in cfg.get("args") or []],
                env={str(k): str(v) for k, v in (cfg.get("env") or {}).items()},
                cwd=cfg.get("cwd") or None,
                timeout_ms=int(cfg.get("timeout_ms", 30_000)),
            )
        )
    return out


def load_mcp_servers(config_path: str | None, config_json: str | None) -> list[McpServerConfig]:
    """The servers of --mcp-servers-config then --mcp-servers-json (a repeated name: first wins).
    ValueError if the file cannot be read or either is not JSON."""
    texts = []
    if config_path:
        try:
            texts.append(Path(config_path).expanduser().read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(
                f"failed to open MCP config file {config_path}: {e.strerror}"
            ) from None
    if config_json:
        texts.append(config_json)
    out: dict[str, McpServerConfig] = {}
    for text in texts:
        for cfg in parse_mcp_servers(text):
            if cfg.name in out:
                log.warning("MCP config: duplicate server name '%s', skipping", cfg.name)
                continue
            out[cfg.name] = cfg
    return list(out.values())
