"""Lineage: the chain from a table version (or a training set) back to ingest runs and source folders.

Each step is one (table, version) and the run that made it: the newest commit at or below that
version that changed data (OPTIMIZE, VACUUM and property commits are looked through; a RESTORE
is followed to the version it restored). A transform step's inputs (table, version) are its
parents; an ingest step lists every ingest run that contributed rows up to that version, with
their source folders, because an incremental ingest table holds the union of those runs.

Example:
    >>> steps = table_lineage(LocalEngine("/tmp/lake"), "cats_256", 3)  # doctest: +SKIP
    >>> [(s["table"], s["version"], s["job"]) for s in steps]  # doctest: +SKIP
    [('cats_256', 3, 'transform'), ('images', 5, 'ingest')]
"""

from __future__ import annotations

from typing import Any

from lakeimg.catalog.history import table_history
from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.errors import TableNotFoundError

__all__ = ["table_lineage", "trainset_lineage", "producing_step", "lineage_nodes"]


class _HistoryCache:
    def __init__(self, engine: LocalEngine):
        self.engine = engine
        self._cache: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, table: str) -> list[dict[str, Any]]:
        if table not in self._cache:
            self._cache[table] = table_history(self.engine, table)
        return self._cache[table]


def producing_step(engine: LocalEngine, table: str, version: int, *, history=None) -> dict[str, Any]:
    """The run that made `table@version` as a lineage step (see the module docstring).

    Example:
        >>> producing_step(LocalEngine("/tmp/lake"), "images", 0)["job"]  # doctest: +SKIP
        'ingest'
    """
    history = history or _HistoryCache(engine)
    entries = sorted((e for e in history(table) if e["version"] <= version), key=lambda e: -e["version"])
    if not entries:
        raise TableNotFoundError(f"{table}@{version}", engine.lake)
    producer = None
    for entry in entries:
        if entry["operation"] == "RESTORE":
            target = entry["operation_parameters"].get("version")
            if target is not None:
                restored = producing_step(engine, table, int(target), history=history)
                restored["restored_as"] = version
                return restored
        if not entry["data_change"] or entry["job"] == "maintain":
            continue
        producer = entry
        break
    if producer is None:  # only an empty CREATE: the table was made empty by some run
        producer = entries[-1]
    step = {
        "table": table,
        "version": version,
        "made_at_version": producer["version"],
        "operation": producer["operation"],
        "timestamp": producer["timestamp"],
        "job": producer["job"],
        "run_id": producer["run_id"],
        "status": producer.get("status"),
        "engine": producer["engine"],
        "code_version": producer["code_version"],
        "spec_hash": producer["spec_hash"],
        "spec": producer["spec"],
        "inputs": [{"table": i["table"], "version": i["version"]} for i in producer["inputs"] or []],
        "sources": list(producer["sources"] or []),
    }
    if producer["job"] == "ingest" or (producer["job"] is None and not step["inputs"]):
        runs, sources = [], []
        for entry in reversed(entries):  # oldest first
            if entry["job"] != "ingest" or not entry["data_change"]:
                continue
            runs.append({"run_id": entry["run_id"], "version": entry["version"], "sources": entry["sources"], "status": entry.get("status"),
                         "spec_hash": entry["spec_hash"], "timestamp": entry["timestamp"]})
            sources += [s for s in entry["sources"] if s not in sources]
        step["ingest_runs"] = runs
        step["sources"] = sources
    return step


def _walk(engine: LocalEngine, roots: list[tuple[str, int]], history: _HistoryCache, depth: int = 0) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    frontier = [(t, v, depth) for t, v in roots]
    while frontier:
        table, version, level = frontier.pop(0)
        if (table, version) in seen:
            continue
        seen.add((table, version))
        step = producing_step(engine, table, version, history=history)
        step["depth"] = level
        steps.append(step)
        for parent in step["inputs"]:
            if parent.get("version") is None:
                continue
            frontier.append((parent["table"], int(parent["version"]), level + 1))
    return steps


def table_lineage(engine: LocalEngine, table: str, version: VersionLike = None) -> list[dict[str, Any]]:
    """Steps from `table@version` back to the ingest runs, breadth first (depth 0 is the table).

    Example:
        >>> table_lineage(LocalEngine("/tmp/lake"), "images")[0]["sources"]  # doctest: +SKIP
        ['file:///data/photos']
    """
    resolved = engine.resolve_version(table, version)
    return _walk(engine, [(table, resolved)], _HistoryCache(engine))


def trainset_lineage(engine: LocalEngine, name: str) -> list[dict[str, Any]]:
    """A training set's record as step 0, then the lineage of its pinned table version.

    Example:
        >>> trainset_lineage(LocalEngine("/tmp/lake"), "cats-v1")[1]["table"]  # doctest: +SKIP
        'cats_256'
    """
    from lakeimg.catalog.trainsets import load_trainset_record

    record = load_trainset_record(engine, name)
    step = {
        "table": f"trainset:{name}",
        "version": None,
        "job": "trainset",
        "run_id": record["run_id"],
        "code_version": record["code_version"],
        "timestamp": str(record["created_at"]),
        "spec": {k: record[k] for k in ("where", "splits", "seed", "label_column", "stratify")},
        "spec_hash": None,
        "inputs": [{"table": record["table"], "version": record["version"]}],
        "sources": [],
        "depth": 0,
    }
    rest = _walk(engine, [(record["table"], int(record["version"]))], _HistoryCache(engine), depth=1)
    return [step, *rest]


def lineage_nodes(engine: LocalEngine, name: str) -> set[tuple[str, int]]:
    """Every (table, version) a training set reads or its lineage needs (what vacuum must keep).

    Example:
        >>> lineage_nodes(LocalEngine("/tmp/lake"), "cats-v1")  # doctest: +SKIP
        {('cats_256', 3), ('images', 5)}
    """
    nodes = set()
    for step in trainset_lineage(engine, name)[1:]:
        nodes.add((step["table"], int(step["version"])))
        if step.get("made_at_version") is not None:
            nodes.add((step["table"], int(step["made_at_version"])))
        for parent in step["inputs"]:
            if parent.get("version") is not None:
                nodes.add((parent["table"], int(parent["version"])))
    return nodes
