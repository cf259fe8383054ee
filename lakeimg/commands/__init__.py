"""CLI subcommands: one module per command, each with `add_parser(subparsers)`.

A command's handler returns the exit status. `COMMAND_MODULES` lists them in --help order.
"""

from __future__ import annotations

COMMAND_MODULES = (
    "lakeimg.commands.ingest",
    "lakeimg.commands.demo",
)
