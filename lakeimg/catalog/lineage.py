"""Lineage: the chain from a table version (or a training set) back to ingest runs and source folders.

Each step is one (table, version) and the run that made it: the newest commit at or below that
version that changed data (OPTIMIZE, VACUUM and property commits are looked through; a RESTORE
is followed to the version it restored). A transform step's inputs (table, version) are its
parents; an ingest step lists every ingest run that contributed rows up to that version, with
their source folders, because an incremental ingest table holds the union of those runs.

Example:
    >>> import tempfile; from lakeimg.lake import Lake; from lakeimg.samples import write_photo_jpegs
    >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
    >>> _ = write_photo_jpegs(photos, 4, width=32, height=24), lake.ingest(photos, workers=0)
    >>> _ = lake.transform("images", "small", {"ops": [{"op": "resize", "width": 8, "height": 6}]}, workers=0)
    >>> engine = LocalEngine(lake.path)
    >>> [(step.table, step.version, step.job, step.depth) for step in table_lineage(engine, "small")]
    [('small', 0, 'transform', 0), ('images', 0, 'ingest', 1)]
    >>> _ = lake.create_training_set("pets-v1", "small", seed=1)
    >>> [step.table for step in trainset_lineage(engine, "pets-v1")], sorted(lineage_nodes(engine, "pets-v1"))
    (['trainset:pets-v1', 'small', 'images'], [('images', 0), ('small', 0)])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lakeimg.catalog.history import HistoryEntry, reproduce_checks, table_history
from lakeimg.catalog.trainsets import load_trainset_record
from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import TableNotFoundError

__all__ = ["LineageStep", "table_lineage", "trainset_lineage", "producing_step", "lineage_nodes"]

# What only a table version's step has; a training set's step (job "trainset") leaves them out.
_TABLE_ONLY = ("made_at_version", "operation", "status", "engine")


@dataclass(frozen=True)
class LineageStep:
    """One (table, version) and the run that made it; `depth` 0 is where the walk started.

    `made_at_version` is the commit that changed the data (the version itself or an older one
    when later commits only compacted or vacuumed); an ingest step lists every ingest run up to
    it in `ingest_runs`; `restored_as` is set when the version is a RESTORE of this step;
    `reproduced` is the latest `reproduce` of this version, when one was run
    (`catalog.history.reproduce_checks`).

    Example:
        >>> step = LineageStep("trainset:s", None, "trainset", "r1", "1.0", "2026-01-01", {}, None, [], [])
        >>> sorted(step.to_dict())[:4]
        ['code_version', 'depth', 'inputs', 'job']
    """

    table: str
    version: int | None
    job: str | None
    run_id: str | None
    code_version: str | None
    timestamp: str | None
    spec: Any
    spec_hash: str | None
    inputs: list[dict[str, Any]]
    sources: list[str]
    depth: int = 0
    made_at_version: int | None = None
    operation: str | None = None
    status: str | None = None
    engine: str | None = None
    ingest_runs: list[dict[str, Any]] | None = None
    restored_as: int | None = None
    reproduced: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("ingest_runs", "restored_as", "reproduced"):
            if out[key] is None:
                del out[key]
        if self.job == "trainset":
            for key in _TABLE_ONLY:
                del out[key]
        return out


class _HistoryCache:
    def __init__(self, engine: LocalEngine):
        self.engine = engine
        self._cache: dict[str, list[HistoryEntry]] = {}

    def __call__(self, table: str) -> list[HistoryEntry]:
        if table not in self._cache:
            self._cache[table] = table_history(self.engine, table)
        return self._cache[table]


def producing_step(engine: LocalEngine, table: str, version: int, *, history: _HistoryCache | None = None) -> LineageStep:
    """The run that made `table@version` as a lineage step (see the module docstring)."""
    history = history or _HistoryCache(engine)
    entries = sorted((e for e in history(table) if e.version <= version), key=lambda e: -e.version)
    if not entries:
        raise TableNotFoundError(f"{table}@{version}", engine.lake)
    producer = None
    for entry in entries:
        if entry.operation == "RESTORE":
            target = entry.operation_parameters.get("version")
            if target is not None:
                restored = producing_step(engine, table, int(target), history=history)
                return dataclasses.replace(restored, restored_as=version)
        if not entry.data_change or entry.job == "maintain":
            continue
        producer = entry
        break
    if producer is None:  # only an empty CREATE: the table was made empty by some run
        producer = entries[-1]
    inputs = [{"table": i["table"], "version": i["version"]} for i in producer.inputs or []]
    sources, ingest_runs = list(producer.sources or []), None
    if producer.job == "ingest" or (producer.job is None and not inputs):
        ingest_runs, sources = [], []
        for entry in reversed(entries):  # oldest first
            if entry.job != "ingest" or not entry.data_change:
                continue
            ingest_runs.append({"run_id": entry.run_id, "version": entry.version, "sources": entry.sources,
                                "status": entry.status, "spec_hash": entry.spec_hash, "timestamp": entry.timestamp})
            sources += [s for s in entry.sources if s not in sources]
    return LineageStep(
        table=table, version=version, job=producer.job, run_id=producer.run_id, code_version=producer.code_version,
        timestamp=producer.timestamp, spec=producer.spec, spec_hash=producer.spec_hash, inputs=inputs,
        sources=sources, made_at_version=producer.version, operation=producer.operation, status=producer.status,
        engine=producer.engine, ingest_runs=ingest_runs,
    )


def _walk(engine: LocalEngine, roots: list[tuple[str, int]], history: _HistoryCache, depth: int = 0) -> list[LineageStep]:
    steps: list[LineageStep] = []
    seen: set[tuple[str, int]] = set()
    checks = reproduce_checks(engine)
    frontier = [(t, v, depth) for t, v in roots]
    while frontier:
        table, version, level = frontier.pop(0)
        if (table, version) in seen:
            continue
        seen.add((table, version))
        step = dataclasses.replace(producing_step(engine, table, version, history=history), depth=level,
                                   reproduced=checks.get((table, version)))
        steps.append(step)
        for parent in step.inputs:
            if parent.get("version") is None:
                continue
            frontier.append((parent["table"], int(parent["version"]), level + 1))
    return steps


def table_lineage(engine: LocalEngine, table: str, version: VersionLike = None) -> list[LineageStep]:
    """Steps from `table@version` back to the ingest runs, breadth first (depth 0 is the table)."""
    resolved = engine.resolve_version(table, version)
    return _walk(engine, [(table, resolved)], _HistoryCache(engine))


def trainset_lineage(engine: LocalEngine, name: str) -> list[LineageStep]:
    """A training set's record as step 0, then the lineage of its pinned table version."""
    record = load_trainset_record(engine, name)
    step = LineageStep(
        table=f"trainset:{name}", version=None, job="trainset", run_id=record.run_id, code_version=record.code_version,
        timestamp=str(record.created_at), spec_hash=None, inputs=[{"table": record.table, "version": record.version}],
        spec={"where": record.where, "splits": list(record.splits), "seed": record.seed, "label_column": record.label_column,
              "stratify": record.stratify},
        sources=[],
    )
    rest = _walk(engine, [(record.table, record.version)], _HistoryCache(engine), depth=1)
    return [step, *rest]


def lineage_nodes(engine: LocalEngine, name: str) -> set[tuple[str, int]]:
    """Every (table, version) a training set reads or its lineage needs (what vacuum must keep)."""
    nodes = set()
    for step in trainset_lineage(engine, name)[1:]:
        nodes.add((step.table, int(step.version)))
        if step.made_at_version is not None:
            nodes.add((step.table, int(step.made_at_version)))
        for parent in step.inputs:
            if parent.get("version") is not None:
                nodes.add((parent["table"], int(parent["version"])))
    return nodes
