"""A damaged audit log through the API: audited requests fail closed with 503 AUDIT_UNAVAILABLE, auditors still get
the verifier's answer (GET /v1/audit/verify), the console says tampered, and an admin's repair restores service
and is the next record of the chain."""

from __future__ import annotations

from pathlib import Path

import httpx

from cluster.audit.log import HEAD, read_records
from cluster.keys.access import Role
from cluster.settings import Settings
from serving.threaded import serve_in_thread
from serving.usecases.context import Context


def test_damaged_head_fails_closed_until_an_audited_repair(tmp_path: Path) -> None:
    ctx = Context(Settings(store=str(tmp_path / "store")))
    tokens = {role: ctx.keys.create(role)[1] for role in (Role.ADMIN, Role.AUDITOR)}
    with serve_in_thread(ctx) as url:
        admin = httpx.Client(base_url=url, headers={"X-API-Key": tokens[Role.ADMIN]}, timeout=60)
        auditor = httpx.Client(base_url=url, headers={"X-API-Key": tokens[Role.AUDITOR]}, timeout=60)
        for n in range(3):
            assert admin.post("/v1/collections", json={"name": f"c{n}"}).status_code == 201
        assert auditor.get("/v1/audit/verify").json() == {
            "ok": True,
            "records": 3,
            "head": read_records(ctx.store)[-1]["hash"],
            "records_verified": None,
            "first_bad_record": None,
        }
        (tmp_path / "store" / HEAD).write_bytes(b"[]")  # damaged: appends cannot know where the chain ends

        refused = admin.post("/v1/collections", json={"name": "c9"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "AUDIT_UNAVAILABLE"
        assert "audit repair" in refused.json()["error"]["message"]
        assert "c9" not in ctx.collections.names()  # nothing happened unrecorded
        assert admin.get("/v1/collections/c0").status_code == 503  # reads are audited too
        assert auditor.get("/v1/audit").status_code == 503  # a read of the log is audited too
        checked = auditor.get("/v1/audit/verify").json()
        assert not checked["ok"] and checked["first_bad_record"]["segment"] == HEAD
        assert checked["records_verified"] == 3

        console = httpx.Client(base_url=url, timeout=60)
        signin = console.get("/ui/signin").text.split('name="csrf" value="')[1].split('"')[0]
        console.post("/ui/signin", data={"token": tokens[Role.AUDITOR], "csrf": signin})
        page = console.get("/ui/audit").text
        assert "TAMPERED" in page and "HEAD.json" in page and "AUDIT_UNAVAILABLE" in page

        assert auditor.post("/v1/audit/repair").status_code == 503  # not an admin: refused, and cannot be recorded
        repaired = admin.post("/v1/audit/repair")
        assert repaired.status_code == 200, repaired.text
        body = repaired.json()
        assert body["repaired"] and body["anchored_seq"] == 3 and body["moved"] == [HEAD]
        assert (tmp_path / "store" / body["moved_to"] / HEAD).read_bytes() == b"[]"  # kept for inspection
        assert admin.post("/v1/collections", json={"name": "c9"}).status_code == 201
        records = read_records(ctx.store)
        assert [r["action"] for r in records[3:]] == ["audit-repair", "create-collection"]
        assert records[3]["role"] == "admin" and records[3]["outcome"] == "ok" and records[3]["anchored_seq"] == 3
        assert auditor.get("/v1/audit/verify").json()["ok"]
        assert "verified" in console.get("/ui/audit").text
    ctx.close()


def test_reads_of_face_records_are_audited(tmp_path: Path) -> None:
    ctx = Context(Settings(store=str(tmp_path / "store")))
    admin, auditor = ctx.keys.create(Role.ADMIN)[1], ctx.keys.create(Role.AUDITOR)
    with serve_in_thread(ctx) as url:
        client = httpx.Client(base_url=url, headers={"X-API-Key": admin}, timeout=60)
        assert client.post("/v1/collections", json={"name": "reads"}).status_code == 201
        assert client.get("/v1/collections/reads/faces", params={"limit": 5}).json()["total"] == 0
        assert client.get("/v1/collections/reads/users").status_code == 200
        assert client.get("/v1/collections/reads").status_code == 200
        denied = httpx.get(f"{url}/v1/collections/reads/faces", headers={"X-API-Key": auditor[1]})
        assert denied.status_code == 403
    reads = [r for r in read_records(ctx.store) if r["action"] in ("list-faces", "list-users", "describe-collection")]
    assert [(r["action"], r["outcome"]) for r in reads] == [
        ("list-faces", "ok"),
        ("list-users", "ok"),
        ("describe-collection", "ok"),
        ("list-faces", "refused"),
    ]
    assert reads[0]["collection"] == "reads" and (reads[0]["faces"], reads[0]["total"], reads[0]["limit"]) == (0, 0, 5)
    assert reads[3]["key_id"] == auditor[0].key_id
    ctx.close()
