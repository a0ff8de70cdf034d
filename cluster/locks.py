"""Named locks that every process sharing a store respects: publishes commit, and erasures run, under their
collection's lock, so that a check of the manifest and the write after it are one step.

A local folder takes an flock on a file beside the data (every process on the machine sees it). An object store
has no such primitive that every S3 server offers (conditional writes are not universal: the S3 server the tests
run ignores If-None-Match), so the cluster holds the locks, as it holds the S3 audit writer: one named Ray actor
grants leases that their holder renews while it works, and that lapse if it dies."""

from __future__ import annotations

import asyncio
import fcntl
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from cluster.storage import LocalStore, ObjectStore

# A lease outlives a holder that died by this long at most; a live holder renews it every third of it.
LEASE_S = 30.0
_held = threading.local()  # names this thread holds: a nested take of the same lock is a no-op


@contextmanager
def exclusive(store: ObjectStore, name: str) -> Iterator[None]:
    """Hold the lock `name` of this store for the block (re-entered freely by the thread that holds it)."""
    names: set[str] = _held.__dict__.setdefault("names", set())
    key = f"{store.uri}|{name}"
    if key in names:
        yield
        return
    names.add(key)
    try:
        with _file_lock(store, name) if isinstance(store, LocalStore) else _leased(key):
            yield
    finally:
        names.discard(key)


def collection_lock(store: ObjectStore, collection: str) -> AbstractContextManager[None]:
    """A collection's lock: publishes commit, erasures run, and record files are rewritten under it."""
    return exclusive(store, f"collection-{collection}")


@contextmanager
def _file_lock(store: LocalStore, name: str) -> Iterator[None]:
    path = store.root / ".locks" / f"{name.replace('/', '~')}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:  # an open of its own: threads of one process exclude each other too
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _leased(key: str) -> Iterator[None]:
    import ray

    table = lock_table()
    holder = secrets.token_hex(8)
    ray.get(table.acquire.remote(key, holder, LEASE_S))
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 3):
            ray.get(table.renew.remote(key, holder, LEASE_S))

    renewer = threading.Thread(target=renew, daemon=True, name=f"lease {key}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        ray.get(table.release.remote(key, holder))


def lock_table() -> Any:
    import ray

    from cluster.raycluster import NAMESPACE, ensure_ray

    ensure_ray()
    # Detached: a named actor otherwise shares the fate of the process that first asked for it (a CLI index job,
    # a publish task's worker), and every other holder of a handle met ActorDiedError once that process ended.
    remote = ray.remote(LockTable).options(
        name="locks", namespace=NAMESPACE, get_if_exists=True, num_cpus=0, max_restarts=-1, lifetime="detached"
    )
    return remote.remote()


class LockTable:
    """Ray actor: leases on names, granted one holder at a time, in the order asked as far as asyncio wakes."""

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str, float]] = {}
        self.changed = asyncio.Condition()

    async def acquire(self, key: str, holder: str, ttl: float) -> None:
        async with self.changed:
            while True:
                lease = self.leases.get(key)
                left = lease[1] - time.monotonic() if lease else 0.0
                if lease is None or left <= 0 or lease[0] == holder:
                    self.leases[key] = (holder, time.monotonic() + ttl)
                    return
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=left)
                except TimeoutError:
                    continue  # the holder's lease lapsed: it died, or stopped renewing

    async def renew(self, key: str, holder: str, ttl: float) -> bool:
        lease = self.leases.get(key)
        if lease is None or lease[0] != holder:
            return False
        self.leases[key] = (holder, time.monotonic() + ttl)
        return True

    async def release(self, key: str, holder: str) -> None:
        async with self.changed:
            if self.leases.get(key, ("",))[0] == holder:
                del self.leases[key]
            self.changed.notify_all()
