"""What a job run did, as its summary (the CLI prints `to_dict()`; the runs row holds the counts).

Example:
    >>> RunSummary("r", "images", 1, 2, 0, 0, 0, 0, 0.5).to_dict()["added"]
    2
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["RunSummary", "DryRunSummary"]


@dataclass(frozen=True)
class RunSummary:
    """The counts every job run reports; `version` is the target table's version after the run."""

    run_id: str
    table: str
    version: int | None
    added: int
    updated: int
    unchanged: int
    deleted: int
    rejected: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DryRunSummary:
    """What a run would do (`dry_run=True`, `--dry-run`), counted from its plan: files (ingest) or
    source images (transform) it would add, update (re-read or recompute), delete, and leave
    unchanged. Nothing is decoded or written: no commit, no runs row, no staging; `version` is
    the table's current version (None: it does not exist yet).

    Example:
        >>> DryRunSummary("ingest", "images", None, 3, 0, 0, 0).to_dict()["dry_run"]
        True
    """

    job: str
    table: str
    version: int | None
    add: int
    update: int
    delete: int
    unchanged: int
    mode: str | None = None
    relabel: int = 0  # unchanged images whose label or attributes would be rewritten (ingest)
    dry_run: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
