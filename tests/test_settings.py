"""The settings model: env vars, generated CLI flags, the TOML file, and their precedence."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from ferrousforge.models.registry import model_specs
from ferrousforge.settings import (
    ServerSettings,
    add_settings_arguments,
    load_settings,
    read_config,
    settings_from_args,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("FERROUSFORGE_"):
            monkeypatch.delenv(k)


def _parse(argv: list[str]) -> dict:
    p = argparse.ArgumentParser()
    add_settings_arguments(p)
    return settings_from_args(p.parse_args(argv))


def test_every_field_is_a_flag() -> None:
    p = argparse.ArgumentParser()
    add_settings_arguments(p)
    flags = {a.dest for a in p._actions}
    assert set(ServerSettings.model_fields) <= flags
    for required in (
        "--model",
        "--host",
        "--port",
        "--api-key",
        "--parallel",
        "--threads",
        "--ctx-size",
        "--batch-size",
        "--max-waiting",
        "--max-tokens-limit",
        "--max-body-bytes",
        "--cors-origins",
        "--llama-lib",
    ):
        assert required in p._option_string_actions


def test_flags_override_env_and_env_overrides_file(monkeypatch, tmp_path: Path) -> None:
    cfg = tmp_path / "ff.toml"
    cfg.write_text('[server]\nport = 7000\nparallel = 3\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("FERROUSFORGE_PORT", "7100")
    monkeypatch.setenv("FERROUSFORGE_PARALLEL", "5")
    s = load_settings(_parse(["--parallel", "6"]), read_config(cfg))
    assert (s.parallel, s.port, s.host) == (6, 7100, "0.0.0.0")


def test_api_keys_from_env_are_comma_separated_and_flags_repeat(monkeypatch) -> None:
    monkeypatch.setenv("FERROUSFORGE_API_KEY", "a, b")
    assert load_settings().api_key == ["a", "b"]
    assert load_settings(_parse(["--api-key", "x", "--api-key", "y"])).api_key == ["x", "y"]


def test_bounds_are_enforced() -> None:
    with pytest.raises(ValidationError):
        load_settings({"parallel": 0})
    with pytest.raises(ValidationError):
        load_settings({"port": 70000})


def test_config_declares_several_models_with_aliases(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    cfg = tmp_path / "ff.toml"
    cfg.write_text(
        '[server]\nparallel = 2\n\n[[models]]\nalias = "small"\npath = "a.gguf"\n'
        'ctx_size = 512\n\n[[models]]\nalias = "big"\npath = "/models/b.gguf"\n'
        "parallel = 8\nthreads = 1\n"
    )
    config = read_config(cfg)
    settings = load_settings({}, config)
    specs = model_specs(settings, config.models)
    assert [s.id for s in specs] == ["small", "big"]
    assert specs[0].path == tmp_path / "a.gguf"  # relative to the config file
    assert (specs[0].config.context_size, specs[0].config.max_parallel) == (512, 2)
    assert (specs[1].config.max_parallel, specs[1].config.num_threads) == (8, 1)
    # --model picks one alias out of the file
    only = model_specs(load_settings({"model": "big"}, config), config.models)
    assert [s.id for s in only] == ["big"]


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "ff.toml"
    cfg.write_text("[server]\nprot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        read_config(cfg)


def test_llama_lib_reaches_the_backend_config(monkeypatch) -> None:
    monkeypatch.setenv("FERROUSFORGE_LLAMA_LIB", "/opt/llama/libllama.so")
    (spec,) = model_specs(load_settings())
    assert spec.config.library_path == "/opt/llama/libllama.so"


def test_kv_unified_is_a_boolean_flag() -> None:
    assert _parse(["--kv-unified"]) == {"kv_unified": True}
    assert _parse(["--no-kv-unified"]) == {"kv_unified": False}
    (spec,) = model_specs(load_settings({"kv_unified": True, "ctx_size": 4096}))
    assert spec.config.kv_unified and spec.config.context_size == 4096
