"""The command line: help everywhere, info, and run end to end with the default model."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import pytest
from model_traits import requires_chat_template

from ferrousforge import __version__
from ferrousforge.cli.main import build_parser, main
from ferrousforge.models.default_model import bundled_model_path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    "command", ["serve", "run", "chat", "info", "doctor", "pull", "list", "rm"]
)
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if command != "doctor":
        assert "examples:" in out


def test_serve_flags_come_from_the_settings() -> None:
    args = build_parser().parse_args(["serve", "--ctx-size", "512", "--api-key", "k"])
    assert args.ctx_size == 512 and args.api_key == ["k"] and args.port is None


def test_info_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "--json", str(bundled_model_path())]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "llama" and info["has_chat_template"] is True
    assert info["vocab_size"] > 1000 and info["context_length"] > 0
    assert info["quantization"] == "Q4_1" and info["parameters"] > 100_000_000


def test_info_unknown_model_fails_clearly(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "/no/such/model.gguf"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_serve_refuses_a_bad_model_file(tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    r = _cli("serve", "--model", str(bad))
    assert r.returncode == 2 and "not a GGUF file" in r.stderr


@pytest.mark.integration
def test_run_streams_then_prints_figures() -> None:
    r = _cli("run", "Name a color.", "--max-tokens", "4", "--temperature", "0", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "tokens/s" in r.stderr and "time to first token" in r.stderr


@pytest.mark.integration
@requires_chat_template
def test_chat_keeps_the_conversation_and_reuses_the_prefix() -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferrousforge.cli.main",
            "chat",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--threads",
            "2",
        ],
        input="Hello\nAnd again\n",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("tokens/s") == 2
    assert "prompt tokens cached" in p.stderr  # the second turn reused the first's KV


def test_version() -> None:
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ferrousforge {__version__}"
    assert re.fullmatch(r"ferrousforge \d+\.\d+\.\d+", r.stdout.strip())


@pytest.mark.parametrize("command", ["serve", "info"])
def test_a_corrupt_header_is_an_error_not_a_traceback(tmp_path, command: str) -> None:
    """A GGUF whose general.alignment is a string was a TypeError traceback."""
    key, value = b"general.alignment", b"32"
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    header += struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(value)) + value
    bad = tmp_path / "align.gguf"
    bad.write_bytes(header)
    args = ["serve", "--model", str(bad)] if command == "serve" else ["info", str(bad)]
    r = _cli(*args)
    assert r.returncode in (1, 2) and "Traceback" not in r.stderr
    assert "general.alignment is string, expected uint32" in r.stderr


def test_the_default_model_is_named_after_the_file_used(tmp_path, monkeypatch, model_path) -> None:
    """With TEST_MODEL_PATH set, the default model's id is that file's name, for every command."""
    from ferrousforge.models.registry import model_specs, resolve_model_path
    from ferrousforge.settings import ServerSettings

    other = tmp_path / "other-model.gguf"
    other.symlink_to(model_path)
    monkeypatch.setenv("TEST_MODEL_PATH", str(other))
    assert resolve_model_path(None) == ("other-model", other)
    assert [s.id for s in model_specs(ServerSettings())] == ["other-model"]
    # the alias still names the bundled file, under its own name
    mid, path = resolve_model_path("smollm2-135m-instruct")
    assert mid == "smollm2-135m-instruct" and path.name != "other-model.gguf"


@pytest.mark.integration
def test_run_names_the_model_it_loaded(tmp_path, model_path) -> None:
    other = tmp_path / "other-model.gguf"
    other.symlink_to(model_path)
    r = subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", "run", "Hi", "--max-tokens", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "TEST_MODEL_PATH": str(other)},
    )
    assert r.returncode == 0, r.stderr
    assert "loaded other-model in" in r.stderr and "smollm2" not in r.stderr.lower()
