"""One llama_model per file: loads of the same weights share it, counted by leases.

Two aliases of one GGUF (say, different context sizes or slot counts) would otherwise
each map and hold the weights. A ``SharedModels`` table keys each ``LlamaModel`` by the
file (device and inode: hard links and symlinks of one file are one) and the parameters
that shape the weights (accelerator, GPU layers, split, mmap/mlock, library); every load
takes a ``ModelLease`` and its context borrows the model.
The table owns the model and frees it when the last lease is released.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ferrousforge.inference.backend import Accelerator, BackendConfig
from ferrousforge.inference.backends.llama_cpp.model import LlamaModel

log = logging.getLogger(__name__)


def file_identity(path: Path) -> tuple[int, int] | Path:
    """What makes two paths one file: its device and inode (a hard link, a symlink or a
    second spelling of it gives the same), else its resolved path if it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return path.resolve()
    return st.st_dev, st.st_ino


@dataclass(frozen=True, slots=True)
class ModelKey:
    """What makes two loads share weights: the same file, loaded the same way."""

    file: tuple[int, int] | Path  # file_identity
    path: Path = field(compare=False)  # as the first load named it (resolved)
    accelerator: str
    n_gpu_layers: int
    main_gpu: int
    split_mode: str
    tensor_split: tuple[float, ...]
    use_mmap: bool
    use_mlock: bool
    library_path: str | None

    @classmethod
    def of(cls, path: Path, config: BackendConfig, acc: Accelerator) -> ModelKey:
        return cls(
            file_identity(path),
            path.resolve(),
            repr(acc),
            config.n_gpu_layers,
            config.main_gpu,
            config.split_mode,
            tuple(config.tensor_split or ()),
            config.use_mmap,
            config.use_mlock,
            config.library_path,
        )


@dataclass(slots=True)
class _Entry:
    ready: threading.Event = field(default_factory=threading.Event)
    model: LlamaModel | None = None
    error: BaseException | None = None
    leases: int = 0


class ModelLease:
    """One loaded model's borrow of a shared LlamaModel; ``release`` gives it back (once)."""

    def __init__(self, table: SharedModels, key: ModelKey, model: LlamaModel) -> None:
        self._table = table
        self._key = key
        self.model = model
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._table._release(self._key)


class SharedModels:
    """The share table (thread safe: loads run in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[ModelKey, _Entry] = {}

    def acquire(
        self, lib: ModuleType, path: Path, config: BackendConfig, acc: Accelerator
    ) -> ModelLease:
        """A lease on the model for ``path``: loads it, or borrows the one already loaded.

        Concurrent first loads of one file load it once; the others wait for that load
        (and get its error if it fails). Loads of different files run in parallel.
        """
        key = ModelKey.of(path, config, acc)
        with self._lock:
            entry = self._entries.get(key)
            loader = entry is None
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.leases += 1
            leases = entry.leases
        if loader:
            try:
                entry.model = LlamaModel(lib, path, config, acc)
            except BaseException as e:
                entry.error = e
                with self._lock:
                    if self._entries.get(key) is entry:
                        del self._entries[key]
                raise
            finally:
                entry.ready.set()
        else:
            entry.ready.wait()
            if entry.error is not None:
                raise entry.error
            log.info("%s: weights already loaded, shared by %d loads", path.name, leases)
            if config.progress_callback is not None:
                config.progress_callback(1.0)  # nothing left to load
        assert entry.model is not None
        return ModelLease(self, key, entry.model)

    def _release(self, key: ModelKey) -> None:
        with self._lock:
            entry = self._entries[key]
            entry.leases -= 1
            if entry.leases:
                return
            del self._entries[key]
        if entry.model is not None:
            entry.model.close()

    def leases(self) -> dict[Path, int]:
        """Leases per loaded file (for tests and metrics)."""
        with self._lock:
            out: dict[Path, int] = {}
            for key, entry in self._entries.items():
                out[key.path] = out.get(key.path, 0) + entry.leases
            return out
