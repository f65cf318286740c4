"""Bare llama_decode ms/token by calling thread and competing load (the threading decision).

    .venv/bin/python bench/thread_probe.py main|thread BUSY THREADS
    OMP_WAIT_POLICY=passive .venv/bin/python bench/thread_probe.py thread 0.2 2

``main``: decode from the process's main thread; ``thread``: from a second thread, as the
engine does. BUSY (0..1): another Python thread spins that fraction of every millisecond,
as an event loop serving streams does. Prints the median of 128 one-token decodes after a
128-token prompt on the default model.
"""

import statistics
import sys
import threading
import time

from ferrousforge.inference.backend import AcceleratorType, BackendConfig
from ferrousforge.inference.backends.llama_cpp.batch import TokenBatch
from ferrousforge.inference.backends.llama_cpp.context import LlamaContext
from ferrousforge.inference.backends.llama_cpp.library import load_library
from ferrousforge.inference.backends.llama_cpp.model import LlamaModel
from ferrousforge.models.default_model import default_model_path


def main() -> None:
    where, busy, n_threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    lib = load_library()
    cfg = BackendConfig(num_threads=n_threads, max_parallel=1, context_size=1024)
    model = LlamaModel(lib, default_model_path(), cfg, AcceleratorType.Cpu())
    ctx = LlamaContext(lib, model, cfg)
    batch = TokenBatch(lib, 512)
    result: dict[str, float] = {}

    def run() -> None:
        batch.clear()
        batch.add(list(range(100, 228)), 0, 0, "last")
        ctx.decode(batch.as_struct())
        times = []
        for i in range(160):
            batch.clear()
            batch.add([1000 + i], 0, 128 + i, "last")
            t = time.perf_counter()
            ctx.decode(batch.as_struct())
            times.append(time.perf_counter() - t)
        result["ms"] = statistics.median(times[32:]) * 1000

    stop = threading.Event()

    def burner() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            while time.perf_counter() - t < busy * 1e-3:
                pass
            time.sleep((1 - busy) * 1e-3)

    if busy > 0:
        threading.Thread(target=burner, daemon=True).start()
    if where == "main":
        run()
    else:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    stop.set()
    print(f"{where} busy={busy} threads={n_threads}: {result['ms']:.2f} ms/token")
    ctx.close()
    model.close()


if __name__ == "__main__":
    main()
