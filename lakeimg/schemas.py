"""Table contracts: loads `schemas/*.json` and derives pyarrow schemas and Spark StructType JSON.

The JSON files are the single source of truth for every table's columns; code, tests and the
README's table docs all read them.

Example:
    >>> from lakeimg.schemas import table_contract
    >>> table_contract("images").arrow_schema.field("uri").type
    DataType(string)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

__all__ = ["TableContract", "table_contract", "arrow_type", "contract_names"]

_REPO_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def _schema_dir():
    if _REPO_SCHEMAS.is_dir():
        return _REPO_SCHEMAS
    return resources.files("lakeimg.schema_files")


@dataclass(frozen=True)
class TableContract:
    """One table's contract: name, version, columns (Spark StructType JSON) and Delta properties."""

    name: str
    version: int
    description: str
    struct_json: dict[str, Any]
    partition_columns: tuple[str, ...]
    properties: dict[str, str]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([_arrow_field(f) for f in self.struct_json["fields"]])

    @property
    def column_names(self) -> list[str]:
        return [f["name"] for f in self.struct_json["fields"]]


def contract_names() -> list[str]:
    """Names of all current contracts (highest version of each)."""
    names = {p.name.split(".v")[0] for p in _schema_dir().iterdir() if p.name.endswith(".json")}
    return sorted(names)


@functools.cache
def table_contract(name: str, version: int | None = None) -> TableContract:
    """Load a contract by name; the highest version unless `version` is given."""
    files = {
        int(p.name.rsplit(".v", 1)[1].split(".")[0]): p
        for p in _schema_dir().iterdir()
        if p.name.startswith(f"{name}.v") and p.name.endswith(".json")
    }
    if not files:
        raise KeyError(f"no schema file for table kind {name!r}")
    chosen = files[version if version is not None else max(files)]
    doc = json.loads(chosen.read_text())
    return TableContract(
        name=doc["name"],
        version=doc["version"],
        description=doc.get("description", ""),
        struct_json=doc["schema"],
        partition_columns=tuple(doc.get("partition_columns", [])),
        properties=dict(doc.get("properties", {})),
    )


_PRIMITIVES = {
    "string": pa.string(),
    "binary": pa.binary(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "short": pa.int16(),
    "byte": pa.int8(),
    "double": pa.float64(),
    "float": pa.float32(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def arrow_type(spark_type: Any) -> pa.DataType:
    """Map one Spark/Delta JSON type to the pyarrow type lakeimg writes."""
    if isinstance(spark_type, str):
        return _PRIMITIVES[spark_type]
    kind = spark_type["type"]
    if kind == "struct":
        return pa.struct([_arrow_field(f) for f in spark_type["fields"]])
    # Element and value nullability are part of the contract: Delta records containsNull /
    # valueContainsNull from the Arrow field, so carry them over.
    if kind == "array":
        element = pa.field("element", arrow_type(spark_type["elementType"]), nullable=spark_type.get("containsNull", True))
        return pa.list_(element)
    if kind == "map":
        value = pa.field("value", arrow_type(spark_type["valueType"]), nullable=spark_type.get("valueContainsNull", True))
        return pa.map_(arrow_type(spark_type["keyType"]), value)
    raise ValueError(f"unsupported type {spark_type!r}")


def _arrow_field(field: dict[str, Any]) -> pa.Field:
    comment = field.get("metadata", {}).get("comment")
    return pa.field(
        field["name"],
        arrow_type(field["type"]),
        nullable=field.get("nullable", True),
        metadata={"comment": comment} if comment else None,
    )
