"""Issue 11's judge scenario, end to end: pull from a hub, list, then serve three models
under --max-loaded-models 2 and a memory budget to several clients rotating among them, then
let the models go idle.

Offline: the hub is tests/fake_hub.py on loopback (HF_ENDPOINT), hosting the bundled model.
The three served models are separate copies of GGUF files (no shared weights): two of the
bundled model and, where `make test-arch2` fetched it, Gemma 3 270M (else a third copy).

    .venv/bin/python bench/models_scenario.py [--clients 6] [--rounds 8] [--budget 1GiB]

Prints what a judge checks: pull and list output, request outcomes, loads and evictions
(with the server's own reasons), the most models loaded at once, peak RSS against the
budget, and how long after their last request idle models left memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_hub import FakeHub  # noqa: E402
from live_server import free_port  # noqa: E402

from ferrousforge.models.default_model import bundled_model_path  # noqa: E402

GEMMA = Path.home() / ".cache/ferrousforge/models/gemma-3-270m-q4_k_m.gguf"
REPO = "fake-org/SmolLM2-135M-Instruct-GGUF"


def cli(*args: str, env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "ferrousforge.cli.main", *args],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.perf_counter() - t0, out.stdout + out.stderr


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watcher(threading.Thread):
    """Polls /v1/models and the server's RSS: peak RSS, most models loaded at once, and when
    each model was last seen loaded."""

    def __init__(self, url: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.url, self.pid = url, pid
        self.peak_rss = 0.0
        self.most_loaded = 0
        self.loaded_until: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as c:
            while not self.stop.is_set():
                self.peak_rss = max(self.peak_rss, rss_mib(self.pid))
                try:
                    data = c.get(self.url + "/v1/models").json()["data"]
                except (httpx.HTTPError, ValueError):
                    continue
                loaded = [m["id"] for m in data if m.get("status") == "loaded"]
                self.most_loaded = max(self.most_loaded, len(loaded))
                now = time.perf_counter()
                for mid in loaded:
                    self.loaded_until[mid] = now
                time.sleep(0.1)


async def traffic(url: str, models: list[str], clients: int, rounds: int) -> dict:
    """Each client asks the models in turn (offset by its number), ``rounds`` times each."""
    outcome: dict[str, int] = {}
    last_request: dict[str, float] = {}
    lat: list[float] = []

    async def client(k: int, http: httpx.AsyncClient) -> None:
        for i in range(rounds * len(models)):
            model = models[(k + i) % len(models)]
            body = {"model": model, "prompt": f"Client {k}, request {i}:", "max_tokens": 12}
            t0 = time.perf_counter()
            try:
                r = await http.post(url + "/v1/completions", json=body)
                key = str(r.status_code)
            except httpx.HTTPError as e:
                key = type(e).__name__
            lat.append(time.perf_counter() - t0)
            outcome[key] = outcome.get(key, 0) + 1
            last_request[model] = time.perf_counter()

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    lat.sort()
    return {
        "outcome": outcome,
        "seconds": time.perf_counter() - t0,
        "p50": lat[len(lat) // 2],
        "p95": lat[int(len(lat) * 0.95)],
        "last_request": last_request,
    }


def metric(text: str, name: str) -> dict[str, float]:
    found = {}
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        found[m.group(1) or ""] = float(m.group(2))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=8, help="requests per client per model")
    ap.add_argument("--budget", default="1GiB")
    ap.add_argument("--idle", type=int, default=15, help="--idle-unload seconds")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ff-scenario-"))
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "NO_COLOR": "1"}
    bundled = bundled_model_path()
    hub = FakeHub()
    hub.add(REPO, "smollm2-135m-instruct-q4_1.gguf", bundled)
    hub.add(REPO, "README.md", ROOT / "README.md")
    hub.start()
    env["HF_ENDPOINT"] = hub.url
    try:
        took, out = cli("pull", f"{REPO}:Q4_1", env=env)
        print(f"## pull ({took:.1f} s)\n{out.strip()}\n")
        took, out = cli("list", env=env)
        print(f"## list ({took:.1f} s)\n{out.strip()}\n")
    finally:
        hub.close()

    models_dir = tmp / "models"
    models_dir.mkdir()
    sources = {"alpha": bundled, "beta": bundled, "gamma": GEMMA if GEMMA.is_file() else bundled}
    for name, src in sources.items():
        shutil.copyfile(src, models_dir / f"{name}.gguf")  # a copy: weights are not shared
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "server.log"
    serve = [
        sys.executable, "-m", "ferrousforge.cli.main", "serve", "--port", str(port),
        "--threads", "2", "--models-dir", str(models_dir), "--max-loaded-models", "2",
        "--memory-budget", args.budget, "--idle-unload", str(args.idle), "--parallel", "2",
    ]  # fmt: skip
    print(f"## serve\n{' '.join(serve[3:])}\n(gamma: {sources['gamma'].name})\n")
    with log.open("w") as f:
        proc = subprocess.Popen(serve, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        listed = httpx.get(url + "/v1/models").json()["data"]
        print("models:", ", ".join(f"{m['id']} ({m['status']})" for m in listed))
        idle_rss = rss_mib(proc.pid)
        watcher = Watcher(url, proc.pid)
        watcher.start()
        run = asyncio.run(traffic(url, list(sources), args.clients, args.rounds))
        n = sum(run["outcome"].values())
        print(
            f"\n## traffic: {args.clients} clients x {args.rounds} rounds x 3 models = {n} "
            f"requests in {run['seconds']:.1f} s\nstatus counts: {run['outcome']}; latency "
            f"p50 {run['p50']:.2f} s, p95 {run['p95']:.2f} s"
        )
        metrics = httpx.get(url + "/metrics").text
        print("loads:", metric(metrics, "ferrousforge_model_loads_total"))
        print("unloads:", metric(metrics, "ferrousforge_model_unloads_total"))
        print(f"most models loaded at once: {watcher.most_loaded} (limit 2)")
        print(
            f"server RSS: {idle_rss:.0f} MiB before, peak {watcher.peak_rss:.0f} MiB "
            f"(budget {args.budget})"
        )
        # Idle: every model should leave memory about --idle-unload s after its last request.
        deadline = time.perf_counter() + args.idle + 30
        while time.perf_counter() < deadline:
            data = httpx.get(url + "/v1/models").json()["data"]
            if all(m["status"] != "loaded" for m in data):
                break
            time.sleep(0.5)
        watcher.stop.set()
        watcher.join()
        print(f"\n## idle (--idle-unload {args.idle})")
        for model, last in sorted(run["last_request"].items()):
            gone = watcher.loaded_until.get(model)
            after = f"{gone - last:.1f} s" if gone and gone >= last else "already unloaded"
            print(f"{model}: last seen loaded {after} after its last request")
        print(f"server RSS after idle unloads: {rss_mib(proc.pid):.0f} MiB")
        evictions = [ln for ln in log.read_text().splitlines() if "least recently used" in ln]
        print(f"\n## evictions logged by the server: {len(evictions)}")
        for ln in evictions[:6]:
            print("  " + ln.split(" - ")[-1] if " - " in ln else "  " + ln)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
