"""Training sets: immutable records in `LAKE/_lakeimg/trainsets` and deterministic hash splits.

A training set pins a table version and records the filter, the split rule, the seed and the
label-to-index map; its rows are re-derived from that record on every read, so it costs one
small row and reads the same images as long as the pinned version is readable (maintenance
keeps it so).

Splits. An image's split depends only on (seed, uri): u = first 8 bytes of
sha256(f"{seed}\\0{uri}") / 2**64 falls into one of the cumulative intervals of the split rule
(train=0.8,val=0.1,test=0.1 -> [0, .8), [.8, .9), [.9, 1)). So an image keeps its split when the
table grows and a new set is made on a later version: no train/test leakage across versions.
All variants of an image (augmented rows of a derived table) share the image's split.

Stratified sets (`stratify=True`) trade a little of that property for exact per-label quotas:
within each label, images are taken in hash order and each goes to the split furthest below its
quota. Quotas depend on how many images a label has, so on their own they would move images
across splits as the table grows. To keep images where they were, a stratified set builds on
the newest earlier stratified set with the same table, seed, split rule and label column
(`base_set`): images of the base keep their split, and only new images fill each label's
deficits. The price: a stratified set's assignment depends on its chain of base sets (all
recorded, so it is still reproducible), and quotas are exact only up to what the base fixed.

Example:
    >>> split_of("file:///a.jpg", 7, [("train", 0.8), ("val", 0.1), ("test", 0.1)]) in {"train", "val", "test"}
    True
    >>> import tempfile; from lakeimg.lake import Lake; from lakeimg.samples import write_photo_jpegs
    >>> photos, lake = tempfile.mkdtemp(), Lake(tempfile.mkdtemp())
    >>> _ = write_photo_jpegs(photos, 4, width=32, height=24), lake.ingest(photos, workers=0)
    >>> engine = LocalEngine(lake.path)
    >>> sum(create_trainset(engine, "all-v1", "images", splits="train=0.5,test=0.5", seed=7).counts.values())
    4
    >>> TrainingSet(engine, "all-v1").rows("train").column_names
    ['uri', 'label', 'label_index', 'split']
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakeimg._version import __version__
from lakeimg.catalog.loaders import iter_numpy, to_spark
from lakeimg.engine.base import VersionLike
from lakeimg.engine.delta_rs import LocalEngine
from lakeimg.engine.layout import ensure_lake
from lakeimg.errors import LakeImgError, NotFoundError, SpecError
from lakeimg.schemas import table_contract
from lakeimg.sqlguard import filter_table, parse_where
from lakeimg.tables import (
    RUNS_TABLE,
    TRAINSETS_TABLE,
    RunRecord,
    new_run_id,
    utc_now,
    validate_name,
)

__all__ = [
    "TrainingSet",
    "TrainingSetRecord",
    "create_trainset",
    "list_trainsets",
    "load_trainset_record",
    "parse_split_rule",
    "split_of",
    "hash_unit",
]

_BINARY = (pa.binary(), pa.large_binary())


def parse_split_rule(text: str | dict[str, float] | Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """`train=0.8,val=0.1,test=0.1` (or a dict) -> [(name, fraction)]; fractions must sum to 1.

    Example:
        >>> parse_split_rule("train=0.9,test=0.1")
        [('train', 0.9), ('test', 0.1)]
    """
    if isinstance(text, str):
        pairs = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise SpecError(f"split {part!r}: write NAME=FRACTION, e.g. train=0.8")
            try:
                pairs.append((name.strip(), float(value)))
            except ValueError as exc:
                raise SpecError(f"split {part!r}: {value!r} is not a number") from exc
    elif isinstance(text, dict):
        pairs = [(str(k), float(v)) for k, v in text.items()]
    else:
        pairs = [(str(k), float(v)) for k, v in text]
    names = [n for n, _ in pairs]
    if not pairs or len(set(names)) != len(names) or any(not n for n in names):
        raise SpecError(f"split rule {text!r}: give distinct names, e.g. train=0.8,val=0.1,test=0.1")
    for name in names:
        validate_name("split", name)
    if any(f < 0 for _, f in pairs) or abs(sum(f for _, f in pairs) - 1.0) > 1e-6:
        raise SpecError(f"split rule {text!r}: fractions must be >= 0 and sum to 1")
    return pairs


def hash_unit(seed: int, uri: str) -> float:
    """u(seed, uri) in [0, 1): the only input of an unstratified split.

    Example:
        >>> hash_unit(1, "file:///a.jpg") == hash_unit(1, "file:///a.jpg")
        True
    """
    digest = hashlib.sha256(f"{int(seed)}\0{uri}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(uri: str, seed: int, splits: Sequence[tuple[str, float]]) -> str:
    """The split an image falls in under an unstratified rule.

    Example:
        >>> split_of("file:///a.jpg", 0, [("all", 1.0)])
        'all'
    """
    u, edge = hash_unit(seed, uri), 0.0
    for name, fraction in splits:
        edge += fraction
        if u < edge:
            return name
    return splits[-1][0]


@dataclass(frozen=True)
class TrainingSetRecord:
    """A training set as recorded: the pinned `table@version`, filter, split rule, seed, label
    column, stratification (and the `base_set` it builds on), the label-to-index map, the rows
    per split when it was made, and the run that made it.

    Example:
        >>> record = TrainingSetRecord("s", "images", 3, None, (("all", 1.0),), 7, "label", False, None, {}, {"all": 2},
        ...                            "r1", "1.0", dt.datetime(2026, 1, 1))
        >>> record.to_dict()["splits"], record.pinned
        ([('all', 1.0)], 'images@3')
    """

    name: str
    table: str
    version: int
    where: str | None
    splits: tuple[tuple[str, float], ...]
    seed: int
    label_column: str | None
    stratify: bool
    base_set: str | None
    label_index: dict[str, int]
    counts: dict[str, int]
    run_id: str
    code_version: str
    created_at: dt.datetime

    @property
    def pinned(self) -> str:
        return f"{self.table}@{self.version}"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TrainingSetRecord:
        """A row of the training-sets table (maps and structs as pyarrow gives them)."""
        return cls(**{
            **row,
            "version": int(row["version"]),
            "seed": int(row["seed"]),
            "stratify": bool(row["stratify"]),
            "splits": tuple((s["name"], s["fraction"]) for s in row["splits"]),
            "label_index": dict(row["label_index"] or []),
            "counts": dict(row["counts"] or []),
        })

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "splits": list(self.splits)}

    def to_row(self) -> dict[str, Any]:
        """The record as a row of the training-sets table (`from_row` reads it back)."""
        return {**self.to_dict(), "splits": [{"name": n, "fraction": f} for n, f in self.splits],
                "label_index": list(self.label_index.items()), "counts": list(self.counts.items())}


def list_trainsets(engine: LocalEngine) -> list[TrainingSetRecord]:
    """Every training set record, oldest first.

    Example:
        >>> list_trainsets(LocalEngine("/tmp/empty-lake"))
        []
    """
    if not engine.exists(TRAINSETS_TABLE):
        return []
    return [TrainingSetRecord.from_row(row) for row in engine.read(TRAINSETS_TABLE).sort_by("created_at").to_pylist()]


def load_trainset_record(engine: LocalEngine, name: str) -> TrainingSetRecord:
    """One training set's record; NotFoundError (exit code 5) when there is none.

    Example:
        >>> load_trainset_record(LocalEngine("/tmp/empty-lake"), "cats-v1")
        Traceback (most recent call last):
        ...
        lakeimg.errors.NotFoundError: no training set named 'cats-v1' in lake /tmp/empty-lake (training sets: none)
    """
    for record in list_trainsets(engine):
        if record.name == name:
            return record
    known = ", ".join(r.name for r in list_trainsets(engine)) or "none"
    raise NotFoundError(f"no training set named {name!r} in lake {engine.lake} (training sets: {known})", name=name)


def _selected_rows(engine: LocalEngine, spec: TrainingSetRecord) -> pa.Table:
    """uri, [variant], label of the rows the filter keeps, sorted by key."""
    schema = engine.arrow_schema(spec.table, spec.version)
    if "uri" not in schema.names:
        raise SpecError(f"{spec.table} has no uri column; training sets need one")
    if spec.label_column and spec.label_column not in schema.names:
        raise SpecError(f"{spec.table}@{spec.version} has no column {spec.label_column!r}")
    keys = ["uri"] + (["variant"] if "variant" in schema.names else [])
    condition = None
    if spec.where:
        columns = [f.name for f in schema if f.type not in _BINARY]
        # Checked again on every read: a record written by an older lakeimg (or by hand) is data.
        condition = parse_where(spec.where, columns)
    else:
        columns = list(dict.fromkeys(keys + ([spec.label_column] if spec.label_column else [])))
    table = engine.read(spec.table, version=spec.version, columns=columns)
    if condition is not None:
        table = filter_table(table, condition)
    labels = (
        table[spec.label_column].cast(pa.string()) if spec.label_column else pa.nulls(table.num_rows, pa.string())
    )
    out = {k: table[k] for k in keys}
    out["label"] = labels
    result = pa.table(out)
    return result.sort_by([(k, "ascending") for k in keys])


def _assign(engine: LocalEngine, spec: TrainingSetRecord, rows: pa.Table, depth: int = 0) -> np.ndarray:
    """Split name per row (object array), following the module docstring's rules."""
    uris = rows["uri"].to_pylist()
    names = [n for n, _ in spec.splits]
    if not spec.stratify:
        return np.array([split_of(u, spec.seed, spec.splits) for u in uris], dtype=object)
    base: dict[str, str] = {}
    if spec.base_set and depth < 1000:
        base_record = load_trainset_record(engine, spec.base_set)
        base_rows = _selected_rows(engine, base_record)
        base = dict(zip(base_rows["uri"].to_pylist(), _assign(engine, base_record, base_rows, depth + 1), strict=True))
    labels = rows["label"].to_pylist()
    out = np.empty(len(uris), dtype=object)
    by_label: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for members in by_label.values():
        distinct = list(dict.fromkeys(uris[i] for i in members))  # variants share an image
        targets = {n: f * len(distinct) for n, f in spec.splits}
        counts = dict.fromkeys(names, 0)
        chosen: dict[str, str] = {}
        for uri in distinct:
            if uri in base and base[uri] in counts:
                chosen[uri] = base[uri]
                counts[base[uri]] += 1
        for uri in sorted((u for u in distinct if u not in chosen), key=lambda u: hash_unit(spec.seed, u)):
            split = max(names, key=lambda n: (targets[n] - counts[n], -names.index(n)))
            chosen[uri] = split
            counts[split] += 1
        for i in members:
            out[i] = chosen[uris[i]]
    return out


def _label_index(rows: pa.Table) -> dict[str, int]:
    labels = sorted(set(v for v in rows["label"].to_pylist() if v is not None))
    return {label: i for i, label in enumerate(labels)}


def create_trainset(
    engine: LocalEngine,
    name: str,
    table: str,
    *,
    version: VersionLike = None,
    splits: str | dict[str, float] | Sequence[tuple[str, float]] = "train=0.8,val=0.1,test=0.1",
    seed: int = 0,
    where: str | None = None,
    label_column: str | None = "label",
    stratify: bool = False,
) -> TrainingSetRecord:
    """Record a training set on `table@version` (latest when None); returns its record."""
    validate_name("training set", name)
    validate_name("table", table)
    rule = parse_split_rule(splits)
    if where is not None:
        parse_where(where)  # refused before anything is read; columns are checked on the read
    ensure_lake(engine.lake, getattr(engine, "options", None))
    existing = {r.name: r for r in list_trainsets(engine)}
    if name in existing:
        raise SpecError(f"training set {name!r} already exists (training sets are immutable; pick a new name)")
    pinned = engine.resolve_version(table, version)
    if label_column == "":
        label_column = None
    base_set = None
    if stratify:
        candidates = [
            r for r in existing.values()
            if r.stratify and r.table == table and r.seed == int(seed) and list(r.splits) == rule
            and r.label_column == label_column and r.version <= pinned
        ]
        if candidates:
            base_set = max(candidates, key=lambda r: (r.version, r.created_at)).name
    record = TrainingSetRecord(name, table, pinned, where, tuple(rule), int(seed), label_column, bool(stratify),
                               base_set, {}, {}, new_run_id(), __version__, utc_now())
    rows = _selected_rows(engine, record)
    assigned = _assign(engine, record, rows)
    counts = {n: int((assigned == n).sum()) for n, _ in rule}
    record = dataclasses.replace(record, label_index=_label_index(rows), counts=counts)
    spec = {"name": name, "where": where, "splits": rule, "seed": int(seed), "label_column": label_column,
            "stratify": bool(stratify), "base_set": base_set}
    run = RunRecord(record.run_id, "trainset", engine.name, TRAINSETS_TABLE, spec, record.created_at,
                    inputs=[{"table": table, "version": pinned}])
    contract = table_contract("trainsets")
    version_after = engine.append(TRAINSETS_TABLE, pa.Table.from_pylist([record.to_row()], schema=contract.arrow_schema),
                                  contract, run.commit_metadata())
    run.target_version = version_after
    run.outputs = [{"table": TRAINSETS_TABLE, "version": version_after}]
    run.finished_at = utc_now()
    run.counts = {"rows": rows.num_rows, **counts}
    engine.append(RUNS_TABLE, run.to_arrow(), table_contract("runs"), run.commit_metadata())
    return load_trainset_record(engine, name)


class TrainingSet:
    """A pinned training set: rows per split, NumPy batches, a PyTorch dataset, a Spark DataFrame."""

    def __init__(self, engine: LocalEngine, name: str):
        self.engine = engine
        self.name = name
        self.record = load_trainset_record(engine, name)
        self.table, self.version, self.seed = self.record.table, self.record.version, self.record.seed
        self.splits = [n for n, _ in self.record.splits]
        self.label_index = dict(self.record.label_index)
        self._assigned: tuple[pa.Table, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"TrainingSet({self.name!r}, table={self.table}@{self.version})"

    @property
    def classes(self) -> list[str]:
        """Labels in class-index order."""
        return [k for k, _ in sorted(self.label_index.items(), key=lambda kv: kv[1])]

    def _all(self) -> tuple[pa.Table, np.ndarray]:
        if self._assigned is None:
            rows = _selected_rows(self.engine, self.record)
            self._assigned = (rows, _assign(self.engine, self.record, rows))
        return self._assigned

    def rows(self, split: str | None = None) -> pa.Table:
        """The split's rows (all when None): uri, [variant,] label, label_index (-1: no label), split."""
        if split is not None and split not in self.splits:
            raise SpecError(f"training set {self.name!r} has splits {self.splits}, not {split!r}")
        rows, assigned = self._all()
        index = self.label_index
        label_index = pa.array([index.get(v, -1) if v is not None else -1 for v in rows["label"].to_pylist()], pa.int64())
        out = rows.append_column("label_index", label_index).append_column("split", pa.array(assigned.tolist(), pa.string()))
        if split is not None:
            out = out.filter(pc.equal(out["split"], split))
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per split and label: {split: {label: n}} (label None shown as "")."""
        table = self.rows()
        out: dict[str, dict[str, int]] = {s: {} for s in self.splits}
        for split, label in zip(table["split"].to_pylist(), table["label"].to_pylist(), strict=True):
            key = "" if label is None else label
            out[split][key] = out[split].get(key, 0) + 1
        return out

    def iter_numpy(self, split: str, batch_size: int = 32, **options: Any):
        """Batches {"image": ndarray, "label": ndarray, "uri": list}; see `loaders.iter_numpy`.
        """
        return iter_numpy(self, split, batch_size, **options)

    def torch(self, split: str, **options: Any):
        """A PyTorch IterableDataset of {"image": CHW float32, "label", "uri"}; see `_torch.torch_dataset`.
        """
        try:  # torch is optional and heavy: imported on use
            from lakeimg.catalog._torch import torch_dataset
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise LakeImgError("PyTorch is not installed: pip install 'lakeimg[torch]'") from exc
        return torch_dataset(self, split, **options)

    def to_spark(self, spark: Any, split: str, **options: Any):
        """A Spark DataFrame (uri, label, label_index, features: MLlib vector); see `loaders.to_spark`.

        Example:
            >>> lake.training_set("pets").to_spark(spark, "train").columns
            ['uri', 'label', 'label_index', 'features']
        """
        return to_spark(spark, self, split, **options)

    def describe(self) -> dict[str, Any]:
        """The record plus counts per split and label, JSON-ready."""
        record = self.record.to_dict()
        record["splits"] = [{"name": n, "fraction": f} for n, f in self.record.splits]
        record["created_at"] = str(record["created_at"])
        record["by_split_and_label"] = self.counts()
        return json.loads(json.dumps(record, default=str))
