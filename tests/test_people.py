"""People and comparisons through HTTP, with real models, a local Ray and lfw-dev photos: search by face id,
users from creation to deletion, and compare against every face of a two-person photo."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from cluster.audit.log import read_records
from cluster.keys.access import Role, local_operator
from cluster.settings import Settings
from serving.threaded import serve_in_thread
from serving.usecases import collections
from serving.usecases.context import Context
from tests.factories import index

pytestmark = pytest.mark.slow

COLLECTION = "people"
SEARCH = {"purpose": "system-test", "case_id": "PEOPLE-1"}
PEOPLE, INDEXED = 6, 4


@pytest.fixture(scope="module")
def world(
    lfw_images: Path, model_dir: Path, local_ray: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    chosen = [p for p in sorted(lfw_images.iterdir()) if len(list(p.glob("*.jpg"))) >= INDEXED + 2][:PEOPLE]
    source = tmp_path_factory.mktemp("people-source")
    held = {}
    for person in chosen:
        photos = sorted(person.glob("*.jpg"))
        (source / person.name).mkdir()
        for photo in photos[:INDEXED]:
            shutil.copy(photo, source / person.name / photo.name)
        held[person.name] = photos[INDEXED:]  # never indexed
    settings = Settings(model_dir=model_dir, store=str(tmp_path_factory.mktemp("people-store")))
    ctx = Context(settings)
    asyncio.run(collections.create(ctx, local_operator(), COLLECTION, 2, 1e-5))
    index(ctx, COLLECTION, str(source), max_faces=1)
    token = ctx.keys.create(Role.ADMIN, label="people")[1]
    with serve_in_thread(ctx) as url:
        client = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"})
        faces = client.get(f"/v1/collections/{COLLECTION}/faces", params={"limit": 1000}).json()["faces"]
        by_person: dict[str, list[str]] = {}
        for face in sorted(faces, key=lambda f: f["external_image_id"]):
            by_person.setdefault(face["external_image_id"].split("/")[0], []).append(face["face_id"])
        yield {"client": client, "ctx": ctx, "settings": settings, "faces": by_person, "held": held}
    ctx.close()


def _records(world: Any, action: str) -> list[dict[str, Any]]:
    return [r for r in read_records(world["ctx"].store) if r["action"] == action]


def test_search_by_face_id_leaves_the_face_out(world: Any) -> None:
    client, faces = world["client"], world["faces"]
    ids = next(iter(faces.values()))
    body = client.post(f"/v1/collections/{COLLECTION}/faces/{ids[0]}/search", json=SEARCH).json()
    found = [m["face_id"] for m in body["matches"]]
    assert body["searched_face_id"] == ids[0] and ids[0] not in found
    assert found and set(found) <= set(ids), body  # the same person's other photos, nobody else at the floor
    assert all(m["similarity"] >= body["threshold"]["floor"] for m in body["matches"])
    record = _records(world, "search-face")[-1]
    assert record["outcome"] == "ok" and record["face_id"] == ids[0] and record["case_id"] == SEARCH["case_id"]
    missing = client.post(f"/v1/collections/{COLLECTION}/faces/{'0' * 16}/search", json=SEARCH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "FACE_NOT_FOUND"
    refused = client.post(f"/v1/collections/{COLLECTION}/faces/{ids[0]}/search", json={})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "PURPOSE_REQUIRED"
    assert _records(world, "search-face")[-1]["outcome"] == "refused"


def test_users_from_creation_to_deletion(world: Any) -> None:
    client, faces, held = world["client"], world["faces"], world["held"]
    base = f"/v1/collections/{COLLECTION}/users"
    (a, a_ids), (_, b_ids) = list(faces.items())[1:3]
    assert client.post(base, json={"user_id": "alice"}).status_code == 201
    assert client.post(base, json={"user_id": "alice"}).json()["error"]["code"] == "USER_EXISTS"
    assert client.post(base, json={"user_id": "no spaces"}).json()["error"]["code"] == "INVALID_REQUEST"
    for user in ("alice-2", "bob"):
        client.post(base, json={"user_id": user})
    added = client.post(f"{base}/alice/faces", json={"face_ids": [*a_ids[:3], "f" * 16]}).json()
    assert added["changed_faces"] == a_ids[:3] and added["user_faces"] == 3
    assert added["unsuccessful"] == [{"face_id": "f" * 16, "reason": "FACE_NOT_FOUND", "user_id": None}]
    client.post(f"{base}/alice-2/faces", json={"face_ids": [a_ids[3]]})
    client.post(f"{base}/bob/faces", json={"face_ids": b_ids})
    taken = client.post(f"{base}/bob/faces", json={"face_ids": [a_ids[0]]}).json()
    assert taken["unsuccessful"][0] == {
        "face_id": a_ids[0],
        "reason": "ASSOCIATED_TO_A_DIFFERENT_USER",
        "user_id": "alice",
    }
    assert client.get(f"/v1/collections/{COLLECTION}").json()["user_count"] == 3
    # Every server sees the users: another process's context on the same store reads the same state.
    other = Context(world["settings"])
    assert set(other.people(COLLECTION).state().users) == {"alice", "alice-2", "bob"}
    other.close()

    def search(**form: Any) -> dict[str, Any]:
        files = {"image": ("p.jpg", form.pop("image"))} if "image" in form else None
        response = client.post(f"{base}/search", data={**SEARCH, **form}, files=files)
        assert response.status_code == 200, response.text
        return dict(response.json())

    by_face = search(face_id=a_ids[0])  # alice matches through her other faces, never through this one
    assert by_face["user_matches"][0]["user_id"] in {"alice", "alice-2"}
    assert all(a_ids[0] != m["face_id"] for u in by_face["user_matches"] for m in u["matched_faces"])
    by_user = search(user_id="alice")  # the same person filed twice shows up; alice herself does not
    assert [u["user_id"] for u in by_user["user_matches"]] == ["alice-2"]
    by_image = search(image=held[a][0].read_bytes())
    top = by_image["user_matches"][0]
    assert top["user_id"] in {"alice", "alice-2"} and by_image["searched_face"]["bbox"]
    assert top["matched_faces"][0]["similarity"] == top["similarity"] and top["user_faces"] >= 1
    assert top["user_false_match_rate_at_most"] >= top["estimated_false_match_rate"]
    assert "bob" not in {u["user_id"] for u in by_image["user_matches"]}
    assert [r["outcome"] for r in _records(world, "search-users")] == ["ok", "ok", "ok"]
    neither = client.post(f"{base}/search", data=SEARCH)
    assert neither.status_code == 400 and "exactly one" in neither.json()["error"]["message"]

    gone = client.request("DELETE", f"{base}/alice-2/faces", json={"face_ids": [a_ids[3], a_ids[0]]}).json()
    assert gone["changed_faces"] == [a_ids[3]] and gone["user_faces"] == 0
    assert gone["unsuccessful"][0]["reason"] == "NOT_ASSOCIATED_TO_THIS_USER"
    # Erasing a face removes its association; deleting a user can erase its faces.
    client.request("DELETE", f"/v1/collections/{COLLECTION}/faces", json={"face_ids": [a_ids[0]]})
    listed = {u["user_id"]: u for u in client.get(base).json()["users"]}
    assert listed["alice"]["face_ids"] == a_ids[1:3]
    deleted = client.delete(f"{base}/bob", params={"erase_faces": "true"}).json()
    assert sorted(deleted["erased_faces"]) == sorted(b_ids)
    remaining = {f["face_id"] for f in client.get(f"/v1/collections/{COLLECTION}/faces").json()["faces"]}
    assert not remaining & set(b_ids)
    assert "bob" not in {u["user_id"] for u in client.get(base).json()["users"]}
    assert client.delete(f"{base}/bob").json()["error"]["code"] == "USER_NOT_FOUND"
    records = read_records(world["ctx"].store)
    actions = [r["action"] for r in records]
    for action in ("create-user", "associate-faces", "disassociate-faces", "delete-user", "delete-faces"):
        assert action in actions
    head = client.get("/v1/transparency").json()["head"]  # public: the latest checkpoint of the chain
    assert head["seq"] >= records[-1]["seq"] and len(head["hash"]) == 64


def _side_by_side(large: Path, small: Path) -> bytes:
    """A stranger shown large beside the person shown at half the size."""
    big = Image.open(large).convert("RGB").resize((500, 500))
    little = Image.open(small).convert("RGB").resize((250, 250))
    canvas = Image.new("RGB", (800, 500), (128, 128, 128))
    canvas.paste(big, (0, 0))
    canvas.paste(little, (540, 120))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=92)
    return out.getvalue()


def test_compare_finds_the_smaller_face(world: Any, lfw_images: Path) -> None:
    held = list(world["held"].items())
    (_, photos), (_, theirs) = held[3], held[4]
    target = _side_by_side(theirs[0], photos[0])
    files = {"source": ("a.jpg", photos[1].read_bytes()), "target": ("b.jpg", target)}
    body = world["client"].post("/v1/compare", files=files, data=SEARCH).json()
    assert len(body["face_matches"]) == 1 and len(body["unmatched_faces"]) >= 1, body
    matched, stranger_face = body["face_matches"][0], body["unmatched_faces"][0]

    def area(face: dict[str, Any]) -> float:
        x1, y1, x2, y2 = face["face"]["bbox"]
        return float((x2 - x1) * (y2 - y1))

    assert matched["matched"] and matched["face"]["bbox"][0] > 500  # the small face on the right
    assert area(matched) < area(stranger_face) and not stranger_face["matched"]
    assert matched["similarity"] >= body["threshold"]["applied"] > stranger_face["similarity"]
    assert body["similarity"] == matched["similarity"] and body["source_face"]["bbox"]
    assert np.isclose(body["threshold"]["max_false_match_rate"], 1e-5)
    results = [r for r in read_records(world["ctx"].store) if r["action"] == "compare"][-1]["results"]
    assert [r["matched"] for r in results][:2] == [True, False]
