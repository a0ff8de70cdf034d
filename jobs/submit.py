"""Submitting index and upgrade jobs to a Ray cluster through the Job Submission API (the dashboard's address)."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from cluster.errors import DashboardUnreachable
from cluster.indexing.embedder import IndexRequest
from cluster.keys.access import local_operator
from cluster.settings import SECRET_FIELDS, Settings, load_settings

# The job driver receives the whole request and the submitter's settings (store, detector, runtime, serving) as
# JSON in its environment, which the dashboard shows to anyone who can read it: no secret travels there. The job
# reads its secrets where the cluster keeps them (its environment, or FACEGRID_SECRETS_DIR on its nodes).
REQUEST_ENV = "FACEGRID_JOB_REQUEST"
SETTINGS_ENV = "FACEGRID_JOB_SETTINGS"
SUBMITTER_ENV = "FACEGRID_JOB_SUBMITTER"
# The job's first line: can the cluster's Python import facegrid? If not, one plain line says which module it
# lacks and how to fix it (instead of a traceback from deep inside the job), and the job ends with PREFLIGHT_EXIT.
CANNOT_IMPORT = "facegrid: the Ray cluster's Python cannot import facegrid"
PREFLIGHT_EXIT = 3
PREFLIGHT = f"""
import sys
try:
    import jobs.cli.main
except ImportError as exc:
    print(f"{CANNOT_IMPORT} ({{sys.executable}}: no module {{exc.name!r}}). Start every Ray node from facegrid's "
          "environment (`source .venv/bin/activate`, then `ray start ...`), or install facegrid into the Python "
          "the nodes run.", file=sys.stderr)
    sys.exit({PREFLIGHT_EXIT})
"""
# Our own module through the cluster's Python: no assumption that a `facegrid` script is on the cluster's PATH.
ENTRYPOINTS = {
    kind: f"python -c {shlex.quote(PREFLIGHT)} && python -m jobs.cli jobs run-{kind} --json"
    for kind in ("index", "upgrade")
}
Request = TypeVar("Request", bound=BaseModel)


def job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    if (Path.home() / ".ray" / "auth_token").exists():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, OSError) as exc:  # Ray's own, and requests' (an OSError)
        raise DashboardUnreachable(f"the Ray dashboard at {address}: {str(exc).splitlines()[0][:300]}") from exc


def job_environment(settings: Settings, request: BaseModel, submitter: str) -> dict[str, str]:
    return {
        REQUEST_ENV: request.model_dump_json(),
        SETTINGS_ENV: settings.model_dump_json(exclude=SECRET_FIELDS),
        SUBMITTER_ENV: submitter,
    }


def received(kind: type[Request]) -> tuple[Settings, Request, str]:
    """Inside a submitted job: the settings the submitter sent with the cluster's own secrets, the request (of
    this kind), and who submitted it."""
    cluster = load_settings()
    sent = json.loads(os.environ[SETTINGS_ENV])
    secrets = {"s3_access_key": cluster.s3_access_key, "s3_secret_key": cluster.s3_secret_key}
    sent.setdefault("serving", {})["credential_key"] = cluster.serving.credential_key
    settings = Settings.model_validate({**sent, **secrets})
    request = kind.model_validate_json(os.environ[REQUEST_ENV])
    return settings, request, os.environ.get(SUBMITTER_ENV, "unknown")


def submit_index(address: str, settings: Settings, request: IndexRequest, wait: bool) -> dict[str, Any]:
    return submit_job(address, settings, "index", request, request.collection, wait)


def submit_job(
    address: str, settings: Settings, kind: str, request: BaseModel, collection: str, wait: bool
) -> dict[str, Any]:
    """Submit a job of this kind (`ENTRYPOINTS`) with its request; with `wait`, follow it to its end."""
    client = job_client(address)
    submitter = local_operator().key_id
    # Inside the job Ray sets RAY_ADDRESS to the cluster, so the job's driver joins the cluster it runs on.
    job_id = client.submit_job(
        entrypoint=ENTRYPOINTS[kind],
        runtime_env={"env_vars": job_environment(settings, request, submitter)},
        metadata={"facegrid": kind, "collection": collection, "submitted_by": submitter},
    )
    result: dict[str, Any] = {"submission_id": job_id, "address": address}
    if wait:
        while (status := client.get_job_status(job_id)).is_terminal() is False:
            time.sleep(2)
        result["status"] = str(status)
        logs = client.get_job_logs(job_id)
        result["logs_tail"] = logs[-4000:]
        if cannot := [line for line in logs.splitlines() if line.startswith(CANNOT_IMPORT)]:
            result["error"] = cannot[0]
    return result
