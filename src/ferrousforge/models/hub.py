"""Models from the Hugging Face Hub: names, which file to take, download, and the local cache.

A name is ``REPO[:QUANT]`` (``bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M``) or a file in a
repo (``REPO/path/file.gguf``); ``hf.co/`` in front is accepted as Ollama writes it. Files go
to huggingface_hub's own cache, so its resumable downloads, ``HF_TOKEN``, ``HF_ENDPOINT`` and
``HF_HUB_OFFLINE`` apply, and a model already pulled resolves without the network.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ferrousforge.errors import (
    ModelDownloadError,
    ModelNotFoundError,
    ModelNotPulledError,
    QuantNotFoundError,
)
from ferrousforge.models.files import ModelFiles, group_files, names_quant

log = logging.getLogger(__name__)

DEFAULT_QUANT = "Q4_K_M"
_PREFIXES = ("https://huggingface.co/", "huggingface.co/", "hf.co/")
_NAME = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<quant>[\w.-]+)|/(?P<file>[^:]+\.gguf))?$",
    re.IGNORECASE,
)
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True, slots=True)
class HubRef:
    """A parsed model name: the repo, and the quantization or the file wanted (or neither)."""

    repo_id: str
    quant: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        if self.filename:
            return f"{self.repo_id}/{self.filename}"
        return f"{self.repo_id}:{self.quant}" if self.quant else self.repo_id


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model on disk: its name (REPO:QUANT or REPO/path), the folder holding it (a cache
    snapshot), its files relative to that folder (first part first) and their bytes."""

    name: str
    root: Path
    paths: tuple[str, ...]
    size: int

    @property
    def path(self) -> Path:
        """The file to load (a split's first part)."""
        return self.root / self.paths[0]

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self.root / p for p in self.paths)


def parse_ref(name: str) -> HubRef | None:
    """The HubRef a name spells, or None if it does not look like a Hugging Face name.

    ``dir/model.gguf`` is a (missing) local file, not a repo: a file needs ``owner/repo/``.
    """
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    m = _NAME.match(name)
    if m is None or (m["file"] is None and m["repo"].lower().endswith(".gguf")):
        return None
    return HubRef(m["repo"], m["quant"], m["file"])


def choose(models: list[ModelFiles], ref: HubRef) -> ModelFiles:
    """The model ``ref`` asks for among a repo's models.

    A file name picks the model it belongs to (a split's part picks every part). A
    quantization picks the files naming it; none picks Q4_K_M, else every model. Among
    several, a single file wins over a split, then the smallest. Raises QuantNotFoundError.
    """
    if ref.filename:
        for m in models:
            if ref.filename in m.paths:
                return m
        raise _not_found(models, ref, f"no file {ref.filename}")
    candidates = [m for m in models if m.is_model]
    if ref.quant:
        found = [m for m in candidates if names_quant(m.first, ref.quant)]
    else:
        found = [m for m in candidates if names_quant(m.first, DEFAULT_QUANT)] or candidates
    if not found:
        what = f"no file matches quant {ref.quant}" if ref.quant else "no .gguf model file"
        raise _not_found(models, ref, what)
    return min(found, key=lambda m: (m.is_split, m.size, m.first))


def model_name(repo_id: str, models: list[ModelFiles], m: ModelFiles) -> str:
    """The name that picks ``m`` among a repo's ``models``: REPO:QUANT if its quantization
    does, else REPO/path."""
    if m.quant and choose(models, HubRef(repo_id, m.quant)) == m:
        return f"{repo_id}:{m.quant}"
    return f"{repo_id}/{m.first}"


def _not_found(models: list[ModelFiles], ref: HubRef, what: str) -> QuantNotFoundError:
    available = sorted({m.quant or m.first for m in models if m.is_model})
    listed = ", ".join(available) if available else "no .gguf files"
    return QuantNotFoundError(
        f"{what} in {ref.repo_id}; available: {listed}",
        ref.repo_id,
        ref.quant or ref.filename or "",
        available,
    )


# ---- huggingface_hub's settings, read per call --------------------------------------
# huggingface_hub reads its environment once, at import; reading it per call honours a
# variable set later (an embedding application, the tests) the same way.


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder (HF_HUB_CACHE, else HF_HOME/hub, else its default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    # Its default, computed now: huggingface_hub.constants froze whatever HF_HOME said when
    # it was first imported, which may have changed since.
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_endpoint() -> str | None:
    """HF_ENDPOINT (a mirror or a local hub), None for huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def is_offline() -> bool:
    """HF_HUB_OFFLINE: only the cache may be used."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(constants.HF_HUB_OFFLINE)


# ---- the local cache ------------------------------------------------------------------


def _repo_dir(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _snapshots(repo_dir: Path) -> list[Path]:
    """A cached repo's snapshot folders, the one refs/main points to first."""
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return []
    main = repo_dir / "refs" / "main"
    head = main.read_text().strip() if main.is_file() else None
    dirs = [d for d in snaps.iterdir() if d.is_dir()]
    return sorted(dirs, key=lambda d: (d.name != head, -d.stat().st_mtime))


def _cached_files(snapshot: Path) -> dict[str, int]:
    sizes = {}
    for p in snapshot.rglob("*.gguf"):
        try:
            sizes[p.relative_to(snapshot).as_posix()] = p.stat().st_size
        except FileNotFoundError:  # a link whose blob was deleted
            continue
    return sizes


def find_pulled(ref: HubRef) -> LocalModel | None:
    """The pulled model ``ref`` names, from the cache alone (no network), or None.

    A bare REPO takes its Q4_K_M if pulled, else the smallest model pulled from it.
    """
    for snapshot in _snapshots(_repo_dir(ref.repo_id)):
        models = group_files(_cached_files(snapshot))
        try:
            m = choose(models, ref)
        except QuantNotFoundError:
            continue
        return LocalModel(model_name(ref.repo_id, models, m), snapshot, m.paths, m.size)
    return None


def pulled_models() -> list[LocalModel]:
    """Every model in the Hugging Face cache (repos holding .gguf files), named REPO:QUANT
    where the file name gives a quantization that resolves back to it, else REPO/path."""
    cache = hub_cache_dir()
    if not cache.is_dir():
        return []
    found: dict[str, LocalModel] = {}
    for repo_dir in sorted(cache.glob("models--*")):
        repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
        for snapshot in _snapshots(repo_dir):
            models = group_files(_cached_files(snapshot))
            for m in models:
                if not m.is_model:
                    continue
                name = model_name(repo_id, models, m)
                found.setdefault(name, LocalModel(name, snapshot, m.paths, m.size))
    return list(found.values())


# ---- the hub --------------------------------------------------------------------------


def _network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the hub cannot be reached or refuses (its HTTP
    client differs by version)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    errors: list[type[BaseException]] = [HfHubHTTPError, LocalEntryNotFoundError, OSError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    try:
        from requests import RequestException

        errors.append(RequestException)
    except ImportError:
        pass
    return tuple(errors)


def list_remote(repo_id: str) -> dict[str, int]:
    """{path: size} of every file in a hub repo (its main branch)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        tree = HfApi(endpoint=hub_endpoint()).list_repo_tree(repo_id, recursive=True)
        return {f.path: f.size for f in tree if isinstance(f, RepoFile)}
    except GatedRepoError as e:
        raise ModelDownloadError(
            f"{repo_id} is gated: accept its terms on the hub and set HF_TOKEN"
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"no repo {repo_id} on the hub (a private one needs HF_TOKEN)"
        ) from e
    except _network_errors() as e:
        raise ModelDownloadError(f"cannot list {repo_id} on the hub: {e}") from e


def pull(name: str | HubRef) -> LocalModel:
    """Download the model ``name`` names into the cache (each file once; an interrupted
    download resumes) and return it. Offline, return it from the cache or raise."""
    ref = name if isinstance(name, HubRef) else _parse(name)
    if is_offline():
        local = find_pulled(ref)
        if local is None:
            raise ModelDownloadError(
                f"{ref} is not in the Hugging Face cache ({hub_cache_dir()}) and HF_HUB_OFFLINE "
                "is set: unset it to download"
            )
        return local
    from huggingface_hub import hf_hub_download

    models = group_files(list_remote(ref.repo_id))
    m = choose(models, ref)
    got = ""
    for i, path in enumerate(m.paths, 1):
        log.info("pulling %s: %s (%d of %d)", ref, path, i, len(m.paths))
        try:
            got = hf_hub_download(
                ref.repo_id, path, cache_dir=hub_cache_dir(), endpoint=hub_endpoint()
            )
        except _network_errors() as e:
            raise ModelDownloadError(f"downloading {ref.repo_id}/{path} failed: {e}") from e
    # Every part lands in the same snapshot folder, under its path in the repo.
    snapshot = Path(got).parents[len(Path(m.paths[-1]).parts) - 1]
    return LocalModel(model_name(ref.repo_id, models, m), snapshot, m.paths, m.size)


def _parse(name: str) -> HubRef:
    ref = parse_ref(name)
    if ref is None:
        raise ModelNotFoundError(
            f"'{name}' is not a Hugging Face model name (REPO[:QUANT] or REPO/path/file.gguf)"
        )
    return ref


def resolve(name: str, pull_missing: bool = False) -> LocalModel:
    """The local model for ``name``: from the cache without the network, else downloaded if
    ``pull_missing``; else ModelNotPulledError saying how to get it."""
    ref = _parse(name)
    local = find_pulled(ref)
    if local is not None:
        return local
    if not pull_missing:
        raise ModelNotPulledError(
            f"model '{name}' is not pulled: run `ferrousforge pull {name}`, or pass --pull "
            "(FERROUSFORGE_PULL=1) to download it on first use"
        )
    return pull(ref)


def remove(name: str) -> LocalModel:
    """Delete a pulled model's files from the cache (every cached revision of them) with
    huggingface_hub's deletion strategy; a repo left with no files goes entirely."""
    from huggingface_hub import scan_cache_dir

    ref = _parse(name)
    local = find_pulled(ref)
    if local is None:
        raise ModelNotPulledError(f"model '{name}' is not pulled (see `ferrousforge list`)")
    wanted = set(local.paths)
    info = scan_cache_dir(hub_cache_dir())
    repo = next(r for r in info.repos if r.repo_id == ref.repo_id and r.repo_type == "model")
    files = [(rev, f) for rev in repo.revisions for f in rev.files]
    chosen = [
        f for rev, f in files if f.file_path.relative_to(rev.snapshot_path).as_posix() in wanted
    ]
    if len(chosen) == len(files):
        info.delete_revisions(*(rev.commit_hash for rev in repo.revisions)).execute()
    elif hasattr(info, "delete_files"):
        info.delete_files(*chosen).execute()
    else:  # huggingface_hub before delete_files: the links, then blobs nothing else uses
        kept = {f.blob_path for _, f in files if f not in chosen}
        for f in chosen:
            f.file_path.unlink(missing_ok=True)
            if f.blob_path not in kept:
                f.blob_path.unlink(missing_ok=True)
    return local
