"""Replicas of the server on Ray Serve (`ferrousforge serve --ray`): an ingress that reads
each request and a cache-aware router that sends it to one of N engine replicas.

Ray is an optional extra (``pip install 'ferrousforge[ray]'``). The modules that import it
(``router``, ``deployments``, ``launcher``) are imported only when ``--ray`` is given; the
others (route keys, the prefix index, the in-process ASGI driver, metrics merging) are plain
Python and tested without Ray.
"""

from __future__ import annotations

import importlib.util

from ferrousforge.errors import RayNotInstalledError

INSTALL_HINT = "pip install 'ferrousforge[ray]'"


def require_ray() -> None:
    """Raise RayNotInstalledError, naming the extra to install, when Ray Serve is missing."""
    try:
        missing = importlib.util.find_spec("ray") is None
        if not missing:
            import ray.serve  # noqa: F401  (the extra brings Serve's own dependencies)
    except ImportError:
        missing = True
    except ValueError:  # a module set to None in sys.modules
        missing = True
    if missing:
        raise RayNotInstalledError(f"--ray needs Ray Serve, which is not installed: {INSTALL_HINT}")
