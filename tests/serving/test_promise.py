"""The per-search promise through the API: every answer carries it with the threshold it implied and the strangers
expected; a promise the calibration cannot keep at the collection's size is refused clearly, audited, and counted in
the public report; the threshold tightens from a thousand faces to a million; only an admin moves a promise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.audit.log import read_records
from cluster.collections.manifest import DEFAULT_MAX_FALSE_CANDIDATES, Manifest
from cluster.keys.access import Role
from cluster.models.registry import DEFAULT_EMBEDDER
from cluster.settings import Settings
from serving.threaded import serve_in_thread
from serving.usecases.context import Context
from tests.conftest import lfw_photos

SEARCH = {"purpose": "system-test", "case_id": "PROMISE-1"}


@pytest.fixture(scope="module")
def world(
    model_dir: Path, lfw_images: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None
) -> Iterator[Any]:
    ctx = Context(Settings(model_dir=model_dir, store=str(tmp_path_factory.mktemp("promise-store"))))
    admin, searcher = (ctx.keys.create(role)[1] for role in (Role.ADMIN, Role.SEARCHER))
    with serve_in_thread(ctx) as url:
        clients = {
            name: httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=120)
            for name, token in (("admin", admin), ("searcher", searcher))
        }
        yield ctx, clients, lfw_photos(lfw_images, people=3, per_person=2)
    ctx.close()


def test_an_answer_carries_the_promise_and_a_size_past_its_reach_is_refused(world: Any) -> None:
    ctx, clients, photos = world
    admin, searcher = clients["admin"], clients["searcher"]
    assert admin.post("/v1/collections", json={"name": "kept"}).status_code == 201
    faces = 0
    for photo in photos[::2]:
        added = admin.post("/v1/collections/kept/faces", files={"image": (photo.name, photo.read_bytes())})
        assert added.status_code == 200, added.text
        faces += len(added.json()["face_records"])
    probe = {"image": ("probe.jpg", photos[1].read_bytes())}
    answer = searcher.post("/v1/collections/kept/search", files=probe, data=SEARCH)
    assert answer.status_code == 200, answer.text
    threshold = answer.json()["threshold"]
    assert threshold["max_false_candidates_per_search"] == DEFAULT_MAX_FALSE_CANDIDATES
    assert threshold["faces_searched"] == faces >= 3  # live faces included
    assert threshold["applied"] == max(threshold["floor"], threshold["promise_similarity"])
    assert 0 < threshold["expected_false_candidates"] <= DEFAULT_MAX_FALSE_CANDIDATES
    record = read_records(ctx.store)[-1]
    assert record["action"] == "search" and record["faces_searched"] == faces
    assert record["max_false_candidates_per_search"] == DEFAULT_MAX_FALSE_CANDIDATES
    assert record["threshold_applied"] == threshold["applied"]

    assert (
        searcher.put("/v1/collections/kept/promise", json={"max_false_candidates_per_search": 1e-9}).status_code == 403
    )
    changed = admin.put("/v1/collections/kept/promise", json={"max_false_candidates_per_search": 1e-9})
    assert changed.status_code == 200, changed.text
    change = changed.json()
    assert change["old_max_false_candidates_per_search"] == DEFAULT_MAX_FALSE_CANDIDATES
    assert change["similarity_now"] is None and change["largest_collection"] == 0  # set, but no size can keep it
    refused = searcher.post("/v1/collections/kept/search", files=probe, data=SEARCH)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "PROMISE_NOT_SUPPORTED" and "collections promise" in error["message"]
    assert error["faces_searched"] == faces and error["largest_collection"] == 0
    record = read_records(ctx.store)[-1]
    assert (record["outcome"], record["code"], record["max_false_candidates_per_search"]) == (
        "refused",
        "PROMISE_NOT_SUPPORTED",
        1e-9,
    )
    promise_records = [r for r in read_records(ctx.store) if r["action"] == "promise-collection"]
    assert [r["outcome"] for r in promise_records] == ["refused", "ok"]  # the searcher's try is on the record too

    report = httpx.get(str(admin.base_url.join("/v1/transparency"))).json()  # public: no key
    assert report["promises"]["kept"] == {
        "max_false_candidates_per_search": 1e-9,
        "searches_under_promise": 1,
        "refused_beyond_its_reach": 1,
    }
    zero = admin.put("/v1/collections/kept/promise", json={"max_false_candidates_per_search": 0})
    assert zero.status_code == 400 and zero.json()["error"]["code"] == "INVALID_REQUEST"


def test_the_threshold_tightens_from_a_thousand_faces_to_a_million(world: Any) -> None:
    ctx = world[0]
    manifest = Manifest(
        name="sized",
        **ctx.registry.pin(DEFAULT_EMBEDDER),
        calibration=ctx.models.calibration(DEFAULT_EMBEDDER),
        max_false_candidates_per_search=DEFAULT_MAX_FALSE_CANDIDATES,
    )
    small, large = (ctx.models.applied_threshold(manifest, None, faces) for faces in (1_000, 1_000_000))
    assert large["applied"] > small["applied"] >= small["floor"]
    for limits, faces in ((small, 1_000), (large, 1_000_000)):
        assert limits["faces_searched"] == faces and limits["expected_false_candidates"] <= DEFAULT_MAX_FALSE_CANDIDATES
    legacy = manifest.model_copy(update={"max_false_candidates_per_search": None})  # made before promises
    assert ctx.models.applied_threshold(legacy, None, None)["applied"] == small["floor"]
