"""What a job run did, as its summary (the CLI prints `to_dict()`; the runs row holds the counts).

Example:
    >>> RunSummary("r", "images", 1, 2, 0, 0, 0, 0, 0.5).to_dict()["added"]
    2
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["RunSummary"]


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
