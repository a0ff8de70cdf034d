"""Export audit records to Parquet or CSV, one row per record, nested fields as JSON text."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cluster.audit.log import read_records
from cluster.errors import InvalidRequest
from cluster.storage import ObjectStore

COLUMNS = (
    "seq",
    "time",
    "key_id",
    "role",
    "client",
    "action",
    "outcome",
    "code",
    "collection",
    "purpose",
    "case_id",
    "probe_sha256",
    "threshold_requested",
    "threshold_applied",
    "prev_hash",
    "hash",
)


def export_records(store: ObjectStore, out: Path, start: datetime | None, end: datetime | None) -> int:
    if out.suffix not in (".parquet", ".csv"):
        raise InvalidRequest("export to a .parquet or .csv file")
    records = read_records(store, start, end)
    rows = []
    for record in records:
        row = {c: record.get(c) for c in COLUMNS}
        row["details"] = json.dumps({k: v for k, v in record.items() if k not in COLUMNS}, sort_keys=True)
        rows.append({k: v if k == "seq" or v is None else str(v) for k, v in row.items()})
    if out.suffix == ".csv":  # a spreadsheet must not run a case id as a formula
        rows = [{k: formula_safe(v) for k, v in row.items()} for row in rows]
    schema = pa.schema([("seq", pa.int64())] + [(c, pa.string()) for c in (*COLUMNS[1:], "details")])
    table = pa.Table.from_pylist(rows, schema)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        pq.write_table(table, out)
    else:
        pacsv.write_csv(table, out)
    return len(rows)


def formula_safe(value: object) -> object:
    """A CSV cell that a spreadsheet would take for a formula (=, +, -, @, tab, carriage return first) as text:
    OWASP's advice, a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
