"""llama-server's command line on `ferrousforge serve` and `ferrousforge-server`.

A script written for llama-server must start FerrousForge by changing the binary's name; a
llama-server flag we cannot honour must stop it with an error that names the flag.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from live_server import free_port, live_server

from ferrousforge.api.options import max_tokens_for, plan_generation
from ferrousforge.api.schemas import CompletionRequest
from ferrousforge.cli.llama_server import apply_llama_server_flags
from ferrousforge.cli.main import build_parser
from ferrousforge.models.registry import backend_config
from ferrousforge.settings import load_settings, settings_from_args

SERVER_BIN = Path(sys.executable).parent / "ferrousforge-server"


def settings_for(*argv: str):
    args = build_parser().parse_args(["serve", *argv])
    return args, load_settings(settings_from_args(args))


def test_llama_server_spellings_set_our_settings() -> None:
    _, s = settings_for(
        *("-m", "m.gguf", "-c", "2048", "-np", "3", "-t", "2", "-tb", "1", "-b", "256"),
        *("-ub", "128", "-ngl", "99", "-fa", "off", "-a", "mine", "-n", "64", "--temp", "0.2"),
        *("-s", "7", "-kvu", "-cram", "0", "-ctk", "q8_0", "-ctv", "q8_0", "--models-max", "2"),
        *("--sleep-idle-seconds", "30", "--embeddings", "--no-slots", "--top-k", "5"),
    )
    assert (s.model, s.ctx_size, s.parallel, s.threads, s.threads_batch) == (
        "m.gguf",
        2048,
        3,
        2,
        1,
    )
    assert (s.batch_size, s.ubatch_size, s.n_gpu_layers, s.flash_attn) == (256, 128, 99, "off")
    assert (s.alias, s.max_tokens_limit, s.kv_unified, s.cache_ram) == ("mine", 64, True, 0)
    assert (s.cache_type_k, s.cache_type_v, s.max_loaded_models, s.idle_unload) == (
        "q8_0",
        "q8_0",
        2,
        30,
    )
    assert s.embedding is True and s.slots is False
    assert s.sampling_defaults == {"temperature": 0.2, "seed": 7, "top_k": 5}
    config = backend_config(s)
    assert (config.num_threads, config.num_threads_batch, config.ubatch_size) == (2, 1, 128)
    assert (config.flash_attention, config.cache_type_k, config.n_gpu_layers) == ("off", "q8_0", 99)


def test_flag_forms_older_scripts_use() -> None:
    _, s = settings_for("-fa", "-no-kvu", "--offline", "-cb", "--jinja", "--swa-full")
    assert s.flash_attn == "on"  # a bare -fa, as llama-server had it before on|off|auto
    assert s.kv_unified is False and s.pull is False
    _, s = settings_for("--seed", "-1", "--n-predict", "-1")
    assert "seed" not in s.sampling_defaults  # -1: a random seed per request
    assert s.max_tokens_limit == -1


def test_hf_repo_names_a_model_to_pull() -> None:
    args, _ = settings_for("-hf", "org/repo-GGUF:Q8_0")
    apply_llama_server_flags(args)
    assert (args.model, args.pull) == ("org/repo-GGUF:Q8_0", True)  # downloads, as llama-server
    args, _ = settings_for("--hf-repo", "org/repo-GGUF", "-hff", "sub/x.gguf", "--offline")
    apply_llama_server_flags(args)
    assert (args.model, args.pull) == ("org/repo-GGUF/sub/x.gguf", False)
    args, _ = settings_for("-hf", "org/repo-GGUF", "-m", "other.gguf")
    with pytest.raises(ValueError, match="two models"):
        apply_llama_server_flags(args)


def test_flags_we_cannot_honour_stop_the_server_naming_them(capsys) -> None:
    for flag in (["--lora", "x.gguf"], ["--no-cont-batching"], ["--context-shift"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["serve", *flag])
        assert e.value.code == 2
        assert flag[0] in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "-fa", "sometimes"])
    assert "sometimes" in capsys.readouterr().err


def test_server_sampling_defaults_apply_where_the_request_is_silent() -> None:
    defaults = {"temperature": 0.0, "seed": 3}
    silent = plan_generation(CompletionRequest(prompt="x"), max_tokens=4, defaults=defaults)
    assert (silent.options.temperature, silent.options.seed) == (0.0, 3)
    asked = CompletionRequest(prompt="x", temperature=0.9)
    own = plan_generation(asked, max_tokens=4, defaults=defaults)
    assert (own.options.temperature, own.options.seed) == (0.9, 3)


def test_n_predict_minus_one_lets_a_request_fill_its_context() -> None:
    req = CompletionRequest(prompt="x")
    assert max_tokens_for(req, default=None, prompt_len=10, n_ctx=100, ceiling=-1) == 90
    req = CompletionRequest(prompt="x", max_tokens=500)
    assert max_tokens_for(req, default=None, prompt_len=10, n_ctx=100, ceiling=-1) == 90
    assert max_tokens_for(req, default=None, prompt_len=10, n_ctx=100, ceiling=64) == 64


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_a_llama_server_script_runs_with_the_binary_swapped(model_path: Path, tmp_path) -> None:
    """The shell script a llama-server user has, with only the binary's name changed."""
    keys = tmp_path / "keys.txt"
    keys.write_text("first-key\n\nsecond-key\n")
    port = free_port()
    hosts = "127.0.0.1,::1" if _ipv6_loopback() else "127.0.0.1"
    script = tmp_path / "start.sh"
    script.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            LLAMA_SERVER="${{LLAMA_SERVER:-llama-server}}"
            exec "$LLAMA_SERVER" -m {model_path} -c 1024 -np 2 -t 2 -b 512 -ub 512 -cb \\
                --host {hosts} --port {port} -a my-model --temp 0 -n 5 -fa auto \\
                --api-key-file {keys} --jinja --metrics --no-slots
            """)
    )
    script.chmod(0o755)
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(script)],
        env={**os.environ, "LLAMA_SERVER": str(SERVER_BIN)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.2)
        auth = {"Authorization": "Bearer second-key"}
        assert httpx.get(base + "/v1/models").status_code == 401
        models = httpx.get(base + "/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == ["my-model"]
        body = {"model": "my-model", "prompt": "Once upon a time", "ignore_eos": True}
        first = httpx.post(base + "/v1/completions", json=body, headers=auth, timeout=60).json()
        # /completions is llama-server's native route, as there
        native = httpx.post(base + "/completions", json=body, headers=auth, timeout=60).json()
        assert first["usage"]["completion_tokens"] == 5  # -n 5: the default
        assert native["tokens_predicted"] == 5
        assert first["choices"][0]["text"] == native["content"]  # --temp 0
        if "::1" in hosts:
            six = httpx.get(f"http://[::1]:{port}/v1/models", headers=auth)
            assert six.status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_embedding_only_server_refuses_generation_with_501() -> None:
    with live_server("--embedding", "--no-metrics", "--ctx-size", "512", "--parallel", "1") as s:
        ask = {"messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(s.url + "/v1/chat/completions", json=ask, timeout=30)
        assert r.status_code == 501
        assert r.json()["error"]["type"] == "not_supported_error"
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x"}, timeout=30)
        assert r.status_code == 501
        emb = httpx.post(s.url + "/v1/embeddings", json={"input": "hello"}, timeout=30)
        assert emb.status_code == 200 and len(emb.json()["data"][0]["embedding"]) > 0
        assert httpx.get(s.url + "/metrics").status_code == 501
