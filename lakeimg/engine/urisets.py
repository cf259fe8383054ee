"""Sets of uris as sorted, distinct Arrow string arrays: a plan over a million rows holds a few
tens of megabytes of Arrow instead of a Python string per uri, and set algebra is Arrow's
hash lookups (`pyarrow.compute.is_in`). Plus the null-safe comparison plans make of key columns.

Example:
    >>> done, todo = uri_set(["b", "a", "b"]), uri_set(["c", "b"])
    >>> union(done, todo).to_pylist(), minus(done, todo).to_pylist(), within(done, todo).to_pylist()
    (['a', 'b', 'c'], ['a'], ['b'])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import overload

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["SortedUris", "uri_set", "union", "minus", "within", "same"]


def uri_set(values: pa.Array | pa.ChunkedArray | Iterable[str] | None = None) -> pa.Array:
    """The distinct uris of `values` (Arrow or Python strings; None: none), sorted."""
    if values is None:
        return pa.array([], pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    if not isinstance(values, pa.Array):
        values = pa.array(list(values), pa.string())
    distinct = pc.unique(values.cast(pa.string()))
    return distinct.take(pc.array_sort_indices(distinct))


def union(*sets: pa.Array) -> pa.Array:
    """Every uri of any of `sets`."""
    return uri_set(pa.chunked_array(sets, pa.string()) if sets else None)


def minus(a: pa.Array, b: pa.Array) -> pa.Array:
    """The uris of `a` that are not in `b`."""
    return a.filter(pc.invert(pc.is_in(a, value_set=b))) if len(a) and len(b) else a


def within(a: pa.Array, b: pa.Array) -> pa.Array:
    """The uris of `a` that are in `b`."""
    return a.filter(pc.is_in(a, value_set=b)) if len(a) and len(b) else a.slice(0, 0)


def same(a: pa.Array | pa.ChunkedArray, b: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Row by row: equal values, or both null.

    Example:
        >>> same(pa.array(["x", None, None]), pa.array(["x", None, "y"])).to_pylist()
        [True, True, False]
    """
    return pc.fill_null(pc.equal(a, b), pc.and_(pc.is_null(a), pc.is_null(b)))


class SortedUris:
    """A `uri_set` seen as a sorted sequence of `str` for `bisect`: an item is one Python string
    made on demand, a slice stays an Arrow array.

    Example:
        >>> import bisect
        >>> uris = SortedUris(uri_set(["a", "c", "e"]))
        >>> bisect.bisect_left(uris, "d"), uris[1:].to_pylist()
        (2, ['c', 'e'])
    """

    def __init__(self, uris: pa.Array):
        self.uris = uris

    def __len__(self) -> int:
        return len(self.uris)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> pa.Array: ...

    def __getitem__(self, index: int | slice) -> str | pa.Array:
        if isinstance(index, slice):
            start, stop, _ = index.indices(len(self.uris))
            return self.uris.slice(start, max(0, stop - start))
        return self.uris[index].as_py()
