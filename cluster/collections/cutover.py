"""Cut-over and rollback: a collection switches to its upgrade's shadow version, or back to the version before,
in one manifest swap (every server follows within a manifest read); a new shard set serves it, loaded before the
old one retires, so searches run throughout.

Both are publishes (cluster/collections/publish.py) of a manifest made from the other version's records, with its
own live log, race-checked under the collection's lock. The swap also holds every photo lock of the collection
and checks, under them, that the version switched to holds every photo the collection does: an add either
landed before (then the check sees it and refuses) or reads the new manifest after its write and embeds again
(serving/usecases/ingest.py). The replaced version is kept for a rollback (`Versions.keep_previous`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cluster.collections.manifest import Manifest
from cluster.collections.photos import KeptPhotos
from cluster.collections.publish import Publisher
from cluster.collections.versions import LISTED, Shadow, Versions, live_photos
from cluster.errors import NoPreviousVersion, NoShadowVersion, ShadowStale


def switch(publisher: Publisher, name: str, keep_s: float, by: str | None) -> tuple[Manifest, Manifest]:
    """Serve the upgrade's shadow version: (the manifest before, the one after). Refused, changing nothing, while
    the shadow lacks a photo the collection holds (ShadowStale names them and how to finish)."""
    versions = Versions(publisher.store, name)
    shadow = versions.shadow()
    if shadow is None or shadow.summary is None:
        raise NoShadowVersion(f"collection {name!r} has no upgraded version: run `facegrid collections upgrade {name}`")
    current = publisher.collections.get(name)
    _check_settled(versions, shadow, current)  # early, without locks; again under them before the swap
    target = _from(current, shadow.target | {"log": shadow.log}, versions.record_files(shadow))
    switched = publisher.publish(target, guard=lambda now: _settled_then_kept(versions, shadow, now, keep_s, by))
    versions.drop_shadow(shadow, keep_records=True)  # its records are the collection's now
    return current, switched


def rollback(
    publisher: Publisher, name: str, keep_s: float, by: str | None, drop_added: bool = False
) -> tuple[Manifest, Manifest]:
    """Serve the version the last cut-over (or rollback) replaced, with its records as they are now (erasures
    since reach it too) and faces added to it meanwhile; the version left becomes the one a rollback returns to.
    Refused while the version served holds photos the other lacks (added since the cut-over), unless
    `drop_added`: they would leave the collection's searches until a switch back."""
    versions = Versions(publisher.store, name)
    previous = versions.previous()
    if previous is None:
        raise NoPreviousVersion(f"collection {name!r} has no earlier version to roll back to")
    current = publisher.collections.get(name)
    fields = {k: getattr(previous.manifest, k) for k in (*_PINNED, "log", "error_files")}
    target = _from(current, fields, previous.manifest.face_files)

    def check_added(now: Manifest) -> None:
        added = sorted(live_photos(publisher.collections, now) - live_photos(publisher.collections, previous.manifest))
        if added and not drop_added:
            raise ShadowStale(
                f"{len(added)} photos were added since the cut-over and the version before lacks them: a rollback "
                "would leave them out of searches (until a switch back). Roll back with drop_added, or upgrade "
                "to the earlier recipe instead",
                added=[location for location, _ in added][:LISTED],
            )

    check_added(current)

    @contextmanager
    def kept(now: Manifest) -> Iterator[None]:
        with KeptPhotos(publisher.store, name).all_locked():
            check_added(now)
            versions.keep_previous(now, keep_s, by)
            yield

    return current, publisher.publish(target, guard=kept)


# What a recipe pins in a manifest: a version switched to brings its own.
_PINNED = ("model_id", "model_sha256", "recipe", "fused_model_sha256", "dim", "calibration", "calibration_sha256")


def _from(current: Manifest, fields: dict[str, Any], face_files: list[str]) -> Manifest:
    """The manifest to publish: the current one's policy (floor, promise, shards, replicas) with another version's
    recipe, records and log, built afresh as a new shard set (the current snapshots stay until the next publish)."""
    target = current.model_copy(deep=True, update=fields)
    target.face_files = sorted(set(face_files))
    target.built_spec, target.trained, target.extended_from, target.folded = None, None, None, []
    target.shard_set = current.version + 1  # the version this publish makes: new actors, loaded before the old go
    return target


def _check_settled(versions: Versions, shadow: Shadow, current: Manifest) -> None:
    unsettled = versions.unsettled(shadow, current)
    if unsettled:
        raise ShadowStale(
            f"the upgraded version lacks {len(unsettled)} photos the collection holds (added since the upgrade read "
            f"it, or not readable): run `facegrid collections upgrade {current.name} --recipe {shadow.recipe}` "
            "again, which embeds only those",
            unsettled=[location for location, _ in unsettled][:LISTED],
        )


@contextmanager
def _settled_then_kept(
    versions: Versions, shadow: Shadow, current: Manifest, keep_s: float, by: str | None
) -> Iterator[None]:
    with KeptPhotos(versions.store, versions.collection).all_locked():
        _check_settled(versions, shadow, current)
        versions.keep_previous(current, keep_s, by)
        yield
