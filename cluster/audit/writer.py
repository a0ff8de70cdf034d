"""The cluster's one audit writer: a detached Ray actor over the log (on a folder store, each process appends
itself under the folder's lock), and a server's client that sends it appends in groups."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import ray

from cluster.audit.groupcommit import GroupCommit
from cluster.audit.log import AuditLog
from cluster.audit.repair import repair
from cluster.raycluster import NAMESPACE, ensure_ray
from cluster.settings import Settings
from cluster.storage import LocalStore, ObjectStore, open_store

# Records one group commit of the audit writer holds at most (a segment write stays small).
MAX_GROUP = 64


def audit_actor(settings: Settings) -> Any:
    """The cluster's single audit writer, so that every search lands in one hash chain.

    No task retries: an append whose answer was lost could be written twice; the caller fails closed instead.
    """
    ensure_ray()
    # A handle is good only in the Ray session it came from: a process that joins another cluster (or a new local
    # one) asks again, rather than sending appends to an actor of a cluster that is gone. The job id alone does not
    # tell sessions apart (every new local Ray numbers its first driver 01000000); the node id does.
    context, name = ray.get_runtime_context(), audit_actor_name(settings)
    session = (context.get_node_id(), context.get_job_id(), name)
    if _handles.get("session") != session:
        _handles.pop("audit", None)
        _handles["session"] = session
    if "audit" not in _handles:
        # Detached, as the lock table is (cluster/locks.py): not ended with the process that first asked for it.
        remote = ray.remote(AuditWriter).options(
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=0,
            lifetime="detached",
        )
        _handles["audit"] = remote.remote(settings)
    return _handles["audit"]


def audit_actor_name(settings: Settings) -> str:
    """One writer per store on a cluster: a server of another store must never append to this store's chain."""
    where = f"{settings.s3_endpoint or ''}|{settings.store}"
    return "audit-" + hashlib.sha256(where.encode()).hexdigest()[:16]


def append_audit(settings: Settings, store: ObjectStore, record: dict[str, Any]) -> dict[str, Any]:
    """Append to the chain: in-process on a local folder (its lock serialises processes), else via the actor.
    Blocking; an event loop awaits `audit_actor(settings).append.remote(record)` instead."""
    if isinstance(store, LocalStore):
        return AuditLog(store).append(record)
    result: dict[str, Any] = ray.get(audit_actor(settings).append.remote(record))
    return result


def repair_audit(settings: Settings, store: ObjectStore) -> dict[str, Any]:
    """Cut a damaged log back to its last verified record (cluster/audit/repair.py): in-process on a local folder,
    else by the writer, which must forget the head it holds."""
    if isinstance(store, LocalStore):
        return repair(AuditLog(store))
    result: dict[str, Any] = ray.get(audit_actor(settings).repair.remote())
    return result


_handles: dict[str, Any] = {}


class AuditWriter:
    """Ray actor over AuditLog on the settings' store, committing appends in groups: while one group is being
    written, the appends that arrive (from every server) wait and go out together in the next, one write of the
    segment and one of HEAD for all of them. Each caller's answer comes after its records are stored. A restart
    resumes from the stored head."""

    def __init__(self, settings: Settings) -> None:
        self.log = AuditLog(open_store(settings.store, settings), single_writer=True)
        self.group: GroupCommit[dict[str, Any], dict[str, Any]] = GroupCommit(self._write, MAX_GROUP)
        self.writing = asyncio.Lock()  # a group commit or a repair, never both

    async def _write(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        async with self.writing:
            return await asyncio.to_thread(self.log.append_many, entries)

    async def check_appendable(self) -> None:
        async with self.writing:
            await asyncio.to_thread(self.log.check_appendable)

    async def repair(self) -> dict[str, Any]:
        async with self.writing:
            return await asyncio.to_thread(repair, self.log)

    async def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        return await self.group.add(entry)

    async def append_many(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A server's own group, in order, joined with whatever else is waiting."""
        return list(await asyncio.gather(*(self.group.add(entry) for entry in entries)))


class AuditClient:
    """A server's side of the audit writer: its requests' appends go to the actor in groups too (one Ray call
    per group instead of one per search: under 16 clients on S3 the calls themselves were the cost)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._groups: dict[int, GroupCommit[dict[str, Any], dict[str, Any]]] = {}

    async def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        loop = id(asyncio.get_running_loop())
        if loop not in self._groups:  # futures belong to one loop; a CLI may run several in turn
            self._groups = {loop: GroupCommit(self._send, MAX_GROUP)}
        return await self._groups[loop].add(entry)

    async def _send(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        written: list[dict[str, Any]] = await audit_actor(self.settings).append_many.remote(entries)
        return written
