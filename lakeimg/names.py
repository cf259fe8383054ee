"""The one rule for table, training-set and split names, and the guard that keeps paths in the lake.

Table names: a lowercase letter, then lowercase letters, digits and `_`, at most 63 characters
(`images`, `cats_256`). Such a name is one folder inside the lake on every file system (no
case folding surprises) and a SQL identifier that needs no quoting in DuckDB or Spark.
Training-set and split names follow the same rule and may also use `-` (`cats-v1`, `v1-seed6`):
they are records in a table, never folders or SQL identifiers.

A table a job writes as its main output (ingest `--table`, transform `--target`) may not end in
`_rejects` or `_tiles` (those are the tables lakeimg derives from it) nor be `lakeimg_runs` (the
SQL name of the runs table). Names lakeimg derives (`images_rejects`) may exceed 63 characters
by their suffix.

Example:
    >>> validate_name("table", "cats_256")
    'cats_256'
    >>> validate_name("training set", "cats-v1")
    'cats-v1'
"""

from __future__ import annotations

import re
from typing import Literal

from lakeimg.errors import InvalidNameError

__all__ = ["NameKind", "validate_name", "lake_relative", "is_table_name", "NAME_RULE"]

NameKind = Literal["table", "target table", "training set", "split"]

NAME_RULE = "a lowercase letter, then lowercase letters, digits and '_', at most 63 characters"
_MAX = 63
_TABLE = re.compile(r"[a-z][a-z0-9_]*")
_RECORD = re.compile(r"[a-z][a-z0-9_-]*")  # training sets and splits: '-' too
_DERIVED_SUFFIXES = ("_rejects", "_tiles")
_RESERVED_TABLES = frozenset({"lakeimg_runs"})


def is_table_name(name: str) -> bool:
    """Whether `name` can be a table's name (a folder of the lake that SQL and lakeimg see).

    Example:
        >>> is_table_name("images_rejects"), is_table_name("My Table")
        (True, False)
    """
    return isinstance(name, str) and _TABLE.fullmatch(name) is not None


def validate_name(kind: NameKind, name: str) -> str:
    """`name` when it follows the rule for `kind`; InvalidNameError (exit code 2) otherwise.

    "table" is any table a job or query reads (derived names such as `images_rejects` too);
    "target table" is a table a job writes as its output, which also may not be a reserved name.

    Example:
        >>> validate_name("target table", "images_rejects")
        Traceback (most recent call last):
        ...
        lakeimg.errors.InvalidNameError: target table name 'images_rejects': names ending in '_rejects' are reserved for the tables lakeimg derives
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(kind, str(name), f"give a name: {_rule(kind)}")
    pattern = _TABLE if kind in ("table", "target table") else _RECORD
    if pattern.fullmatch(name) is None:
        raise InvalidNameError(kind, name, f"use {_rule(kind)}")
    if kind != "table" and len(name) > _MAX:
        raise InvalidNameError(kind, name, f"at most {_MAX} characters")
    if kind == "target table":
        for suffix in _DERIVED_SUFFIXES:
            if name.endswith(suffix):
                raise InvalidNameError(kind, name, f"names ending in {suffix!r} are reserved for the tables lakeimg derives")
        if name in _RESERVED_TABLES:
            raise InvalidNameError(kind, name, "reserved (the runs table's SQL name)")
    return name


def lake_relative(name: str) -> str:
    """`name` when, joined to the lake's root, it stays inside the lake (the last guard before a path).

    Relative, '/'-separated, no empty, '.' or '..' parts, no backslash or NUL: lakeimg's own
    names (`images`, `_lakeimg/runs`, `_lakeimg/staging/<run>/<table>`) pass; `../x`, `/abs`,
    `a/../../b` do not.

    Example:
        >>> lake_relative("_lakeimg/runs")
        '_lakeimg/runs'
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("table", str(name), "give a name")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise InvalidNameError("table", name, "a table's path must stay inside the lake")
    return name


def _rule(kind: NameKind) -> str:
    if kind in ("table", "target table"):
        return NAME_RULE
    return NAME_RULE.replace("and '_'", "'_' and '-'")
