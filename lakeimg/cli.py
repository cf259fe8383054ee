"""The `lakeimg` command line: argument parsing, exit codes, one-line error messages.

Every failure is one line on stderr, `lakeimg: error: ...`, never a traceback, and exits with:

- 0 success (rejects are data, not failures)
- 1 any other error: the worker pool failed (PoolError), a run stopped between its commits
  (PartialRunError: what landed stays, the next run completes it), an unexpected error
- 2 bad arguments: options, names, table references, timestamps, specs, SQL, a region outside the image
- 3 a source is missing
- 4 the lake cannot be written: permissions, a read-only file system, a full disk or quota
- 5 something to read is missing (NotFoundError and LakeNotFoundError): no lake at the path
  (only `ingest` and `demo` create one), a table (the message lists the lake's tables), a table
  version (before the table's first version, or vacuumed: the message says which versions are
  still readable), a training set, an image in a table
- 6 `reproduce` found differences
- 7 `maintain` refused to vacuum files a pinned version needs
- 8 the lake is damaged (a data file missing or unreadable, a broken log entry, or stored bytes
  that do not match their content_sha256: LakeDamagedError, ContentMismatchError)
- 9 `verify` found problems
- 10 an object store refused the credentials (wrong key, secret or token; no permission)
- 11 an object store's endpoint cannot be reached (wrong `AWS_ENDPOINT_URL` / `AZURE_STORAGE_ENDPOINT`, network down)
  (a missing bucket is exit 5 for the lake and 3 for a source: lakeimg never creates buckets)
- 130 interrupted (Ctrl-C or SIGTERM): `lakeimg: interrupted`

With `--json`, a failure also prints one JSON object on stdout: `error`, `error_class`, `exit_code`.
Every command takes `--quiet`, `--verbose` and `--log-level`; `--lake` defaults to LAKEIMG_LAKE.

`lakeimg --debug COMMAND ...` (or the environment variable LAKEIMG_DEBUG=1) shows the traceback
instead of the one line. Messages never hold a secret of the storage options or environment
(`lakeimg.storage.redact`).

Every command that takes `--lake` also takes `--storage-option KEY=VALUE` (repeatable): object
store settings in delta-rs' spelling over the `AWS_*`/`AZURE_*`/`GOOGLE_*` environment variables.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import itertools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

from lakeimg._version import __version__
from lakeimg.commands import COMMAND_MODULES
from lakeimg.errors import (
    BucketNotFoundError,
    LakeDamagedError,
    LakeImgError,
    LakeNotFoundError,
    LakeNotWritableError,
    NotFoundError,
    SourceNotFoundError,
    SpecError,
    StorageAccessError,
    StorageUnreachableError,
    TableNotFoundError,
    VersionNotFoundError,
)
from lakeimg.lake import Lake
from lakeimg.storage import parse_storage_options, redact, storage_error

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOURCE, EXIT_LAKE, EXIT_TABLE = 0, 1, 2, 3, 4, 5
EXIT_DAMAGED, EXIT_VERIFY_FAILED = 8, 9
EXIT_STORAGE_ACCESS, EXIT_STORAGE_UNREACHABLE = 10, 11
EXIT_INTERRUPTED = 130
LAKE_ENV = "LAKEIMG_LAKE"  # the lake of every command run without --lake
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_CREATE_LAKE = ("ingest", "demo")  # the only commands that make a lake where there is none

# OSErrors that mean "this cannot be written here", whatever file they name.
_UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`lakeimg: error: ...`, exit 2) instead of usage + error;
    with `--json` on the command line, also the JSON error object on stdout."""

    json_errors = False

    def error(self, message: str):  # type: ignore[override]
        command = self.prog.removeprefix("lakeimg").strip()
        text = f"{command + ': ' if command else ''}{message} (see {self.prog} --help)"
        if _Parser.json_errors:
            print_error_json(text, "UsageError", EXIT_USAGE)
        self.exit(EXIT_USAGE, f"lakeimg: error: {text}\n")


def print_error_json(message: str, error_class: str, code: int) -> None:
    """A failure in `--json` mode: one JSON object on stdout (the one line stays on stderr).

    Example:
        >>> print_error_json("no lake at /x", "LakeNotFoundError", 5)
        {"error": "no lake at /x", "error_class": "LakeNotFoundError", "exit_code": 5}
    """
    print(json.dumps({"error": message, "error_class": error_class, "exit_code": code}), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lakeimg", description="Image collections as a Delta Lake lakehouse.")
    parser.add_argument("--version", action="version", version=f"lakeimg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also: LAKEIMG_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    _add_common_options(subparsers)
    return parser


def _add_common_options(subparsers) -> None:
    """Options every command shares, defined once: `--quiet`/`--verbose`/`--log-level` on all;
    on those that take `--lake`, `--storage-option` and the default lake from LAKEIMG_LAKE."""
    for sub in subparsers.choices.values():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            _add_common_options(action)
        if nested:
            continue
        noise = sub.add_mutually_exclusive_group()
        noise.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings and errors only")
        noise.add_argument("-v", "--verbose", action="store_true", help="info logs, and Spark's own output (Ivy, log4j)")
        sub.add_argument("--log-level", choices=_LOG_LEVELS, default=None, type=str.upper,
                         help="Python logging level on stderr (default WARNING; --verbose: INFO)")
        lake = next((a for a in sub._actions if a.dest == "lake"), None)
        if lake is not None:
            lake.required, lake.default = False, None
            lake.help = f"{lake.help} (default: the environment variable {LAKE_ENV})"
            sub.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                             help="object-store setting, e.g. AWS_ENDPOINT_URL=http://host:9000 (repeatable; "
                                  "over the AWS_*/AZURE_*/GOOGLE_* environment variables)")


def _configure_output(args) -> None:
    """Logging level and progress from --quiet / --verbose / --log-level (progress and logs go to stderr)."""
    level = args.log_level or ("INFO" if args.verbose else "WARNING")
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr, format="lakeimg: %(levelname)s: %(name)s: %(message)s")
    logging.getLogger().setLevel(getattr(logging, level))


def main(argv: list[str] | None = None) -> int:
    with _sigterm_as_interrupt():
        parser = build_parser()
        _Parser.json_errors = "--json" in (sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        if hasattr(args, "lake") and not args.lake:
            args.lake = os.environ.get(LAKE_ENV) or None
            if not args.lake:
                parser.error(f"{args.command}: the following arguments are required: --lake (or set {LAKE_ENV})")
        debug = args.debug or os.environ.get("LAKEIMG_DEBUG", "") not in ("", "0")
        if hasattr(args, "quiet"):
            _configure_output(args)
        try:
            if args.command not in _CREATE_LAKE and getattr(args, "lake", None):
                Lake.existing(args.lake, storage_options=parse_storage_options(getattr(args, "storage_option", None) or []))
            return int(args.handler(args) or 0)
        except KeyboardInterrupt:
            # No claim about the tables: a run stopped between commits keeps what landed and the
            # next run completes it; one stopped before its first commit changed nothing.
            print("lakeimg: interrupted", file=sys.stderr)
            if debug:
                raise
            return EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - every failure is one line and an exit code
            if debug:
                raise
            options = _storage_options_or_none(args)
            code, message = classify_error(exc, getattr(args, "lake", None), options)
            message = redact(message, options)
            if getattr(args, "json", False):
                print_error_json(message, type(exc).__name__, code)
            print(f"lakeimg: error: {message}", file=sys.stderr)
            return code


def _storage_options_or_none(args) -> dict[str, str] | None:
    try:
        return parse_storage_options(getattr(args, "storage_option", None) or [])
    except SpecError:
        return None


def classify_error(exc: BaseException, lake: str | None = None, storage_options: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit code, one-line message) of an error that reached the command line.

    Example:
        >>> classify_error(OSError(28, "No space left on device", "/lake/images/part-0.parquet"))
        (4, 'cannot write: No space left on device: /lake/images/part-0.parquet')
        >>> classify_error(OSError("Generic S3 error: Error performing GET ... error sending request"), "s3://b/lake")[0]
        11
    """
    if lake and not isinstance(exc, LakeImgError):
        typed = storage_error(exc, lake, storage_options)  # delta-rs' or pyarrow's texts of a store failure
        if typed is not None:
            exc = typed
    if isinstance(exc, StorageAccessError):
        return EXIT_STORAGE_ACCESS, _one_line(exc)
    if isinstance(exc, StorageUnreachableError):
        return EXIT_STORAGE_UNREACHABLE, _one_line(exc)
    if isinstance(exc, BucketNotFoundError) and exc.what == "source":
        return EXIT_SOURCE, _one_line(exc)
    if isinstance(exc, SpecError):
        return EXIT_USAGE, _one_line(exc)
    if isinstance(exc, SourceNotFoundError):
        return EXIT_SOURCE, _one_line(exc)
    if isinstance(exc, LakeNotWritableError):
        return EXIT_LAKE, _one_line(exc)
    if isinstance(exc, (LakeNotFoundError, NotFoundError)):
        return EXIT_TABLE, _one_line(_with_tables_listed(exc, lake, storage_options))
    if isinstance(exc, LakeDamagedError):
        vacuumed = _vacuumed_version(exc, lake)
        if vacuumed:
            return EXIT_TABLE, vacuumed
        return EXIT_DAMAGED, _one_line(exc)
    if isinstance(exc, LakeImgError):
        return EXIT_ERROR, _one_line(exc)
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        text = exc.strerror or str(exc)
        if exc.errno in _UNWRITABLE:
            return EXIT_LAKE, _one_line(f"cannot write: {text}{where}")
        return EXIT_ERROR, _one_line(f"{type(exc).__name__}: {text}{where}")
    text = str(exc)
    lowered = text.lower()
    if any(m in lowered for m in ("no space left on device", "read-only file system", "permission denied", "disk quota exceeded")):
        return EXIT_LAKE, _one_line(f"cannot write: {type(exc).__name__}: {text}")
    return EXIT_ERROR, _one_line(f"{type(exc).__name__}: {text} (run with --debug for the traceback)")


def _with_tables_listed(exc: BaseException, lake: str | None, storage_options: dict[str, str] | None) -> str:
    """A missing table's message naming the tables the lake has (when the error did not)."""
    if (not isinstance(exc, TableNotFoundError) or isinstance(exc, VersionNotFoundError) or not lake
            or getattr(exc, "available", None) is not None or "@" in str(exc.table)):
        return str(exc)
    try:
        names = [t.name for t in Lake(lake, storage_options=storage_options).inventory() if t.kind != "training set"]
    except Exception:  # noqa: BLE001 - the plain message is still right
        return str(exc)
    return str(TableNotFoundError(exc.table, exc.lake, available=names))


def _vacuumed_version(exc: LakeDamagedError, lake: str | None) -> str | None:
    """The message for a read of an old version whose files vacuum removed (exit 5, not damage),
    naming the versions that are still readable; None when this is not such a read."""
    if lake is None or exc.version is None or not exc.file or "://" in exc.file or os.path.exists(exc.file):
        return None
    try:
        opened = Lake(lake)
        if exc.version >= (opened.version(exc.table) or 0):
            return None  # the latest version lost a file: that is damage
        readable = opened.readable_versions(exc.table)
    except Exception:  # noqa: BLE001 - the plain damage message is still right
        return None
    return _one_line(
        f"{exc.table}@{exc.version} is no longer readable: its files were vacuumed; "
        f"readable versions of {exc.table}: {_ranges(readable) or 'none'}"
    )


def _ranges(versions: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (a run of consecutive versions keeps one difference to its index).

    Example:
        >>> _ranges([7, 1, 2, 3])
        '1-3, 7'
    """
    runs = [[v for _, v in run] for _, run in itertools.groupby(enumerate(sorted(versions)), lambda iv: iv[1] - iv[0])]
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _one_line(message: object) -> str:
    return " ".join("".join(ch if ch.isprintable() else " " for ch in str(message)).split())


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job, `kill PID`) ends the command like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
