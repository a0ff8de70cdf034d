"""Submitting index jobs to a Ray cluster through the Job Submission API (the dashboard's address)."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any

from cluster.settings import Settings

# Settings the job driver needs to reach the same store; secrets travel in the job's environment, not its command.
FORWARDED_ENV = (
    "FACEGRID_STORE",
    "FACEGRID_S3_ENDPOINT",
    "FACEGRID_S3_ACCESS_KEY",
    "FACEGRID_S3_SECRET_KEY",
    "FACEGRID_S3_REGION",
    "FACEGRID_S3_SECURE",
    "FACEGRID_MODEL_DIR",
)


def job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    if (Path.home() / ".ray" / "auth_token").exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    return JobSubmissionClient(address)


def submit_index(
    address: str,
    settings: Settings,
    collection: str,
    source: str,
    shards: int,
    max_faces: int | None,
    quality_filter: str,
    wait: bool,
    model: str | None = None,
) -> dict[str, Any]:
    client = job_client(address)
    args = ["facegrid", "index", collection, source, "--shards", str(shards), "--quality-filter", quality_filter]
    if max_faces is not None:
        args += ["--max-faces", str(max_faces)]
    if model is not None:
        args += ["--model", model]
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.setdefault("FACEGRID_STORE", settings.store)
    # Inside the job Ray sets RAY_ADDRESS to the cluster, so the same command runs there against the cluster.
    job_id = client.submit_job(
        entrypoint=shlex.join([*args, "--json"]),
        runtime_env={"env_vars": env},
        metadata={"facegrid": "index", "collection": collection},
    )
    result: dict[str, Any] = {"submission_id": job_id, "address": address}
    if wait:
        while (status := client.get_job_status(job_id)).is_terminal() is False:
            time.sleep(2)
        result["status"] = str(status)
        result["logs_tail"] = client.get_job_logs(job_id)[-4000:]
    return result
