"""A job submitted to a Ray head through the Job Submission API receives the whole index request and the
submitter's settings: `--external-image-id basename` reaches the job's records, and so do the submitter's own
settings (a pixel limit no photo passes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from cluster.collections.manifest import Collections
from cluster.indexing.embedder import IndexRequest
from cluster.settings import SECRETS_DIR_ENV, Settings
from cluster.storage import LocalStore
from jobs.s3local import free_port
from jobs.submit import job_client, submit_index
from tests.conftest import lfw_folder, lfw_photos
from tests.s3server import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head with its dashboard (the Job Submission API) on 127.0.0.1; its jobs find our `facegrid`, and
    the cluster's S3 credentials in a secrets folder of its own (as a mounted Kubernetes Secret would be)."""
    saved = dict(os.environ)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    secrets = tmp_path_factory.mktemp("cluster-secrets")
    (secrets / "facegrid_s3_access_key").write_text(ACCESS_KEY)
    (secrets / "facegrid_s3_secret_key").write_text(SECRET_KEY)
    os.environ[SECRETS_DIR_ENV] = str(secrets)
    port = free_port()
    head = {"num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def test_a_submitted_job_gets_the_whole_request(
    dashboard: str, model_dir: Path, lfw_images: Path, tmp_path: Path
) -> None:
    source = lfw_folder(lfw_images, tmp_path / "photos", people=3)
    settings = Settings(model_dir=model_dir, store=str(tmp_path / "store"))
    request = IndexRequest(collection="submitted", source=str(source), external_image_id="basename", shards=2)
    result = submit_index(dashboard, settings, request, wait=True)
    assert result["status"] == "SUCCEEDED", result["logs_tail"]
    summary = json.loads(result["logs_tail"].strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["faces"] >= 2
    collections = Collections(LocalStore(tmp_path / "store"))
    manifest = collections.get("submitted")
    assert manifest.shard_count == 2
    names = collections.faces(manifest, ["external_image_id"]).column("external_image_id").to_pylist()
    assert names and all("/" not in n and n.endswith(".jpg") for n in names)

    strict = settings.model_copy(update={"max_image_pixels": 1000})  # known to the job only through the submitter
    other = request.model_copy(update={"collection": "strict"})
    result = submit_index(dashboard, strict, other, wait=True)
    summary = json.loads(result["logs_tail"].strip().splitlines()[-1])
    assert summary["faces"] == 0 and summary["errors_by_reason"] == {"IMAGE_TOO_LARGE": 3}, summary


def test_the_job_names_its_submitter_and_a_failed_job_fails_the_command(
    dashboard: str, model_dir: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cluster.audit.log import read_records
    from cluster.keys.access import local_operator
    from jobs.cli.main import app

    store = tmp_path / "store"
    env = {"RAY_ADDRESS": dashboard, "FACEGRID_STORE": str(store), "FACEGRID_MODEL_DIR": str(model_dir)}
    failed = CliRunner().invoke(app, ["index", "nowhere", str(tmp_path / "no-such-folder"), "--json"], env=env)
    assert failed.exit_code == 1, failed.output
    assert "ended FAILED" in " ".join(failed.output.split())
    records = [r for r in read_records(LocalStore(store)) if r["action"] == "index"]
    assert records and records[-1]["outcome"] == "error"
    assert records[-1]["client"] == f"ray-job submitted by {local_operator().key_id}"


def test_secrets_stay_out_of_the_job_record(
    dashboard: str, model_dir: Path, lfw_images: Path, tmp_path: Path, s3_endpoint: str
) -> None:
    """The submitter's S3 secret is not in the job's runtime environment, metadata or logs; the job reads its
    S3 source with the cluster's own credentials."""
    from cluster.storage import open_store

    settings = Settings(
        model_dir=model_dir,
        store=str(tmp_path / "store"),
        s3_endpoint=s3_endpoint,
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,
    )
    photos = open_store("s3://submitted-photos", settings)
    photos.ensure_bucket()  # type: ignore[attr-defined]
    for photo in lfw_photos(lfw_images, people=2):
        photos.put(f"{photo.parent.name}/{photo.name}", photo.read_bytes())
    request = IndexRequest(collection="from-s3", source="s3://submitted-photos", shards=1)
    result = submit_index(dashboard, settings, request, wait=True)
    assert result["status"] == "SUCCEEDED", result["logs_tail"]
    assert json.loads(result["logs_tail"].strip().splitlines()[-1])["images"] == 2
    client = job_client(dashboard)
    info = client.get_job_info(result["submission_id"])
    shown = json.dumps({"runtime_env": info.runtime_env, "metadata": info.metadata, "entrypoint": info.entrypoint})
    logs = client.get_job_logs(result["submission_id"])
    assert SECRET_KEY not in shown and SECRET_KEY not in logs
    assert s3_endpoint in shown  # what is not secret still travels


@pytest.mark.parametrize(("cwd", "missing"), [("repo", "typer"), ("elsewhere", "jobs")])
def test_a_cluster_python_without_facegrid_is_named_plainly(tmp_path: Path, cwd: str, missing: str) -> None:
    """The job's entrypoint, run as Ray runs it (a shell, `python` from the node's PATH), by a Python without our
    environment: a node started by `.venv/bin/ray start` from the system's Python, beside the source (`jobs` found,
    `typer` not) or away from it. One plain line, the module it lacks and the fix; the job never starts."""
    from jobs.submit import CANNOT_IMPORT, ENTRYPOINTS, PREFLIGHT_EXIT

    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # -S: no site-packages, as a bare Python
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    where = Path(__file__).resolve().parents[2] if cwd == "repo" else tmp_path
    ran = subprocess.run(
        ["sh", "-c", ENTRYPOINTS["index"]], cwd=where, env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == PREFLIGHT_EXIT, ran.stderr
    assert ran.stderr.startswith(CANNOT_IMPORT) and f"no module '{missing}'" in ran.stderr
    assert "Traceback" not in ran.stderr and "ray start" in ran.stderr
