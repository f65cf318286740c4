"""Human-written sizes and durations: ``--memory-budget 8GiB``, ``"keep_alive": "5m"``."""

from __future__ import annotations

import math
import re

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: str | int | float) -> int:
    """Bytes of ``8GiB``, ``512MiB``, ``2G`` (1000-based), ``1.5GB`` or a plain number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"size: must be >= 0, got {value}")
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(
            f"size: expected a number with an optional unit (8GiB, 512MiB, 2G), got {value!r}"
        )
    number, prefix, binary = m.groups()
    power = "kmgt".find(prefix.lower()) + 1 if prefix else 0
    base = 1024 if binary else 1000
    return int(float(number) * base**power)


def parse_duration(value: str | int | float | None) -> float | None:
    """Seconds for Ollama's ``keep_alive``: a number of seconds or ``"5m"``, ``"1h30m"``,
    ``"300ms"``; any negative value means forever (``math.inf``); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError('keep_alive: expected a duration such as 300, "5m" or -1')
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("keep_alive: must be a finite number of seconds")
        return math.inf if value < 0 else float(value)
    text = value.strip().lower()
    negative = text.startswith("-")
    body = text.lstrip("+-")
    try:
        seconds = float(body)  # "300" as a string
    except ValueError:
        parts = _DURATION_PART.findall(body)
        if not parts or "".join(n + u for n, u in parts) != body:
            raise ValueError(
                f'keep_alive: expected seconds or a duration such as "5m" or "1h30m", got {value!r}'
            ) from None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    return math.inf if negative else seconds
