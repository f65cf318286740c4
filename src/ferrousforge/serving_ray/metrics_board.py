"""/metrics across replicas: each engine replica hands its Prometheus text to one board
(a small Ray actor) every few seconds; the ingress's /metrics merges the fresh ones, every
series labelled with the replica that reported it (``replica="..."``), so sums and rates
work as usual (``sum by (model) (rate(ferrousforge_generation_tokens_total[1m]))``).

A replica's counters start again from 0 when Serve replaces it, as Prometheus expects of a
restarted process; a replica that stopped reporting drops out after ``max_age_s``.
"""

from __future__ import annotations

import re
import time

_SAMPLE = re.compile(r"^(?P<name>[^\s{]+)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+.*)$")
STALE_S = 15.0


class MetricsBoard:
    """Latest metrics text per replica (wrapped with ``ray.remote`` by the launcher)."""

    def __init__(self, max_age_s: float = STALE_S) -> None:
        self.max_age_s = max_age_s
        self._texts: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, text: str) -> None:
        self._texts[replica] = (time.monotonic(), text)

    def collect(self) -> dict[str, str]:
        now = time.monotonic()
        for r in [r for r, (t, _) in self._texts.items() if now - t > self.max_age_s]:
            del self._texts[r]
        return {r: text for r, (_, text) in sorted(self._texts.items())}


def _label(line: str, replica: str) -> str:
    m = _SAMPLE.match(line)
    if m is None:
        return line
    extra = f'replica="{replica}"'
    labels = f"{m['labels']},{extra}" if m["labels"] else extra
    return f"{m['name']}{{{labels}}} {m['value']}"


def merge_metrics(texts: dict[str, str]) -> str:
    """One exposition text from several replicas' (HELP/TYPE once per family)."""
    families: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for replica, text in texts.items():
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split()[2]
                header = families.setdefault(family, [])
                if line not in header:
                    header.append(line)
                samples.setdefault(family, [])
            elif line.startswith("#"):
                continue
            else:
                samples.setdefault(family, []).append(_label(line, replica))
    lines = [
        "# HELP ferrousforge_replicas Engine replicas whose metrics are merged here",
        "# TYPE ferrousforge_replicas gauge",
        f"ferrousforge_replicas {len(texts)}",
    ]
    for family, rows in samples.items():
        lines += families.get(family, [])
        lines += rows
    return "\n".join(lines) + "\n"
