"""The per-search promise at a benchmark's size: the bench collection given the default floor and promise (a new
manifest version written by the bench itself, as set-up: not an act on the record, unlike `collections promise`),
then one audited search through the API, answered at the threshold the promise implies or refused; what the answer
and its audit record say."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from cluster.audit.log import read_records
from cluster.collections.manifest import DEFAULT_MAX_FALSE_CANDIDATES, DEFAULT_MAX_FALSE_MATCH_RATE, Manifest
from cluster.collections.publish import Publisher
from serving.usecases.context import Context


def search_under_the_promise(
    ctx: Context, client: httpx.Client, manifest: Manifest, probe: np.ndarray, body: dict[str, Any]
) -> dict[str, Any]:
    def default_promise(held: Manifest) -> None:
        held.max_false_match_rate = DEFAULT_MAX_FALSE_MATCH_RATE
        held.max_false_candidates_per_search = DEFAULT_MAX_FALSE_CANDIDATES

    _, promised = Publisher(ctx.collections).amend(manifest.name, default_promise)
    ctx.remember(promised)
    answer = client.post(
        f"/v1/collections/{manifest.name}/search-vector",
        json={**body, "vector": np.asarray(probe, dtype=float).tolist()},
    )
    record = read_records(ctx.store)[-1]
    audited = {k: record.get(k) for k in ("action", "outcome", "code", "faces_searched", "promise_similarity")}
    audited |= {k: record.get(k) for k in ("max_false_candidates_per_search", "threshold_applied")}
    if answer.status_code != 200:
        error = answer.json()["error"]
        return {"answered": False, "status": answer.status_code, "code": error["code"], "message": error["message"]}
    threshold = answer.json()["threshold"]
    return {"answered": True, "matches": len(answer.json()["matches"]), **threshold, "audit_record": audited}
