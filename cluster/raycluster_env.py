"""Environment Ray reads when it is imported: set before the first `import ray` of a command (hence no ray here)."""

from __future__ import annotations

import os
from pathlib import Path

# Set by Ray in the driver of a submitted job, whose environment is already the cluster's own.
IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def prepare_ray_environment(address: str | None) -> None:
    if os.environ.get(IN_RAY_JOB):
        return  # a job driver joins the cluster it runs on, in that cluster's auth mode
    if address:
        # Ray 2.60 may have switched token auth on (~/.ray/auth_token); a client joining such a cluster must say so.
        if (Path.home() / ".ray" / "auth_token").exists():
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    else:
        # The embedded single-node default binds 127.0.0.1 instead of the host's interface (DESIGN.md).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
