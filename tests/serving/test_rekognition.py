"""Rekognition's own protocol, driven by an unmodified boto3 client against a real server on 127.0.0.1: every
operation on lfw-dev photos, each modeled error for its cause, the same answers and audit as /v1, roles."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.fernet import Fernet
from PIL import Image

from cluster.audit.log import read_records
from cluster.keys.access import Role, local_operator
from cluster.models.recipes import DEFAULT_RECIPE
from cluster.settings import Settings
from serving.threaded import serve_in_thread
from serving.usecases import keys
from serving.usecases.context import Context

pytestmark = pytest.mark.slow

PEOPLE, INDEXED = 5, 3
MAX_UPLOAD = 2_000_000
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


def _client(url: str, creds: dict[str, Any]) -> Any:
    return boto3.client(
        "rekognition",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds.get("SessionToken"),
        config=NO_RETRIES,
    )


def _credential(ctx: Context, role: Role, case_id: str | None) -> dict[str, Any]:
    op = local_operator()
    _key, made, secret = asyncio.run(keys.create_protocol_credential(ctx, op, role, None, role.value, "system-test"))
    if case_id is None:
        return {"AccessKeyId": made.access_key_id, "SecretAccessKey": secret}
    return asyncio.run(keys.session(ctx, op, made.access_key_id, "system-test", case_id, 3600))


def _two_faces(large: Path, small: Path) -> bytes:
    canvas = Image.new("RGB", (800, 500), (128, 128, 128))
    canvas.paste(Image.open(large).convert("RGB").resize((500, 500)), (0, 0))
    canvas.paste(Image.open(small).convert("RGB").resize((250, 250)), (540, 120))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=92)
    return out.getvalue()


@pytest.fixture(scope="module")
def world(
    lfw_images: Path, model_dir: Path, local_ray: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    people = [p for p in sorted(lfw_images.iterdir()) if len(list(p.glob("*.jpg"))) >= INDEXED + 1][:PEOPLE]
    photos = {p.name: sorted(p.glob("*.jpg"))[: INDEXED + 1] for p in people}
    settings = Settings(
        model_dir=model_dir,
        store=str(tmp_path_factory.mktemp("rekognition-store")),
        serving={"credential_key": Fernet.generate_key().decode(), "max_upload_bytes": MAX_UPLOAD},
    )
    ctx = Context(settings)
    token = ctx.keys.create(Role.ADMIN, label="v1")[1]
    with serve_in_thread(ctx) as url:
        yield {
            "url": url,
            "ctx": ctx,
            "photos": photos,
            "admin": _client(url, _credential(ctx, Role.ADMIN, "RK-CASE")),
            "admin_no_case": _client(url, _credential(ctx, Role.ADMIN, None)),
            "searcher": _client(url, _credential(ctx, Role.SEARCHER, "RK-CASE")),
            "auditor": _client(url, _credential(ctx, Role.AUDITOR, "RK-CASE")),
            "v1": httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}),
        }
    ctx.close()


def _code(call: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"], raised.value.response["Error"]["Message"]


def test_every_operation(world: Any) -> None:
    rk, photos = world["admin"], world["photos"]
    assert (
        rk.create_collection(CollectionId="rk")["FaceModelVersion"] == DEFAULT_RECIPE
    )  # the recipe that makes its faces
    assert "rk" in rk.list_collections()["CollectionIds"]
    ids: dict[str, list[str]] = {}
    for person, files in photos.items():
        for photo in files[:INDEXED]:
            image = {"Bytes": photo.read_bytes()}
            made = rk.index_faces(
                CollectionId="rk",
                Image=image,
                ExternalImageId=f"{person}.{photo.stem}",
                MaxFaces=1,
                QualityFilter="NONE",
            )
            assert made["FaceRecords"][0]["Face"]["BoundingBox"]["Width"] > 0
            ids.setdefault(person, []).append(made["FaceRecords"][0]["Face"]["FaceId"])
    (a, a_files), (_, b_files) = list(photos.items())[:2]
    crowd = _two_faces(b_files[INDEXED], a_files[INDEXED])
    kept = rk.index_faces(CollectionId="rk", Image={"Bytes": crowd}, ExternalImageId="crowd", MaxFaces=1)
    assert len(kept["FaceRecords"]) == 1 and kept["UnindexedFaces"][0]["Reasons"] == ["EXCEEDS_MAX_FACES"]
    described = rk.describe_collection(CollectionId="rk")
    assert described["FaceCount"] == PEOPLE * INDEXED + 1 and described["UserCount"] == 0

    pages = list(rk.get_paginator("list_faces").paginate(CollectionId="rk", PaginationConfig={"PageSize": 4}))
    listed = [f["FaceId"] for page in pages for f in page["Faces"]]
    assert len(pages) > 1 and sorted(listed) == sorted(
        [*(f for face_ids in ids.values() for f in face_ids), kept["FaceRecords"][0]["Face"]["FaceId"]]
    )

    found = rk.search_faces_by_image(CollectionId="rk", Image={"Bytes": a_files[INDEXED].read_bytes()})
    assert (
        found["FaceMatches"][0]["Face"]["ExternalImageId"].startswith(a) and found["FaceMatches"][0]["Similarity"] >= 80
    )
    like = rk.search_faces(CollectionId="rk", FaceId=ids[a][0])
    assert ids[a][0] not in [m["Face"]["FaceId"] for m in like["FaceMatches"]]
    assert {m["Face"]["FaceId"] for m in like["FaceMatches"]} & set(ids[a][1:])

    compared = rk.compare_faces(SourceImage={"Bytes": a_files[0].read_bytes()}, TargetImage={"Bytes": crowd})
    assert len(compared["FaceMatches"]) == 1 and len(compared["UnmatchedFaces"]) == 1
    assert compared["FaceMatches"][0]["Face"]["BoundingBox"]["Left"] > 0.6  # the smaller face, on the right
    assert len(rk.detect_faces(Image={"Bytes": crowd})["FaceDetails"]) == 2

    rk.create_user(CollectionId="rk", UserId="alice")
    associated = rk.associate_faces(CollectionId="rk", UserId="alice", FaceIds=ids[a])
    assert sorted(f["FaceId"] for f in associated["AssociatedFaces"]) == sorted(ids[a])
    assert rk.list_users(CollectionId="rk")["Users"] == [{"UserId": "alice", "UserStatus": "ACTIVE"}]
    assert rk.search_users(CollectionId="rk", FaceId=ids[a][0])["UserMatches"][0]["User"]["UserId"] == "alice"
    by_image = rk.search_users_by_image(CollectionId="rk", Image={"Bytes": a_files[INDEXED].read_bytes()})
    assert by_image["UserMatches"][0]["User"]["UserId"] == "alice"
    assert rk.search_users(CollectionId="rk", UserId="alice")["SearchedUser"] == {"UserId": "alice"}
    gone = rk.disassociate_faces(CollectionId="rk", UserId="alice", FaceIds=[ids[a][0]])
    assert gone["DisassociatedFaces"] == [{"FaceId": ids[a][0]}]
    rk.delete_user(CollectionId="rk", UserId="alice")
    assert rk.list_users(CollectionId="rk")["Users"] == []

    target = found["FaceMatches"][0]["Face"]["FaceId"]
    deleted = rk.delete_faces(CollectionId="rk", FaceIds=[target, "00000000-0000-0000-0000-000000000000"])
    assert deleted["DeletedFaces"] == [target] and deleted["UnsuccessfulFaceDeletions"][0]["Reasons"] == [
        "FACE_NOT_FOUND"
    ]
    again = rk.search_faces_by_image(CollectionId="rk", Image={"Bytes": a_files[INDEXED].read_bytes()})
    assert target not in [m["Face"]["FaceId"] for m in again["FaceMatches"]]


def test_errors_are_the_modeled_exceptions(world: Any) -> None:
    rk, url = world["admin"], world["url"]
    photo = next(iter(world["photos"].values()))[0].read_bytes()
    if "errors" not in rk.list_collections()["CollectionIds"]:
        rk.create_collection(CollectionId="errors")
        time.sleep(1.1)  # the same write signed in the same second would be the same request: a replay
    cases = {
        "ResourceNotFoundException": lambda: rk.describe_collection(CollectionId="missing"),
        "ResourceAlreadyExistsException": lambda: rk.create_collection(CollectionId="errors"),
        "InvalidImageFormatException": lambda: rk.detect_faces(Image={"Bytes": b"not an image at all"}),
        "ImageTooLargeException": lambda: rk.detect_faces(Image={"Bytes": b"\xff" * (MAX_UPLOAD + 1)}),
        "InvalidS3ObjectException": lambda: rk.detect_faces(Image={"S3Object": {"Bucket": "other", "Name": "a.jpg"}}),
        "InvalidParameterException": lambda: rk.search_faces_by_image(
            CollectionId="errors", Image={"Bytes": photo}, FaceMatchThreshold=150
        ),
    }
    for expected, call in cases.items():
        assert _code(call)[0] == expected
    good = world["ctx"].credentials.all()[0]
    wrong = _client(url, {"AccessKeyId": good.access_key_id, "SecretAccessKey": "not-the-secret"})
    assert _code(lambda: wrong.list_collections())[0] == "InvalidSignatureException"
    unknown = _client(url, {"AccessKeyId": "AKFG0000000000000000", "SecretAccessKey": "x"})
    assert _code(lambda: unknown.list_collections())[0] == "UnrecognizedClientException"

    def tamper(request: Any, **_: Any) -> None:
        request.body = request.body.replace(b"errors", b"errorz")

    rk.meta.events.register_first("before-send.rekognition.DescribeCollection", tamper)
    try:
        assert _code(lambda: rk.describe_collection(CollectionId="errors"))[0] == "InvalidSignatureException"
    finally:
        rk.meta.events.unregister("before-send.rekognition.DescribeCollection", tamper)
    creds = world["ctx"].credentials
    sealed = {"id": "ASFG0000000000000001", "parent": good.access_key_id, "case_id": "C", "exp": int(time.time()) - 5}
    sealed["secret"] = "s"
    token = creds.cipher.encrypt(json.dumps(sealed).encode()).decode()
    expired = _client(url, {"AccessKeyId": sealed["id"], "SecretAccessKey": "s", "SessionToken": token})
    assert _code(lambda: expired.list_collections())[0] == "ExpiredTokenException"
    code, message = _code(
        lambda: world["admin_no_case"].search_faces_by_image(CollectionId="errors", Image={"Bytes": photo})
    )
    assert code == "AccessDeniedException" and "case_id" in message and "keys session" in message
    refusals = [r for r in read_records(world["ctx"].store) if r["action"] == "authenticate"]
    assert len(refusals) >= 4 and all(r["outcome"] == "refused" for r in refusals)


def test_same_search_through_both_protocols(world: Any) -> None:
    rk, v1, files = world["admin"], world["v1"], next(iter(world["photos"].values()))
    if "both" not in rk.list_collections()["CollectionIds"]:
        rk.create_collection(CollectionId="both")
        for other, theirs in world["photos"].items():
            for photo in theirs[:INDEXED]:
                rk.index_faces(
                    CollectionId="both", Image={"Bytes": photo.read_bytes()}, ExternalImageId=f"{other}.{photo.stem}"
                )
    probe = files[INDEXED].read_bytes()
    by_rk = rk.search_faces_by_image(CollectionId="both", Image={"Bytes": probe}, MaxFaces=10)
    data = {"purpose": "system-test", "case_id": "RK-CASE", "max_results": "10"}
    by_v1 = v1.post("/v1/collections/both/search", files={"image": ("p.jpg", probe)}, data=data).json()
    assert [m["Face"]["ExternalImageId"] for m in by_rk["FaceMatches"]] == [
        m["external_image_id"] for m in by_v1["matches"]
    ]
    seq = int(by_rk["ResponseMetadata"]["HTTPHeaders"]["x-facegrid-audit-seq"])
    records = {r["seq"]: r for r in read_records(world["ctx"].store)}
    ours, theirs = records[seq], [r for r in records.values() if r["action"] == "search"][-1]
    assert ours["action"] == "search" and ours["client"].startswith("rekognition:")
    assert (ours["purpose"], ours["case_id"]) == (theirs["purpose"], theirs["case_id"]) == ("system-test", "RK-CASE")
    assert ours["results"] == theirs["results"]
    # FaceMatchThreshold stays a per-comparison similarity; what the search applied, under the collection's
    # per-search promise, comes back in headers and is the audited one.
    headers = by_rk["ResponseMetadata"]["HTTPHeaders"]
    assert float(headers["x-facegrid-threshold-applied"]) == ours["threshold_applied"] == by_v1["threshold"]["applied"]
    assert float(headers["x-facegrid-max-false-candidates-per-search"]) == ours["max_false_candidates_per_search"]
    assert int(headers["x-facegrid-faces-searched"]) == ours["faces_searched"] == by_v1["threshold"]["faces_searched"]
    assert float(headers["x-facegrid-expected-false-candidates"]) <= ours["max_false_candidates_per_search"]


def test_floor_and_roles(world: Any) -> None:
    rk = world["admin"]
    if "roles" not in rk.list_collections()["CollectionIds"]:
        rk.create_collection(CollectionId="roles")
    photo = next(iter(world["photos"].values()))[0].read_bytes()
    face = rk.index_faces(CollectionId="roles", Image={"Bytes": photo}, QualityFilter="NONE")["FaceRecords"][0]["Face"][
        "FaceId"
    ]
    code, message = _code(lambda: rk.search_faces(CollectionId="roles", FaceId=face, FaceMatchThreshold=50))
    assert code == "InvalidParameterException" and "floor: Similarity 80.0" in message
    assert (
        _code(lambda: world["searcher"].delete_faces(CollectionId="roles", FaceIds=[face]))[0]
        == "AccessDeniedException"
    )
    assert world["searcher"].search_faces(CollectionId="roles", FaceId=face)["SearchedFaceId"] == face
    denied = lambda: world["auditor"].search_faces_by_image(CollectionId="roles", Image={"Bytes": photo})  # noqa: E731
    assert _code(denied)[0] == "AccessDeniedException"


def test_refusals_at_the_parameter_checks_are_audited(world: Any) -> None:
    """A body nested 50,000 deep, and one of the wrong shape, signed as a client would: each a modeled 400 with its
    audit record's seq, none a 500."""
    rk = world["admin"]
    bodies = [b"[" * 50_000 + b"]" * 50_000, b'{"CollectionId": ["not", "a", "string"]}']
    for body in bodies:

        def replace(request: Any, body: bytes = body, **_: Any) -> None:
            request.data = body

        rk.meta.events.register_first("before-sign.rekognition.DescribeCollection", replace)
        try:
            with pytest.raises(ClientError) as raised:
                rk.describe_collection(CollectionId="errors")
        finally:
            rk.meta.events.unregister("before-sign.rekognition.DescribeCollection", replace)
        error = raised.value.response
        assert error["Error"]["Code"] == "InvalidParameterException", error
        seq = int(error["ResponseMetadata"]["HTTPHeaders"]["x-facegrid-audit-seq"])
        audited = next(r for r in read_records(world["ctx"].store) if r["seq"] == seq)
        assert audited["route"] == "rekognition:DescribeCollection" and audited["outcome"] == "refused"


def test_a_signed_request_is_answered_once(world: Any) -> None:
    """Captured and sent again, a signed request is refused; so is one signed more than 5 minutes before."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    from serving.rekognition import signing
    from serving.rekognition.signing import SignatureProblem

    credentials = world["admin"]._request_signer._credentials.get_frozen_credentials()
    url = world["url"] + "/"

    def signed() -> dict[str, str]:
        headers = {"X-Amz-Target": "RekognitionService.CreateCollection", "Content-Type": "application/x-amz-json-1.1"}
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(credentials, "rekognition", "us-east-1").add_auth(request)
        return dict(request.headers.items())

    now, body = datetime.now(UTC), b'{"CollectionId": "replayed"}'
    captured = signed()
    assert httpx.post(url, content=body, headers=captured).status_code == 200
    again = httpx.post(url, content=body, headers=captured)
    assert again.status_code == 400 and "replay" in again.json()["Message"]
    lower = {k.lower(): v for k, v in signed().items()}
    with pytest.raises(SignatureProblem, match="5 minutes"):  # the same request, arriving 6 minutes later
        signing.verify("POST", url, lower, body, world["ctx"].credentials.resolve, now=now + timedelta(minutes=6))
