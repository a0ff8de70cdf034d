"""Environment Ray reads when it is imported: set before the first `import ray` of a command (hence no ray here)."""

from __future__ import annotations

import os
from pathlib import Path


def prepare_ray_environment(address: str | None) -> None:
    if address:
        # Ray 2.60 may have switched token auth on (~/.ray/auth_token); a client joining such a cluster must say so.
        if (Path.home() / ".ray" / "auth_token").exists():
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    else:
        # The embedded single-node default binds 127.0.0.1 instead of the host's interface (DESIGN.md).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
