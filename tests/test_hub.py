"""Getting models: `ferrousforge pull | list | rm` and REPO[:QUANT] names, against a fake hub.

The hub (tests/fake_hub.py) runs on loopback, pointed to with HF_ENDPOINT; HF_HOME is a
fresh folder per test. It hosts the model under test as several quantizations (the same
bytes under each name) and as a two-part split that llama.cpp loads.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub, copy_as, write_split

from ferrousforge.cli.main import main
from ferrousforge.errors import ModelDownloadError, ModelNotPulledError, QuantNotFoundError
from ferrousforge.inference.gguf import read_gguf
from ferrousforge.models import hub as hf
from ferrousforge.models.files import names_quant, quant_of
from ferrousforge.models.registry import model_specs
from ferrousforge.settings import load_settings

REPO = "ferrous-test/SmolLM2-135M-Instruct-GGUF"
OTHER = "ferrous-test/tiny-GGUF"
SPLIT = ("Q5_K_M/smollm2-Q5_K_M-00001-of-00002.gguf", "Q5_K_M/smollm2-Q5_K_M-00002-of-00002.gguf")


@pytest.fixture(scope="session")
def hub_files(tmp_path_factory, model_path: Path) -> dict[str, dict[str, Path]]:
    d = tmp_path_factory.mktemp("hub-files")
    first, second = d / "s-00001-of-00002.gguf", d / "s-00002-of-00002.gguf"
    write_split(model_path, first, second)
    (d / "README.md").write_text("# a test repo\n")
    (d / "mmproj.gguf").write_bytes(b"GGUF" + bytes(60))  # smaller than any model
    return {
        REPO: {
            "README.md": d / "README.md",
            "smollm2-Q4_K_M.gguf": model_path,
            "smollm2-Q8_0.gguf": model_path,
            SPLIT[0]: first,
            SPLIT[1]: second,
        },
        # No Q4_K_M: the default is the smallest model file, not the (smaller) projector.
        OTHER: {
            "mmproj-tiny-F16.gguf": d / "mmproj.gguf",
            "tiny-Q8_0.gguf": model_path,
            "tiny-Q6_K.gguf": first,
        },
    }


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_files) -> FakeHub:
    fake = FakeHub()
    for repo, files in hub_files.items():
        for path, source in files.items():
            fake.add(repo, path, source)
    fake.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "FERROUSFORGE_PULL"):
        monkeypatch.delenv(name, raising=False)
    yield fake
    fake.close()


def _pull(name: str, capsys: pytest.CaptureFixture) -> Path:
    assert main(["pull", name]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("pulled "), out
    return Path(out.rsplit(": ", 1)[1].strip())


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The real command in a fresh process: huggingface_hub reads HF_* at its import there."""
    return subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


# ---- names --------------------------------------------------------------------------------


def test_names_parse_as_repo_quant_or_file() -> None:
    assert hf.parse_ref("org/repo") == hf.HubRef("org/repo")
    assert hf.parse_ref("org/repo:q8_0") == hf.HubRef("org/repo", "q8_0")
    assert hf.parse_ref("hf.co/org/Repo-GGUF:Q4_K_M") == hf.HubRef("org/Repo-GGUF", "Q4_K_M")
    assert hf.parse_ref("org/repo/sub/m.gguf") == hf.HubRef("org/repo", None, "sub/m.gguf")
    for path in ("models/m.gguf", "./org/repo", "/abs/org/repo", "~/x/y", "m.gguf", "alias"):
        assert hf.parse_ref(path) is None, path


def test_quant_names_match_whole_words() -> None:
    assert names_quant("a/Model.q4_k_m.gguf", "Q4_K_M")
    assert not names_quant("model-Q4_K_M.gguf", "Q4_K")
    assert not names_quant("model-IQ4_XS.gguf", "Q4_XS")
    assert not names_quant("model-Q4_0_4_4.gguf", "Q4_0")
    assert quant_of("Q5_K_M/m-Q5_K_M-00001-of-00002.gguf") == "Q5_K_M"
    assert quant_of("model-bf16.gguf") == "BF16" and quant_of("model.gguf") is None


# ---- pull ---------------------------------------------------------------------------------


def test_pull_takes_q4_k_m_by_default(hub: FakeHub, hub_files, capsys) -> None:
    assert main(["pull", REPO]) == 0
    out = capsys.readouterr().out
    size = hub_files[REPO]["smollm2-Q4_K_M.gguf"].stat().st_size / 1e6
    assert out.startswith(f"pulled {REPO}:Q4_K_M ({size:.1f} MB): "), out
    path = Path(out.rsplit(": ", 1)[1].strip())
    assert path.name == "smollm2-Q4_K_M.gguf"
    assert filecmp.cmp(path, hub_files[REPO]["smollm2-Q4_K_M.gguf"], shallow=False)
    assert hub.downloads() == ["smollm2-Q4_K_M.gguf"]


def test_pull_a_quant_case_insensitively_or_a_file(hub: FakeHub, capsys) -> None:
    assert _pull(f"{REPO}:q8_0", capsys).name == "smollm2-Q8_0.gguf"
    assert _pull(f"hf.co/{REPO}/smollm2-Q8_0.gguf", capsys).name == "smollm2-Q8_0.gguf"


def test_default_is_the_smallest_model_not_a_projector(hub: FakeHub, capsys) -> None:
    assert _pull(OTHER, capsys).name == "tiny-Q6_K.gguf"
    assert hub.downloads() == ["tiny-Q6_K.gguf"]


def test_a_split_model_downloads_every_part_and_runs(hub: FakeHub, hub_files, capsys) -> None:
    local = hf.pull(f"{REPO}:Q5_K_M")  # only a split has Q5_K_M
    assert local.paths == SPLIT and local.path.name.endswith("-00001-of-00002.gguf")
    assert sorted(hub.downloads()) == sorted(SPLIT)
    for part, name in zip(local.files, SPLIT, strict=True):
        assert filecmp.cmp(part, hub_files[REPO][name], shallow=False)
    done = _cli("run", f"{REPO}:Q5_K_M", "Hello", "--max-tokens", "4", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "tokens/s" in done.stderr


def test_an_unknown_quant_lists_what_exists(hub: FakeHub, capsys) -> None:
    with pytest.raises(QuantNotFoundError) as e:
        hf.pull(f"{REPO}:Q5_K_S")
    assert e.value.available == ["Q4_K_M", "Q5_K_M", "Q8_0"]
    assert main(["pull", f"{REPO}:Q5_K_S"]) == 1
    err = capsys.readouterr().err
    assert f"no file matches quant Q5_K_S in {REPO}; available: Q4_K_M, Q5_K_M, Q8_0" in err
    assert main(["pull", "ferrous-test/no-such-repo"]) == 1
    assert "no repo ferrous-test/no-such-repo" in capsys.readouterr().err
    assert hub.downloads() == []


def test_an_interrupted_download_resumes_to_the_same_bytes(hub: FakeHub, hub_files, capsys):
    name = "smollm2-Q4_K_M.gguf"
    hub.faults[f"{REPO}/{name}"] = ["cut"]
    path = _pull(f"{REPO}:Q4_K_M", capsys)
    assert filecmp.cmp(path, hub_files[REPO][name], shallow=False)
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith(name)]
    size = hub_files[REPO][name].stat().st_size
    # The second GET asks only for what the first one did not deliver (from the last
    # whole chunk written before the cut).
    assert len(ranges) == 2 and ranges[0] is None, ranges
    resumed_at = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= size // 2


def test_a_pull_that_fails_midway_completes_the_next_time(hub: FakeHub, hub_files, capsys):
    name = "smollm2-Q4_K_M.gguf"
    hub.faults[f"{REPO}/{name}"] = ["cut", "down"]  # the retry after the cut fails too
    assert main(["pull", REPO]) == 1
    assert f"downloading {REPO}/{name} failed" in capsys.readouterr().err
    assert hf.pulled_models() == []  # no half file passes for a model
    path = _pull(REPO, capsys)
    assert filecmp.cmp(path, hub_files[REPO][name], shallow=False)


def test_offline_resolves_a_pulled_model_and_fails_clearly_for_another(
    hub: FakeHub, monkeypatch, capsys
) -> None:
    pulled = hf.pull(f"{REPO}:Q4_K_M").path
    hub.close()  # nothing may reach it now
    before = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.resolve(f"{REPO}:Q4_K_M").path == pulled
    assert hf.resolve(REPO).path == pulled
    assert hf.pull(f"{REPO}:q4_k_m").path == pulled
    with pytest.raises(ModelDownloadError, match="HF_HUB_OFFLINE"):
        hf.resolve(f"{REPO}:Q8_0", pull_missing=True)
    assert main(["pull", f"{REPO}:Q8_0"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert len(hub.requests) == before


# ---- list and rm --------------------------------------------------------------------------


def test_list_shows_pulled_and_folder_models_without_loading(
    hub: FakeHub, hub_files, model_path: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from ferrousforge.inference.backends.llama_cpp.backend import LlamaCppBackend

    def no_loading(*args, **kwargs):
        raise AssertionError("list loaded a model")

    monkeypatch.setattr(LlamaCppBackend, "load_model_sync", no_loading)
    hf.pull(f"{REPO}:Q4_K_M")
    hf.pull(f"{REPO}:Q5_K_M")
    folder = tmp_path / "models"
    copy_as(model_path, folder / "mine.gguf")
    assert main(["list", "--json", "--models-dir", str(folder)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {f"{REPO}:Q4_K_M", f"{REPO}:Q5_K_M", "mine"}
    info = read_gguf(model_path)
    for row in rows.values():
        assert row["architecture"] == info.architecture
        assert row["context_length"] == info.arch_value("context_length")
    assert rows["mine"]["quantization"] == info.file_type  # from the metadata, not the name
    assert rows[f"{REPO}:Q4_K_M"]["size_bytes"] == model_path.stat().st_size
    split_size = sum(hub_files[REPO][p].stat().st_size for p in SPLIT)
    assert rows[f"{REPO}:Q5_K_M"]["size_bytes"] == split_size
    assert main(["list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "QUANT", "ARCH", "CONTEXT"]
    assert any(line.startswith(f"{REPO}:Q4_K_M ") for line in table)


def test_rm_deletes_one_model_and_keeps_shared_bytes(hub: FakeHub, capsys) -> None:
    q4 = hf.pull(f"{REPO}:Q4_K_M").path
    hf.pull(f"{REPO}:Q8_0")  # the same bytes: one blob in the cache
    assert main(["rm", f"{REPO}:Q8_0"]) == 0
    assert capsys.readouterr().out.startswith(f"deleted {REPO}:Q8_0")
    assert [m.name for m in hf.pulled_models()] == [f"{REPO}:Q4_K_M"]
    assert read_gguf(q4).architecture  # its blob is still there
    assert main(["rm", f"{REPO}:Q4_K_M"]) == 0
    assert hf.pulled_models() == []
    assert not (hf.hub_cache_dir() / f"models--{REPO.replace('/', '--')}").exists()
    assert main(["rm", f"{REPO}:Q4_K_M"]) == 1
    assert "is not pulled" in capsys.readouterr().err


# ---- REPO[:QUANT] in run, chat and serve ----------------------------------------------------


def test_run_generates_from_a_pulled_model(hub: FakeHub, capsys) -> None:
    _pull(f"{REPO}:Q4_K_M", capsys)
    hub.close()
    done = _cli("run", f"{REPO}:Q4_K_M", "Hello", "--max-tokens", "4", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "tokens/s" in done.stderr


def test_an_unpulled_name_errors_without_asking_the_hub(hub: FakeHub, capsys) -> None:
    name = f"{REPO}:Q8_0"
    for argv in (["run", name, "Hi"], ["chat", name], ["serve", "--model", name]):
        assert main(argv) in (1, 2), argv
        err = capsys.readouterr().err
        assert f"`ferrousforge pull {name}`" in err and "--pull" in err, err
    with pytest.raises(ModelNotPulledError):
        model_specs(load_settings({"model": name}))
    assert hub.requests == []


def test_pull_on_first_use_with_the_flag_or_env(hub: FakeHub, monkeypatch) -> None:
    (spec,) = model_specs(load_settings({"model": f"{REPO}:Q8_0", "pull": True}))
    assert spec.id == f"{REPO}:Q8_0" and spec.path.name == "smollm2-Q8_0.gguf"
    monkeypatch.setenv("FERROUSFORGE_PULL", "1")
    (spec,) = model_specs(load_settings({"model": f"{REPO}:Q5_K_M"}))
    assert spec.path.name.endswith("-00001-of-00002.gguf") and spec.path.exists()
    done = _cli("run", OTHER, "Hi", "--max-tokens", "2", "--temperature", "0", "--no-pull")
    assert done.returncode == 1 and "is not pulled" in done.stderr
    monkeypatch.delenv("FERROUSFORGE_PULL")
    done = _cli("run", f"{REPO}:Q4_K_M", "Hi", "--max-tokens", "2", "--temperature", "0", "--pull")
    assert done.returncode == 0, done.stderr
    assert "%|" not in done.stderr  # no progress bar when stderr is not a terminal
    assert hf.find_pulled(hf.HubRef(REPO, "Q4_K_M")) is not None
    # Q4_K_M has Q8_0's bytes (one blob): the new process asked the hub, fetched nothing.
    assert ("HEAD", f"/{REPO}/resolve/main/smollm2-Q4_K_M.gguf", None) in hub.requests
    assert hub.downloads() == ["smollm2-Q8_0.gguf", *SPLIT]


def test_serve_offers_pulled_models_and_loads_one_on_demand(hub: FakeHub, capsys) -> None:
    from fastapi.testclient import TestClient

    from ferrousforge.api.app import create_app
    from ferrousforge.models.registry import model_specs
    from ferrousforge.settings import ServerSettings

    _pull(REPO, capsys)
    settings = ServerSettings(ctx_size=512, parallel=1, threads=2)
    name = f"{REPO}:Q4_K_M"
    specs = model_specs(settings)
    assert [(s.id, s.preload) for s in specs][1:] == [(name, False)]  # after the default
    assert [s.id for s in model_specs(ServerSettings(pulled_models=False))] == [specs[0].id]
    with TestClient(create_app(settings, specs)) as c:
        for _ in range(600):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        listed = {m["id"]: m["status"] for m in c.get("/v1/models").json()["data"]}
        assert listed[name] == "unloaded"
        r = c.post("/v1/completions", json={"model": name, "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == name
        assert {m["id"]: m["status"] for m in c.get("/v1/models").json()["data"]}[name] == "loaded"


def test_a_config_file_names_models_by_repo_quant(hub: FakeHub, tmp_path: Path, capsys) -> None:
    from ferrousforge.settings import read_config

    _pull(f"{REPO}:Q8_0", capsys)
    config = tmp_path / "models.toml"
    config.write_text(
        f'[[models]]\nalias = "small"\npath = "{REPO}:Q8_0"\nctx_size = 512\n\n'
        f'[[models]]\npath = "{REPO}:Q5_K_M"\nparallel = 1\n'
    )
    models = read_config(config).models
    with pytest.raises(ModelNotPulledError, match="--pull"):  # not pulled, no flag: no download
        model_specs(load_settings({}), models)
    small, split = model_specs(load_settings({"pull": True}), models)
    assert (small.id, small.path.name, small.config.context_size) == (
        "small",
        "smollm2-Q8_0.gguf",
        512,
    )
    assert split.id == f"{REPO}:Q5_K_M" and split.path.name.endswith("-00001-of-00002.gguf")
    assert split.config.max_parallel == 1
    (only,) = model_specs(load_settings({"model": "small"}), models)  # --model picks an alias
    assert only.path == small.path


def test_list_into_a_closed_pipe_stops_quietly(hub: FakeHub, tmp_path: Path) -> None:
    """`ferrousforge list | head -1`: no traceback when the reader leaves first."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    proc = subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", "list", "--json"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr
