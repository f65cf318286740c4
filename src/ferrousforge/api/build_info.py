"""The build id clients see: llama-server's ``system_fingerprint`` (``b<build>-<commit>``)."""

from __future__ import annotations

from ferrousforge import __version__

# llama-server's form, so that clients that read the build from it keep working.
SYSTEM_FINGERPRINT = f"b{__version__}-ferrousforge"
