"""facegrid bench races: real `facegrid serve` processes and the CLI on one store, clients issuing seeded random
interleavings of adds, overlapping erasures, rebuilds, reshards, people acts, readmissions and index jobs, and a
checker holding every answer against a model of the collection (Jepsen's way, on one machine)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cluster.access import KeyStore, Role
from cluster.audit import read_records
from cluster.audit_verify import verify
from cluster.settings import Settings
from cluster.storage import ObjectStore, open_store
from jobs.processes import serve_process, stop_process

COLLECTION = "race"
# Every acknowledged add is searchable on every server within this; no server serves an erased face past it.
BOUND_S = 2.0
SEARCH = {"purpose": "system-test", "case_id": "RACES", "max_results": "50"}
ACTS = ("add", "erase", "rebuild", "reshard", "readmit", "user", "index")
WEIGHTS = (40, 25, 8, 6, 8, 10, 2)
S3_KEYS = ("facegrid-races", "facegrid-races-secret-123")


@dataclass
class Photo:
    path: Path
    external_id: str
    faces: list[str] = field(default_factory=list)  # the ids its first add (or index job) answered
    # A photo of one face: a search with it finds that face. With several, the probe is its largest face only.
    single: bool = True


@dataclass
class Model:
    """What the collection must hold: the faces acknowledged and not erased since, and those erased."""

    present: set[str] = field(default_factory=set)
    erased: set[str] = field(default_factory=set)
    readmitted: set[str] = field(default_factory=set)
    owner: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    seed: int
    urls: list[str]
    token: str
    store: ObjectStore
    env: dict[str, str]
    photos: list[Photo]
    index_photos: list[Photo]
    workdir: Path
    processes: list[subprocess.Popen[bytes]]
    model: Model = field(default_factory=Model)
    acts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)  # one line per act and check: what the report ends with
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, server: int) -> httpx.Client:
        return httpx.Client(base_url=self.urls[server], headers={"X-API-Key": self.token}, timeout=300)

    def violated(self, what: str) -> None:
        self.note(f"VIOLATION {what}")
        with self.lock:
            self.violations.append(f"seed {self.seed}: {what}")

    def note(self, line: str) -> None:
        with self.lock:
            self.trace.append(f"{time.monotonic():.2f} {line}")


def run_races(
    ops: int,
    seed: int,
    images: Path,
    store_kind: str = "folder",
    servers: int = 2,
    model_dir: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """`ops` acts in rounds of one to four at once on `servers` servers; the violations found, with the seed."""
    began = time.monotonic()
    with _world(store_kind, servers, images, model_dir, progress) as run:
        run.seed = seed
        rng = random.Random(seed)
        with run.client(0) as admin:
            answer = admin.post("/v1/collections", json={"name": COLLECTION, "shards": 2})
            assert answer.status_code == 201, answer.text
        done = rounds = 0
        while done < ops and len(run.violations) < 20:
            acts = [_pick(rng, run) for _ in range(rng.choice((1, 2, 2, 3, 4)))]
            _round(run, rng, acts)
            done, rounds = done + len(acts), rounds + 1
            if rounds % 10 == 0:
                progress(f"{done} acts, {len(run.violations)} violations, {time.monotonic() - began:.0f} s")
        _restart_one(run, rng)
        _check_end(run)
        return {
            "seed": seed,
            "store": store_kind,
            "servers": servers,
            "acts": done,
            "rounds": rounds,
            "by_act": dict(run.acts),
            "faces_present": len(run.model.present),
            "faces_erased": len(run.model.erased),
            "violations": run.violations,
            "trace": _around_first_violation(run.trace),
            "seconds": round(time.monotonic() - began, 1),
        }


def _around_first_violation(trace: list[str]) -> list[str]:
    """The acts that led to the first violation found, and a few after it: where to look."""
    first = next((n for n, line in enumerate(trace) if " VIOLATION " in line), None)
    return [] if first is None else trace[max(0, first - 50) : first + 10]


def _pick(rng: random.Random, run: Run) -> str:
    act: str = rng.choices(ACTS, WEIGHTS)[0]
    if act == "index" and not run.index_photos:
        return "add"
    return act


def _round(run: Run, rng: random.Random, acts: list[str]) -> None:
    """Acts at once, then the checks. Erasures overlap each other on purpose; every other act takes faces (and
    photos) no other act of its round touches, so that the model knows each act's outcome."""
    erasable = sorted(run.model.present)
    erase_from = rng.sample(erasable, min(len(erasable), rng.randint(1, 4))) if erasable else []
    again = rng.sample(sorted(run.model.erased), min(1, len(run.model.erased)))  # erased before: a no-op
    busy = set(erase_from) | set(again)
    photos = list(run.photos)
    rng.shuffle(photos)
    plans: list[Callable[[], dict[str, Any]]] = []
    for act in acts:
        server = rng.randrange(len(run.urls))
        free = [p for p in photos if not set(p.faces) & busy]
        readmittable = sorted(run.model.erased - run.model.readmitted - busy)
        if act == "add" and free:
            photos.remove(free[0])
            busy |= set(free[0].faces)
            plans.append(_add(run, server, free[0], rng))
        elif act == "erase" and erase_from:
            plans.append(_erase(run, server, rng.sample(erase_from, rng.randint(1, len(erase_from))) + again))
        elif act in ("rebuild", "reshard"):
            plans.append(_rebuild(run, server, rng.randint(1, 3) if act == "reshard" else None))
        elif act == "readmit" and readmittable:
            chosen = rng.choice(readmittable)
            busy |= {f for p in run.photos if chosen in p.faces for f in p.faces} | {chosen}
            plans.append(_readmit(run, server, chosen))
        elif act == "user" and run.model.present - busy:
            faces = rng.sample(sorted(run.model.present - busy), min(2, len(run.model.present - busy)))
            busy |= set(faces)
            plans.append(_user(run, server, f"u{rng.randrange(6)}", faces))
        elif act == "index" and run.index_photos:
            plans.append(_index(run, run.index_photos.pop()))
    if not plans:
        plans.append(_rebuild(run, 0, None))
    results: list[dict[str, Any]] = [{} for _ in plans]

    def go(n: int) -> None:
        try:
            results[n] = plans[n]()
        except Exception as exc:  # a client-side failure is a finding too
            run.violated(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=go, args=(n,)) for n in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.note(f"round: {acts}")
    _apply(run, results)
    _check_manifest(run)
    _check_searches(run, results)


def _add(run: Run, server: int, photo: Photo, rng: random.Random) -> Callable[[], dict[str, Any]]:
    def act() -> dict[str, Any]:
        with run.client(server) as client:
            answer = client.post(
                f"/v1/collections/{COLLECTION}/faces",
                files={"image": (photo.path.name, photo.path.read_bytes())},
                data={"external_image_id": photo.external_id, "quality_filter": "NONE"},
            )
        run.acts["add"] += 1
        if answer.status_code != 200:
            run.violated(f"add {photo.external_id} on server {server}: {answer.status_code} {answer.text[:300]}")
            return {}
        body = answer.json()
        ids = [f["face_id"] for f in body["face_records"]]
        run.note(f"add {photo.external_id} on {server}: {ids} unindexed {body.get('unindexed_faces')}")
        refused = {f.get("face_id") for f in body.get("unindexed_faces", []) if f.get("reasons") == ["ERASED"]}
        return {"act": "add", "server": server, "photo": photo, "ids": ids, "erased": refused}

    return act


def _erase(run: Run, server: int, face_ids: list[str]) -> Callable[[], dict[str, Any]]:
    before = set(run.model.present)

    def act() -> dict[str, Any]:
        with run.client(server) as client:
            answer = client.request("DELETE", f"/v1/collections/{COLLECTION}/faces", json={"face_ids": face_ids})
        run.acts["erase"] += 1
        if answer.status_code != 200:
            run.violated(f"erase {face_ids} on server {server}: {answer.status_code} {answer.text[:300]}")
            return {}
        body = answer.json()
        run.note(f"erase {face_ids} on {server}: {body}")
        return {"act": "erase", "server": server, "asked": face_ids, "before": before, "body": body, "at": time.time()}

    return act


def _rebuild(run: Run, server: int, shards: int | None) -> Callable[[], dict[str, Any]]:
    def act() -> dict[str, Any]:
        with run.client(server) as client:
            answer = client.post(f"/v1/collections/{COLLECTION}/rebuild", json={"shards": shards})
        run.acts["rebuild" if shards is None else "reshard"] += 1
        run.note(f"rebuild shards={shards} on {server}: {answer.status_code}")
        # A rebuild that lost its race to another publish changed nothing and says so: a valid outcome.
        if answer.status_code not in (200, 409):
            run.violated(f"rebuild(shards={shards}) on server {server}: {answer.status_code} {answer.text[:300]}")
        return {"act": "rebuild"}

    return act


def _readmit(run: Run, server: int, face_id: str) -> Callable[[], dict[str, Any]]:
    def act() -> dict[str, Any]:
        with run.client(server) as client:
            answer = client.post(f"/v1/collections/{COLLECTION}/faces/readmit", json={"face_ids": [face_id]})
        run.acts["readmit"] += 1
        run.note(f"readmit {face_id} on {server}: {answer.status_code}")
        if answer.status_code != 200:
            run.violated(f"readmit {face_id} on server {server}: {answer.status_code} {answer.text[:300]}")
            return {}
        return {"act": "readmit", "face_id": face_id}

    return act


def _user(run: Run, server: int, user_id: str, faces: list[str]) -> Callable[[], dict[str, Any]]:
    def act() -> dict[str, Any]:
        with run.client(server) as client:
            created = client.post(f"/v1/collections/{COLLECTION}/users", json={"user_id": user_id})
            if created.status_code not in (201, 409):
                run.violated(f"create user {user_id}: {created.status_code} {created.text[:300]}")
            run.acts["user"] += 1
            if not faces:
                return {}
            answer = client.post(f"/v1/collections/{COLLECTION}/users/{user_id}/faces", json={"face_ids": faces})
            run.acts["associate"] += 1
        if answer.status_code != 200:
            run.violated(f"associate {faces} to {user_id}: {answer.status_code} {answer.text[:300]}")
            return {}
        return {"act": "user", "user": user_id, "changed": answer.json()["changed_faces"]}

    return act


def _index(run: Run, photo: Photo) -> Callable[[], dict[str, Any]]:
    """An index job through the CLI (its own process) over a folder holding this one photo."""

    def act() -> dict[str, Any]:
        source = run.workdir / "sources" / photo.external_id
        source.mkdir(parents=True)
        shutil.copy(photo.path, source / photo.path.name)
        done = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "index", COLLECTION, str(source), "--quality-filter", "NONE"],
            env=run.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        run.acts["index"] += 1
        if done.returncode != 0:
            run.violated(f"index job over {source}: exit {done.returncode}: {done.stderr[-600:]}")
            return {}
        with run.client(0) as client:
            page = client.get(f"/v1/collections/{COLLECTION}/faces", params={"limit": 1000}).json()["faces"]
        ids = [f["face_id"] for f in page if f["external_image_id"].endswith(photo.path.name)]
        return {"act": "add", "server": None, "photo": photo, "ids": ids, "erased": set()}

    return act


def _apply(run: Run, results: list[dict[str, Any]]) -> None:
    """Fold a round's answers into the model, checking each erasure's answer against what was there."""
    model = run.model
    erased_by: Counter[str] = Counter()
    for result in results:
        if result.get("act") == "add":
            photo, ids = result["photo"], result["ids"]
            for face_id in ids:
                if face_id in model.erased and face_id not in model.readmitted:
                    run.violated(f"add of {photo.external_id} brought back erased face {face_id}")
            if not photo.faces:
                photo.faces, photo.single = ids, len(ids) == 1
            model.present |= set(ids)
            model.erased -= set(ids)
            model.readmitted -= set(ids)
        elif result.get("act") == "erase":
            body, asked = result["body"], set(result["asked"])
            deleted, already = set(body["deleted_faces"]), set(body.get("already_erased", []))
            missed = (asked & result["before"]) - deleted - already
            if missed:
                run.violated(
                    f"erasure of {sorted(asked)} on server {result['server']} answered without {sorted(missed)}"
                )
            erased_by.update(deleted)
            model.present -= asked
            model.erased |= asked & (result["before"] | model.erased)
        elif result.get("act") == "readmit":
            model.readmitted.add(result["face_id"])
        elif result.get("act") == "user":
            for face_id in result["changed"]:
                model.owner[face_id] = result["user"]
    for face_id, count in erased_by.items():
        if count > 1:
            run.violated(f"face {face_id} named as erased by {count} erasures at once")
    for face_id in model.erased:
        model.owner.pop(face_id, None)


def _check_manifest(run: Run) -> None:
    """The published manifest names only complete snapshots."""
    manifest = json.loads(run.store.get(f"collections/{COLLECTION}/manifest.json"))
    for shard, folder in manifest["shards"].items():
        names = {i.key.rsplit("/", 1)[1] for i in run.store.list(folder + "/")}
        if "index.faiss" not in names or "records.arrow" not in names:
            run.violated(f"manifest version {manifest['version']} names shard {shard} at {folder}: holds {names}")


def _found(run: Run, server: int, photo: Photo) -> set[str]:
    with run.client(server) as client:
        answer = client.post(
            f"/v1/collections/{COLLECTION}/search",
            files={"image": (photo.path.name, photo.path.read_bytes())},
            data=SEARCH,
        )
    run.acts["search"] += 1
    if answer.status_code != 200:
        run.violated(f"search on server {server}: {answer.status_code} {answer.text[:300]}")
        return set()
    return {m["face_id"] for m in answer.json()["matches"]}


def _check_searches(run: Run, results: list[dict[str, Any]]) -> None:
    """Every server finds each photo touched this round as the model says within BOUND_S; the server that
    answered an erasure serves none of the erased faces from its answer on."""
    touched = [r["photo"] for r in results if r.get("act") == "add"]
    erased = {f for r in results if r.get("act") == "erase" for f in r["asked"]}
    touched += [p for p in run.photos + run.index_photos if set(p.faces) & erased]
    for result in results:
        if result.get("act") == "erase":
            named = set(result["body"]["deleted_faces"]) | set(result["body"]["already_erased"])
            for photo in [p for p in touched if p.single and set(p.faces) & named]:
                leaked = _found(run, result["server"], photo) & named
                if leaked:
                    run.violated(f"server {result['server']} served erased {sorted(leaked)} after its erasure answer")
    for photo in {p.external_id: p for p in touched if p.single}.values():
        for server in range(len(run.urls)):
            _settles(run, server, photo)


def _settles(run: Run, server: int, photo: Photo) -> None:
    want = set(photo.faces) & run.model.present
    gone = set(photo.faces) & run.model.erased
    began = time.monotonic()
    while True:
        found = _found(run, server, photo)
        if want <= found and not gone & found:
            return
        if time.monotonic() - began > BOUND_S:
            run.violated(
                f"server {server}, photo {photo.external_id}: wanted {sorted(want - found)} missing, erased "
                f"{sorted(gone & found)} served, {BOUND_S} s on"
            )
            return
        time.sleep(0.1)


def _restart_one(run: Run, rng: random.Random) -> None:
    """Every server, a restarted one too, answers searches as the model says."""
    server = rng.randrange(len(run.urls))
    stop_process(run.processes[server])
    port = int(run.urls[server].rsplit(":", 1)[1])
    run.processes[server], _ = serve_process(run.env, run.workdir / f"server-{server}.log", port)
    for photo in [p for p in run.photos + run.index_photos if p.faces and p.single]:
        _settles(run, server, photo)


def _check_end(run: Run) -> None:
    """The audit chain verifies and holds one record per act; no user keeps an erased face."""
    checked = verify(run.store)
    if not checked["ok"]:
        run.violated(f"audit chain: {checked['first_bad_record']}")
    logged = Counter(r["action"] for r in read_records(run.store) if r.get("collection") == COLLECTION)
    expected = {
        "index-faces": run.acts["add"],
        "rebuild-collection": run.acts["rebuild"] + run.acts["reshard"],
        "index": run.acts["index"],
        "delete-faces": run.acts["erase"],
        "search": run.acts["search"],
        "readmit-faces": run.acts["readmit"],
        "create-user": run.acts["user"],
        "associate-faces": run.acts["associate"],
    }
    for action, count in expected.items():
        if logged[action] != count:
            run.violated(f"audit holds {logged[action]} {action} records for {count} acts")
    with run.client(0) as client:
        users = client.get(f"/v1/collections/{COLLECTION}/users", params={"limit": 100}).json()["users"]
    for user in users:
        kept = set(user["face_ids"]) & run.model.erased
        if kept:
            run.violated(f"user {user['user_id']} still holds erased faces {sorted(kept)}")


@contextmanager
def _world(
    store_kind: str, servers: int, images: Path, model_dir: Path | None, progress: Callable[[str], None]
) -> Iterator[Run]:
    """Servers on a fresh store: a folder (each server with its own embedded Ray, as separate machines would
    be) or a bucket of a local S3 server (the servers on one Ray cluster, which runs the S3 audit writer)."""
    from jobs import s3local

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="facegrid-races-")))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        if model_dir is not None:
            env["FACEGRID_MODEL_DIR"] = str(model_dir)
        if store_kind == "s3":
            (workdir / "s3" / "races").mkdir(parents=True)
            address = stack.enter_context(s3local.s3_server(workdir / "s3", *S3_KEYS))
            env |= {
                "FACEGRID_STORE": "s3://races",
                "FACEGRID_S3_ENDPOINT": f"http://{address}",
                "FACEGRID_S3_ACCESS_KEY": S3_KEYS[0],
                "FACEGRID_S3_SECRET_KEY": S3_KEYS[1],
                "AWS_EC2_METADATA_DISABLED": "true",
            }
            env["RAY_ADDRESS"] = stack.enter_context(_ray_head(workdir))
        else:
            env["FACEGRID_STORE"] = str(workdir / "store")
        settings = Settings(
            store=env["FACEGRID_STORE"],
            s3_endpoint=env.get("FACEGRID_S3_ENDPOINT"),
            s3_access_key=env.get("FACEGRID_S3_ACCESS_KEY"),
            s3_secret_key=env.get("FACEGRID_S3_SECRET_KEY"),
        )
        store = open_store(settings.store, settings)
        token = KeyStore(store).create(Role.ADMIN, label="races")[1]
        processes: list[subprocess.Popen[bytes]] = []
        stack.callback(_stop_all, processes)
        urls = []
        for n in range(servers):
            process, url = serve_process(env, workdir / f"server-{n}.log")
            processes.append(process)
            urls.append(url)
            progress(f"server {n} at {url}")
        photos = _photos(images, 24)
        yield Run(0, urls, token, store, env, photos[:20], photos[20:], workdir, processes)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        stop_process(process)


@contextmanager
def _ray_head(workdir: Path) -> Iterator[str]:
    """A local Ray head on 127.0.0.1 that the servers join; stopped with this run (never `ray stop`)."""
    from cluster.raycluster_env import prepare_ray_environment

    prepare_ray_environment(None)
    process = subprocess.Popen(
        [sys.executable, "-c", _HEAD, str(workdir / "ray-address")], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "ray-address").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head for the race run did not start")
            time.sleep(0.2)
        yield (workdir / "ray-address").read_text()
    finally:
        stop_process(process)


# A process that holds a local Ray cluster while it lives and writes its address for the servers.
_HEAD = """
import sys, time, pathlib, ray
from cluster.raycluster import NAMESPACE
from cluster.raycluster_env import prepare_ray_environment
prepare_ray_environment(None)
context = ray.init(address="local", namespace=NAMESPACE, include_dashboard=False)
pathlib.Path(sys.argv[1] + ".tmp").write_text(context.address_info["gcs_address"])
pathlib.Path(sys.argv[1] + ".tmp").rename(sys.argv[1])
while True:
    time.sleep(3600)
"""


def _photos(images: Path, count: int) -> list[Photo]:
    """One photo each of the first people (sorted): distinct identities, so a search finds its own face."""
    found = []
    for person in sorted(p for p in images.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if photos:
            found.append(Photo(photos[0], f"{person.name}/{photos[0].name}"))
        if len(found) == count:
            return found
    raise RuntimeError(f"{images} holds photos of fewer than {count} people")
