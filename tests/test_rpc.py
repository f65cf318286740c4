"""llama.cpp's RPC backend without a model split: the checks that need no running worker
(the address policy, flags, a busy port, an unreachable worker). The split model itself is
tested in test_rpc_split.py (`make test-rpc`)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from live_server import free_port

from ferrousforge.cli.main import build_parser
from ferrousforge.errors import RemoteWorkerError
from ferrousforge.inference.backend import BackendConfig
from ferrousforge.inference.backends.llama_cpp.rpc import is_private, parse_endpoints
from ferrousforge.settings import load_settings, settings_from_args


def worker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ferrousforge.cli.main", "rpc-worker", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "8.8.8.8"])
def test_public_bind_is_refused_without_the_flag(host: str) -> None:
    r = worker("--host", host, "--port", str(free_port()))
    assert r.returncode == 2
    assert "not a loopback or private address" in r.stderr
    assert "--allow-public" in r.stderr


def test_private_addresses() -> None:
    assert is_private("127.0.0.1") and is_private("::1") and is_private("localhost")
    assert is_private("10.1.2.3") and is_private("192.168.0.7") and is_private("172.16.0.1")
    assert not is_private("0.0.0.0") and not is_private("::") and not is_private("1.1.1.1")


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = worker("--host", "127.0.0.1", "--port", str(s.getsockname()[1]))
    assert r.returncode == 2
    assert "cannot listen on 127.0.0.1" in r.stderr


def test_rpc_and_tensor_split_flags() -> None:
    args = build_parser().parse_args(
        ["serve", "--rpc", "10.0.0.2:50052,10.0.0.3:50052", "-ts", "3,1"]
    )
    s = load_settings(settings_from_args(args))
    assert s.rpc == ["10.0.0.2:50052", "10.0.0.3:50052"]
    assert s.tensor_split == [3.0, 1.0]
    assert parse_endpoints("[::1]:5, 127.0.0.1:6") == ["[::1]:5", "127.0.0.1:6"]
    with pytest.raises(ValueError, match="rpc_servers"):
        BackendConfig(rpc_servers=["no-port"])


def test_rpc_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERROUSFORGE_RPC", "127.0.0.1:1,127.0.0.1:2")
    assert load_settings({}).rpc == ["127.0.0.1:1", "127.0.0.1:2"]


@pytest.mark.integration
def test_unreachable_worker_is_a_load_error_not_an_abort(model_path) -> None:
    from ferrousforge.inference.backend import AcceleratorType
    from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend

    port = free_port()  # nobody listens there
    config = BackendConfig(num_threads=1, context_size=256, rpc_servers=[f"127.0.0.1:{port}"])
    with pytest.raises(RemoteWorkerError, match=f"127.0.0.1:{port} is not reachable"):
        LlamaCppBackend().load_model_sync(model_path, config, AcceleratorType.Cpu())


@pytest.mark.integration
def test_run_with_an_unreachable_worker_says_so(model_path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "ferrousforge.cli.main", "run", "--rpc", f"127.0.0.1:{port}"]
    cmd += ["--max-tokens", "4", str(model_path), "hello"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"127.0.0.1:{port} is not reachable" in r.stderr
    assert "Traceback" not in r.stderr
