"""Shard hosts in the server's own process, for the shards the layout puts on the server's own node.

A search of a host's shards through Ray costs an actor round trip (2-3 ms on these two cores: the call, pickling
the queries and the answer, a second process waking) on top of the FAISS work; a host held in the server's process
is searched on a thread of its own with the arrays as they are. It answers the calls an actor handle answers
(`host.search.remote(...)` and so on), with a reference that can be awaited like an ObjectRef and waited on through
`future()`, so the set and the fan-out treat both alike: timeouts and `partial`, the same merge, reloads after a
publish, live segments. Used only where a shard has one replica: a host in the server's process shares its fate,
so replicas stay actors on distinct nodes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ray

from cluster.shards.host import ShardHost

# Calls a local host runs at once, as an actor's max_concurrency: searches beside a reload.
LOCAL_CONCURRENCY = 4
# By scope (the store and this process's Ray node: a later test's or session's collection of the same name is
# another) and host name.
_HOSTS: dict[tuple[str, str], LocalHost] = {}
_LOCK = threading.Lock()


class HostRetired(Exception):
    """A call reached a local host after its set was retired (an actor would have died: RayActorError)."""


class LocalRef:
    """A call's result to come: awaitable, as an ObjectRef is, and a concurrent future for blocking waits."""

    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def future(self) -> Future[Any]:
        return self._future

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self._future).__await__()


class _Method:
    def __init__(self, host: LocalHost, name: str) -> None:
        self.host, self.name = host, name

    def remote(self, *args: Any) -> LocalRef:
        return LocalRef(self.host.pool.submit(self.host.call, self.name, *args))


class LocalHost:
    """A ShardHost made on first use in this process (its snapshots load on one of its threads, not the caller's),
    made again on the next call if loading failed (as Ray restarts an actor)."""

    def __init__(self, name: str, make: Callable[[], ShardHost]) -> None:
        self.name = name
        self._make = make
        self._host: ShardHost | None = None
        self._made = threading.Lock()
        self.closed = False
        self.pool = ThreadPoolExecutor(LOCAL_CONCURRENCY, thread_name_prefix="local-host")

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self, method)

    def host(self) -> ShardHost:
        with self._made:
            if self.closed:
                raise HostRetired(f"shard host {self.name} was retired")
            if self._host is None:
                self._host = self._make()
            return self._host

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.host(), method)(*args)

    def behind(self, version: int) -> bool:
        """Whether a shard here has not caught up with this manifest version (or none is loaded yet)."""
        held = self._host
        return held is None or held.behind(version)

    def close(self) -> None:
        with self._made:
            self.closed = True
            held, self._host = self._host, None
        if held is not None:
            held.close()
        self.pool.shutdown(wait=False)


def host(scope: str, name: str, make: Callable[[], ShardHost]) -> LocalHost:
    """The process's local host of this name, made (lazily) if there is none."""
    with _LOCK:
        held = _HOSTS.get((scope, name))
        if held is None or held.closed:
            held = _HOSTS[scope, name] = LocalHost(name, make)
        return held


def named(scope: str, prefix: str) -> list[tuple[str, LocalHost]]:
    """(name, host) of this process's local hosts whose names start with `prefix`, in name order."""
    with _LOCK:
        found = [(n, h) for (s, n), h in _HOSTS.items() if s == scope and n.startswith(prefix)]
    return sorted(found, key=lambda pair: pair[0])


def close(scope: str, name: str) -> None:
    with _LOCK:
        held = _HOSTS.pop((scope, name), None)
    if held is not None:
        held.close()


def result(ref: Any, timeout: float | None = None) -> Any:
    """A call's value, whether it went to an actor (an ObjectRef) or to a local host."""
    if isinstance(ref, LocalRef):
        return ref.future().result(timeout)
    return ray.get(ref, timeout=timeout)


def wait(refs: list[Any], wanted: int, timeout: float) -> tuple[list[Any], list[Any]]:
    """`ray.wait` over calls to actors and to this process's hosts alike: (the calls answered, at least `wanted`
    of them or all by `timeout`; the rest). Where every call went to an actor it is `ray.wait` itself; else their
    futures are waited on (an actor's ObjectRef gives one too)."""
    if not any(isinstance(r, LocalRef) for r in refs):
        ready, rest = ray.wait(refs, num_returns=wanted, timeout=timeout)
        return list(ready), list(rest)
    futures = {r.future(): r for r in refs}
    how = concurrent.futures.ALL_COMPLETED if wanted >= len(refs) else concurrent.futures.FIRST_COMPLETED
    done, _ = concurrent.futures.wait(futures, timeout, return_when=how)
    return [futures[f] for f in futures if f in done], [futures[f] for f in futures if f not in done]
