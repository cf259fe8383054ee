"""The `lakeimg` command line: argument parsing, exit codes, one-line error messages.

Exit codes: 0 success (rejects are data, not failures); 2 bad arguments; 3 a source is missing;
4 the lake cannot be written; 5 a table is missing; 6 `reproduce` found differences; 7 `maintain`
refused to vacuum files a pinned version needs; 8 the lake is damaged (a data file missing or
unreadable, or stored bytes that do not match their content_sha256: LakeDamagedError,
ContentMismatchError); 9 `verify` found problems; 1 any other error.

Example:
    >>> main(["--version"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lakeimg._version import __version__
from lakeimg.commands import COMMAND_MODULES
from lakeimg.errors import (
    LakeDamagedError,
    LakeImgError,
    LakeNotWritableError,
    SourceNotFoundError,
    SpecError,
    TableNotFoundError,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOURCE, EXIT_LAKE, EXIT_TABLE = 0, 1, 2, 3, 4, 5
EXIT_DAMAGED, EXIT_VERIFY_FAILED = 8, 9


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakeimg", description="Image collections as a Delta Lake lakehouse.")
    parser.add_argument("--version", action="version", version=f"lakeimg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SpecError as exc:
        return _fail(exc, EXIT_USAGE)
    except SourceNotFoundError as exc:
        return _fail(exc, EXIT_SOURCE)
    except LakeNotWritableError as exc:
        return _fail(exc, EXIT_LAKE)
    except TableNotFoundError as exc:
        return _fail(exc, EXIT_TABLE)
    except LakeDamagedError as exc:
        return _fail(exc, EXIT_DAMAGED)
    except LakeImgError as exc:
        return _fail(exc, EXIT_ERROR)
    except KeyboardInterrupt:
        print("lakeimg: interrupted; tables are left at their previous versions", file=sys.stderr)
        return 130


def _fail(exc: Exception, code: int) -> int:
    print(f"lakeimg: error: {exc}", file=sys.stderr)
    return code


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
