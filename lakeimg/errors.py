"""Typed errors of lakeimg. Every error carries its fields and pickles across processes."""

from __future__ import annotations

import enum


class LakeImgError(Exception):
    """Base class of every error lakeimg raises on purpose; keyword `fields` become attributes.

    Example:
        >>> LakeImgError("no lake at /x", lake="/x").lake
        '/x'
    """

    def __init__(self, text: str = "", /, **fields):
        super().__init__(text)
        self.__dict__.update(fields)

    def __reduce__(self):
        # Keyword fields survive pickling through process pools and Spark workers (dlt's habit).
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls, args, state):
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ErrorClass(enum.StrEnum):
    """The reject codes: `error_class` of every rejects table (stable: users filter on them).

    Example:
        >>> ErrorClass("timeout").transient, ErrorClass.CORRUPT == "corrupt"
        (True, True)
    """

    EMPTY = "empty"
    TRUNCATED = "truncated"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    EMPTY_IMAGE = "empty_image"  # a header of 0 x N pixels: a valid file with no image in it
    NO_PIXEL_DATA = "no_pixel_data"  # a DICOM without pixels (DICOMDIR, structured report, ...)
    CORRUPT = "corrupt"
    TOO_LARGE = "too_large"
    UNREADABLE = "unreadable"
    TIMEOUT = "timeout"
    DECODER_CRASH = "decoder_crash"
    NOT_REGULAR_FILE = "not_regular_file"
    BROKEN_SYMLINK = "broken_symlink"
    SYMLINK_LOOP = "symlink_loop"
    TILED_SOURCE = "tiled_source"
    OP_FAILED = "op_failed"
    ENCODE_FAILED = "encode_failed"
    SKIPPED = "skipped"  # a tiling task stopped because another task of its file failed

    @property
    def transient(self) -> bool:
        """Says nothing about the file (a killed worker, a read that failed this time): read again."""
        return self in (ErrorClass.TIMEOUT, ErrorClass.DECODER_CRASH, ErrorClass.UNREADABLE)


class ImageDecodeError(LakeImgError):
    """A file could not be read as an image; `error_class` is a short stable code.

    Example:
        >>> ImageDecodeError("file:///x.jpg", "truncated", "image file is truncated").error_class
        'truncated'
    """

    def __init__(self, uri: str, error_class: str, message: str):
        super().__init__(f"{uri}: {error_class}: {message}", uri=uri, error_class=error_class, message=message)


class NotFoundError(LakeImgError):
    """Something to read is not there (CLI exit code 5): a training set, an image in a table.

    Example:
        >>> NotFoundError("no training set named 'x' in lake /l", name="x").name
        'x'
    """


class TableNotFoundError(NotFoundError):
    """The named table does not exist in the lake (or not at the requested version); `available`,
    when given, lists the tables that do exist (so the message names them).

    Example:
        >>> str(TableNotFoundError("imgaes", "/lake", available=["images", "lakeimg_runs"]))
        "table 'imgaes' not found in lake /lake (tables: images, lakeimg_runs)"
    """

    def __init__(self, table: str, lake: str, *, available: list[str] | None = None):
        listed = "" if available is None else f" (tables: {', '.join(available) or 'none'})"
        super().__init__(f"table {table!r} not found in lake {lake}{listed}", table=table, lake=lake, available=available)


class ConcurrentWriteError(LakeImgError):
    """Another writer kept winning the Delta commit race after bounded retries."""

    def __init__(self, table: str, attempts: int, cause: str):
        super().__init__(f"{table}: gave up after {attempts} conflicting commits: {cause}",
                         table=table, attempts=attempts, cause=cause)


class SourceNotFoundError(LakeImgError):
    """An ingest source (file, folder or glob) matched nothing that exists."""

    def __init__(self, source: str):
        super().__init__(f"source not found: {source}", source=source)


class LakeNotWritableError(LakeImgError):
    """The lake's location cannot be created or written."""

    def __init__(self, lake: str, reason: str):
        super().__init__(f"lake {lake} is not writable: {reason}", lake=lake, reason=reason)


class SpecError(LakeImgError):
    """A job spec or option is invalid."""


class InvalidNameError(SpecError):
    """A table, training-set or split name breaks the naming rule (lakeimg.tables) or leaves the lake.

    Example:
        >>> InvalidNameError("target table", "../x", "a table's path must stay inside the lake").name
        '../x'
    """

    def __init__(self, kind: str, name: str, reason: str):
        super().__init__(f"{kind} name {name!r}: {reason}", kind=kind, name=name, reason=reason)


class TableRefError(SpecError):
    """A table reference is not `TABLE`, `TABLE@VERSION` or `TABLE@ISO-TIMESTAMP`.

    Example:
        >>> TableRefError("images@x", "after @ give a version number or an ISO timestamp").ref
        'images@x'
    """

    def __init__(self, ref: str, reason: str):
        super().__init__(f"table reference {ref!r}: {reason}", ref=ref, reason=reason)


class OutputExistsError(SpecError):
    """An export would overwrite files that are already there (`--overwrite` allows it).

    Example:
        >>> OutputExistsError("/out", ["/out/a.png"]).files
        ['/out/a.png']
    """

    def __init__(self, out: str, files: list[str]):
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        super().__init__(f"export to {out} would overwrite {len(files)} existing files ({shown}); "
                         "pass --overwrite (overwrite=True) or choose an empty folder", out=out, files=files)


class SqlError(SpecError):
    """A query or stored `where` was refused: more than one statement, not read-only, or it
    reaches outside the lake's tables (files, extensions, settings).

    Example:
        >>> SqlError("COPY (SELECT 1) TO 'x'", "only one read-only query (SELECT, WITH, ...) runs").reason
        'only one read-only query (SELECT, WITH, ...) runs'
    """

    def __init__(self, sql: str, reason: str):
        super().__init__(f"SQL refused: {reason}", sql=sql, reason=reason)


class LakeDamagedError(LakeImgError):
    """Stored data of a table is damaged: a data file (or log entry) is missing, unreadable or
    holds bytes other than those committed. `file` names the damaged file when one is known.

    Example:
        >>> LakeDamagedError("images", "Couldn't deserialize thrift", version=3, file="/lake/images/part-1.parquet").file
        '/lake/images/part-1.parquet'
    """

    def __init__(self, table: str, reason: str, *, version: int | None = None, file: str | None = None):
        where = table if version is None else f"{table}@{version}"
        super().__init__(f"damaged lake: {where}: " + (f"data file {file}: " if file else "") + reason,
                         table=table, version=version, file=file, reason=reason)


class ContentMismatchError(LakeDamagedError):
    """A row's stored image bytes do not hash to its recorded `content_sha256` (silent damage
    that Parquet's own checks let through).

    Example:
        >>> ContentMismatchError("images", 2, "file:///a.jpg", "ab" * 32, "cd" * 32).uri
        'file:///a.jpg'
    """

    def __init__(self, table: str, version: int | None, uri: str, expected: str, actual: str, *, file: str | None = None):
        LakeImgError.__init__(
            self,
            f"damaged lake: {table}@{version}: content of {uri} does not match its content_sha256 "
            f"(recorded {expected[:16]}..., stored bytes hash to {actual[:16]}...); run `lakeimg verify {table}@{version}`",
            table=table, version=version, uri=uri, expected=expected, actual=actual, file=file, reason="content_mismatch",
        )


class UriError(LakeImgError):
    """A URI that does not name a local file lakeimg can read (another scheme or host, a NUL byte).

    Example:
        >>> UriError("s3://b/a.jpg", "not a local file").reason
        'not a local file'
    """

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{uri}: {reason}", uri=uri, reason=reason)


class PartialRunError(LakeImgError):
    """A run failed after some of its commits landed. They stay: each is correct on its own,
    the runs table holds the run as `failed`, and the next run completes the work.

    Example:
        >>> PartialRunError("r1", {"images_rejects": 3}, OSError(28, "No space left on device")).landed
        {'images_rejects': 3}
    """

    def __init__(self, run_id: str, landed: dict[str, int], cause: BaseException):
        tables = ", ".join(f"{t}@{v}" for t, v in landed.items())
        super().__init__(
            f"run {run_id} stopped after committing {tables}: {type(cause).__name__}: {cause}; "
            "those commits stay and the next run completes the work",
            run_id=run_id, landed=landed, cause=f"{type(cause).__name__}: {cause}",
        )


class PoolError(LakeImgError):
    """The worker pool failed, not any one input (workers could not start, the kernel could not
    be loaded, the pool broke): the run fails and commits nothing.

    Example:
        >>> str(PoolError("All workers expired"))
        'All workers expired'
    """


class LakeNotFoundError(LakeImgError):
    """No lake at `lake` (only jobs that create a lake, ingest and demo, make one).

    Example:
        >>> LakeNotFoundError("/lakes/mian").lake
        '/lakes/mian'
    """

    def __init__(self, lake: str):
        super().__init__(f"no lake at {lake}", lake=lake)


class VersionNotFoundError(TableNotFoundError):
    """The table exists, but not at the requested version or time (before its first version,
    or a version whose log entry or files are gone).

    Example:
        >>> VersionNotFoundError("images", "2000-01-01", "/lake", "before the table's first version").version
        '2000-01-01'
    """

    def __init__(self, table: str, version: object, lake: str, reason: str):
        LakeImgError.__init__(self, f"{table}@{version}: {reason} (lake {lake})",
                              table=table, version=version, lake=lake, reason=reason)


class StorageAccessError(LakeImgError):
    """An object store refused the credentials (wrong key, secret or token, or no permission).

    Example:
        >>> StorageAccessError("s3://b/lake", "the store refused the credentials").url
        's3://b/lake'
    """

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: access denied: {reason}", url=url, reason=reason)


class StorageUnreachableError(LakeImgError):
    """An object store's endpoint could not be reached (wrong endpoint, network down).

    Example:
        >>> StorageUnreachableError("s3://b/lake", "cannot reach http://127.0.0.1:9").reason
        'cannot reach http://127.0.0.1:9'
    """

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: storage unreachable: {reason}", url=url, reason=reason)


class BucketNotFoundError(LakeNotFoundError):
    """The bucket (or container) a URL names does not exist; lakeimg never creates buckets.

    Example:
        >>> BucketNotFoundError("s3://nobucket/lake", "nobucket").bucket
        'nobucket'
    """

    def __init__(self, url: str, bucket: str, *, what: str = "lake"):
        # Azure calls its buckets containers.
        word = "container" if url.partition("://")[0].lower() in ("az", "azure", "abfs", "abfss", "adl") else "bucket"
        LakeImgError.__init__(self, f"no {word} {bucket!r} for the {what} at {url} (lakeimg does not create {word}s)",
                              lake=url, url=url, bucket=bucket, what=what)
