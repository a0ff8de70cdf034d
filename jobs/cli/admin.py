"""facegrid commands for collections, faces, cluster jobs, API keys and the audit log."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cluster.collections.manifest import DEFAULT_MAX_FALSE_CANDIDATES
from cluster.errors import DashboardUnreachable, InvalidRequest
from cluster.keys.access import Caller, Role
from jobs.cli.common import JsonFlag, ModelOption, RecipeOption, call, console, emit, fail, shard_count

if TYPE_CHECKING:
    from serving.usecases.context import Context

collections_app = typer.Typer(help="Create, list, describe and delete collections.", no_args_is_help=True)
faces_app = typer.Typer(help="List and delete indexed faces.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs on a Ray cluster (Job Submission API).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: created, listed, revoked; every change is audited.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log: verify, export, report.", no_args_is_help=True)


@collections_app.command("calibrate")
def collections_calibrate(
    name: str,
    calibration: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="From eval --save-calibration")],
    as_json: JsonFlag = False,
) -> None:
    """Pin another calibration to one collection: the only way its floor moves. Shows the old and the new floor
    similarity; audited."""
    from serving.usecases import collections

    try:
        loaded = json.loads(calibration.read_text())
    except (OSError, ValueError) as exc:
        raise fail(InvalidRequest(f"cannot read calibration {calibration}: {exc}")) from exc
    emit(call(lambda s, c: collections.calibrate(s, c, name, loaded)), as_json)


@collections_app.command("promise")
def collections_promise(name: str, max_false_candidates_per_search: float, as_json: JsonFlag = False) -> None:
    """Set the per-search promise of one collection (strangers expected above the threshold in one search): the
    only way it moves. Shows the old and the new one and the threshold it implies now; audited."""
    from serving.usecases import collections

    emit(call(lambda s, c: collections.set_promise(s, c, name, max_false_candidates_per_search)), as_json)


@collections_app.command("create")
def collections_create(
    name: str,
    shards: Annotated[str, typer.Option(help="A count, or auto: a shard per node, more past 5M faces a node.")] = "4",
    max_false_match_rate: Annotated[float, typer.Option(help="The floor: most false matches per comparison.")] = 1e-5,
    max_false_candidates_per_search: Annotated[
        float, typer.Option(help="The per-search promise: strangers expected above the threshold in one search.")
    ] = DEFAULT_MAX_FALSE_CANDIDATES,
    index: Annotated[str, typer.Option(help="auto, Flat, HNSW<M>, IVF<n>,SQ8 or IVF<n>,PQ<m> (per shard)")] = "auto",
    model: ModelOption = None,
    recipe: RecipeOption = None,
    replicas: Annotated[
        int | None, typer.Option(help="Actors per shard, on different nodes where there are enough (default 1).")
    ] = None,
    keep_photos: Annotated[
        bool, typer.Option(help="Keep photos added by upload (review's crops, model upgrades); off is audited.")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Create an empty collection pinned to one recipe (detector, embedding model and its file by sha256, mirroring,
    precision) and to that recipe's calibration."""
    from serving.usecases import collections

    promise = max_false_candidates_per_search
    created = call(
        lambda s, c: collections.create(
            s, c, name, shard_count(shards), max_false_match_rate, index, model, replicas, promise, recipe, keep_photos
        )
    )
    emit(created.model_dump(exclude={"shards"}), as_json)


@collections_app.command("replicas")
def collections_replicas(name: str, replicas: int, as_json: JsonFlag = False) -> None:
    """Run this many actors of every shard (on different nodes where the cluster has enough): a query asks one
    and fails over to another, so losing a node loses no answer."""
    from serving.usecases import collections

    emit(call(lambda s, c: collections.set_replicas(s, c, name, replicas)).model_dump(exclude={"shards"}), as_json)


@collections_app.command("list")
def collections_list(as_json: JsonFlag = False) -> None:
    from serving.usecases import collections

    emit({"collections": call(collections.names)}, as_json)


@collections_app.command("describe")
def collections_describe(name: str, as_json: JsonFlag = False) -> None:
    from serving.usecases import collections

    emit(call(lambda s, c: collections.describe(s, c, name)), as_json)


@collections_app.command("delete")
def collections_delete(
    name: str, yes: Annotated[bool, typer.Option("--yes")] = False, as_json: JsonFlag = False
) -> None:
    """Delete a collection with its face records, errors and snapshots."""
    from serving.usecases import collections

    if not yes:
        typer.confirm(f"Delete collection {name} and every face record in it?", abort=True)
    emit({"collection": name, "deleted_objects": call(lambda s, c: collections.delete(s, c, name))}, as_json)


@collections_app.command("rebuild")
def collections_rebuild(
    name: str,
    shards: Annotated[
        str | None, typer.Option(help="Reshard to this many shards, or auto (a shard per node, more past 5M a node).")
    ] = None,
    index: Annotated[str | None, typer.Option(help="Rebuild with this index spec.")] = None,
    retrain: Annotated[bool, typer.Option(help="Train a compressed index afresh instead of adding to it.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild a collection's snapshots, retrain or reshard it; searches are answered from the old ones meanwhile."""
    from serving.usecases import collections

    count = None if shards is None else shard_count(shards)
    rebuilt = call(lambda s, c: collections.rebuild(s, c, name, count, index, retrain))
    emit(rebuilt.model_dump(exclude={"shards"}), as_json)


@faces_app.command("list")
def faces_list(collection: str, limit: int = 20, offset: int = 0, as_json: JsonFlag = False) -> None:
    from serving.usecases import faces

    emit(call(lambda s, c: faces.page(s, c, collection, limit, offset)), as_json)


@faces_app.command("delete")
def faces_delete(
    collection: str,
    face_id: Annotated[list[str] | None, typer.Option(help="Face id to erase (repeatable).")] = None,
    external_image_id: Annotated[list[str] | None, typer.Option(help="Erase every face of this image id.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Erase faces from the Parquet records and the shard snapshots."""
    from serving.usecases import faces

    emit(call(lambda s, c: faces.erase(s, c, collection, face_id or [], external_image_id or [])), as_json)


@faces_app.command("add")
def faces_add(
    collection: str,
    photo: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    external_image_id: Annotated[str | None, typer.Option(help="Your id for the photo (default: its sha256).")] = None,
    max_faces: Annotated[int | None, typer.Option(help="Index at most N faces, largest first.")] = None,
    quality_filter: Annotated[str, typer.Option(help="NONE, LOW, MEDIUM or HIGH")] = "LOW",
    as_json: JsonFlag = False,
) -> None:
    """Add one photo's faces (IndexFaces): the same code path as POST /v1/collections/C/faces."""
    from cluster.pipeline.quality import QualityFilter
    from serving.usecases import ingest

    blob, bar = photo.read_bytes(), QualityFilter(quality_filter.upper())
    emit(call(lambda s, c: ingest.add_faces(s, c, collection, blob, external_image_id, max_faces, bar)), as_json)


@faces_app.command("readmit")
def faces_readmit(
    collection: str,
    face_id: Annotated[list[str] | None, typer.Option(help="Erased face id to readmit (repeatable).")] = None,
    source: Annotated[list[str] | None, typer.Option(help="Readmit every erased face of this source object.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Lift erasures: the next index run over their source may bring those faces back. Audited."""
    from serving.usecases import ingest

    emit(call(lambda s, c: ingest.readmit(s, c, collection, face_id or [], source or [])), as_json)


def _on_jobs(ask: Callable[[Any], Any]) -> Any:
    """Ask the Job Submission API at --address; an address that does not answer, or a refusal (an unknown job
    id), is one line and exit status 2, not a traceback."""
    from jobs.submit import job_client

    address = os.environ.get("RAY_ADDRESS", "")
    if not address.startswith("http"):
        console.print("[red]error[/red]: jobs commands need --address http://HEAD:8265 (the Ray dashboard)")
        raise typer.Exit(2)
    try:
        return ask(job_client(address))
    except DashboardUnreachable as exc:
        raise fail(exc) from exc
    except (ConnectionError, RuntimeError, ValueError) as exc:  # requests' errors are ConnectionError or OSError
        raise fail(DashboardUnreachable(f"the Ray dashboard at {address}: {str(exc).splitlines()[0][:300]}")) from exc
    except OSError as exc:
        raise fail(DashboardUnreachable(f"the Ray dashboard at {address} did not answer: {exc}")) from exc


@jobs_app.command("list")
def jobs_list(as_json: JsonFlag = False) -> None:
    rows = [
        {"submission_id": j.submission_id, "status": str(j.status), "entrypoint": j.entrypoint, "start": j.start_time}
        for j in _on_jobs(lambda client: client.list_jobs())
    ]
    emit({"jobs": rows}, as_json)


@jobs_app.command("status")
def jobs_status(job_id: str, as_json: JsonFlag = False) -> None:
    info = _on_jobs(lambda client: client.get_job_info(job_id))
    emit({"submission_id": job_id, "status": str(info.status), "message": info.message}, as_json)


@jobs_app.command("logs")
def jobs_logs(job_id: str) -> None:
    print(_on_jobs(lambda client: client.get_job_logs(job_id)))


@jobs_app.command("stop")
def jobs_stop(job_id: str, as_json: JsonFlag = False) -> None:
    emit({"submission_id": job_id, "stopped": _on_jobs(lambda client: client.stop_job(job_id))}, as_json)


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="admin, indexer, searcher or auditor")],
    collection: Annotated[list[str] | None, typer.Option(help="Grant only these collections (repeatable).")] = None,
    label: str = "",
    protocol: Annotated[
        str, typer.Option(help="facegrid (a bearer token) or rekognition (an access key id and secret)")
    ] = "facegrid",
    purpose: Annotated[str | None, typer.Option(help="rekognition: the purpose its calls are bound to")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a key; its token (or, for the Rekognition protocol, its secret access key) is printed once."""
    from serving.usecases import keys

    async def create(ctx: Context, caller: Caller) -> dict[str, Any]:
        if protocol == "rekognition":
            if purpose is None:
                raise InvalidRequest("a rekognition credential is bound to one purpose: give --purpose")
            key, credential, secret = await keys.create_protocol_credential(
                ctx, caller, role, collection, label, purpose
            )
            return {**key.public(), **credential.public(), "secret_access_key": secret}
        if protocol != "facegrid":
            raise InvalidRequest("protocol must be facegrid or rekognition")
        key, token = await keys.create(ctx, caller, role, collection, label)
        return {**key.public(), "token": token}

    emit(call(create), as_json)


@keys_app.command("session")
def keys_session(
    access_key_id: Annotated[str, typer.Option(help="A rekognition credential's access key id")],
    case_id: Annotated[str, typer.Option(help="The case every call with these credentials serves")],
    purpose: Annotated[str | None, typer.Option(help="Checked against the credential's own")] = None,
    ttl: Annotated[str, typer.Option(help="How long they last: 900s, 30m, 1h (at most 12h)")] = "1h",
    as_json: JsonFlag = False,
) -> None:
    """Short-lived session credentials carrying a case id (AccessKeyId, SecretAccessKey, SessionToken)."""
    from serving.usecases import keys

    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = int(float(ttl[:-1]) * units[ttl[-1]]) if ttl[-1:] in units else int(ttl)
    except ValueError as exc:
        raise fail(InvalidRequest(f"--ttl {ttl!r} is not a duration such as 900s, 30m or 1h")) from exc
    emit(call(lambda s, c: keys.session(s, c, access_key_id, purpose, case_id, seconds)), as_json)


@keys_app.command("list")
def keys_list(as_json: JsonFlag = False) -> None:
    from serving.usecases import keys

    emit({"keys": call(keys.listed)}, as_json)


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: JsonFlag = False) -> None:
    from serving.usecases import keys

    emit(call(lambda s, c: keys.revoke(s, c, key_id)).public(), as_json)


@audit_app.command("verify")
def audit_verify(
    checkpoint: Annotated[
        Path | None, typer.Option(help="A checkpoint saved by `audit head`: prove nothing up to it changed")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check every record's hash and link, and that the chain reaches its head; name the first record modified,
    removed (the last ones too), reordered or out of chain."""
    from serving.usecases import audit

    saved = None
    if checkpoint is not None:
        try:
            saved = json.loads(checkpoint.read_text())
            saved = {"seq": int(saved["seq"]), "hash": str(saved["hash"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise fail(InvalidRequest(f"cannot read checkpoint {checkpoint}: {exc}")) from exc
    result = call(lambda s, c: audit.check(s, c, saved))
    emit(result, as_json)
    if not result["ok"]:
        raise typer.Exit(1)


@audit_app.command("repair")
def audit_repair(as_json: JsonFlag = False) -> None:
    """Admins: cut a damaged log back to its last verified record so that audited work can go on; the damaged
    part is kept under audit-damaged/ in the store, and the repair is audited as the next record."""
    from serving.usecases import audit

    emit(call(audit.repair), as_json)


@audit_app.command("head")
def audit_head(as_json: JsonFlag = False) -> None:
    """Print a checkpoint of the chain (seq, hash, time of the last record): publish it somewhere the store's
    writers cannot reach; `audit verify --checkpoint FILE` then proves nothing up to it was removed or changed."""
    from serving.usecases import audit

    emit(call(audit.checkpoint), as_json)


def _when(text: str | None) -> datetime | None:
    """A time as given, its offset honoured (none: UTC); a bad one a clear error, not a traceback."""
    from serving.usecases.audit import parse_time

    try:
        return parse_time(text, "a time")
    except InvalidRequest as exc:
        raise fail(exc) from exc


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option(help="File to write: .parquet or .csv")],
    start: Annotated[str | None, typer.Option("--from", help="ISO date or time, inclusive (UTC)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="ISO date or time, exclusive (UTC)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Export audit records in a time range to Parquet or CSV; the export itself is audited."""
    from serving.usecases import audit

    count = call(lambda s, c: audit.export(s, c, out, _when(start), _when(end)))
    emit({"records": count, "out": str(out)}, as_json)


@audit_app.command("report")
def audit_report(
    out: Annotated[Path | None, typer.Option(help="Folder for transparency.png")] = None, as_json: JsonFlag = False
) -> None:
    """Searches per purpose, role and month; refused searches; deletions; index jobs."""
    from cluster.audit.transparency import write_chart
    from serving.usecases import audit

    report = call(audit.report)
    if out is not None:
        report["chart"] = str(write_chart(report, out))
    emit(report, as_json)


@jobs_app.command("run-index", hidden=True)
def jobs_run_index(as_json: JsonFlag = False) -> None:
    """Inside a submitted job: run the index request the submitter sent (see jobs/submit.py)."""
    from cluster.indexing.embedder import IndexRequest
    from jobs.cli.run import run_index
    from jobs.submit import received

    sent, request, submitter = received(IndexRequest)
    emit(run_index(request, sent, submitted_by=submitter), as_json)
