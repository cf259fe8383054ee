"""The runs table (`LAKE/_lakeimg/runs`): one lineage record per job run.

The same record goes into the Delta commit's `userMetadata`, so a table's own history answers
"which run made this version" even without the runs table.

Example:
    >>> spec_hash({"b": 1, "a": [2]}) == spec_hash({"a": [2], "b": 1})
    True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from lakeimg._version import __version__
from lakeimg.schemas import table_contract

__all__ = ["RunRecord", "canonical_json", "spec_hash", "new_run_id", "RUNS_TABLE"]

RUNS_TABLE = "_lakeimg/runs"


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON: equal specs give equal text, hence equal hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def spec_hash(spec: Any) -> str:
    """SHA-256 of a spec's canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class RunRecord:
    """One job run, as stored in the runs table and in commit metadata."""

    run_id: str
    job: str
    engine: str
    target_table: str
    spec: dict[str, Any]
    started_at: dt.datetime
    status: str = "succeeded"
    target_version: int | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    finished_at: dt.datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    code_version: str = __version__

    @property
    def spec_hash(self) -> str:
        return spec_hash(self.spec)

    def commit_metadata(self) -> dict[str, Any]:
        """The record as it goes into a Delta commit (before the target version is known)."""
        record = asdict(self)
        record["spec"] = canonical_json(self.spec)
        record["spec_hash"] = self.spec_hash
        record.pop("target_version")
        record.pop("finished_at")
        record.pop("counts")
        record.pop("outputs")
        return record

    def to_arrow(self) -> pa.Table:
        row = asdict(self)
        row["spec"] = canonical_json(self.spec)
        row["spec_hash"] = self.spec_hash
        row["counts"] = list(self.counts.items())
        row["finished_at"] = self.finished_at or utc_now()
        return pa.Table.from_pylist([row], schema=table_contract("runs").arrow_schema)
