"""Submitting index jobs to a Ray cluster through the Job Submission API (the dashboard's address)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cluster.embedder import IndexRequest
from cluster.settings import Settings

# The job driver receives the whole request and the submitter's settings (store, credentials, detector, runtime,
# serving) as JSON in its environment: secrets travel there, never in the job's command line.
REQUEST_ENV = "FACEGRID_JOB_REQUEST"
SETTINGS_ENV = "FACEGRID_JOB_SETTINGS"
ENTRYPOINT = "facegrid jobs run-index --json"


def job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    if (Path.home() / ".ray" / "auth_token").exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    return JobSubmissionClient(address)


def job_environment(settings: Settings, request: IndexRequest) -> dict[str, str]:
    return {REQUEST_ENV: request.model_dump_json(), SETTINGS_ENV: settings.model_dump_json()}


def received() -> tuple[Settings, IndexRequest]:
    """Inside a submitted job: the settings and request the submitter sent."""
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    return settings, IndexRequest.model_validate_json(os.environ[REQUEST_ENV])


def submit_index(address: str, settings: Settings, request: IndexRequest, wait: bool) -> dict[str, Any]:
    client = job_client(address)
    # Inside the job Ray sets RAY_ADDRESS to the cluster, so the job's driver joins the cluster it runs on.
    job_id = client.submit_job(
        entrypoint=ENTRYPOINT,
        runtime_env={"env_vars": job_environment(settings, request)},
        metadata={"facegrid": "index", "collection": request.collection},
    )
    result: dict[str, Any] = {"submission_id": job_id, "address": address}
    if wait:
        while (status := client.get_job_status(job_id)).is_terminal() is False:
            time.sleep(2)
        result["status"] = str(status)
        result["logs_tail"] = client.get_job_logs(job_id)[-4000:]
    return result
