"""CLI subcommands: one module per command, each with `add_parser(subparsers)`.

A command's handler returns the exit status. `COMMAND_MODULES` lists them in --help order.
"""

from __future__ import annotations

COMMAND_MODULES = (
    "lakeimg.commands.ingest",
    "lakeimg.commands.demo",
    "lakeimg.commands.region",
    "lakeimg.commands.transform",
    "lakeimg.commands.export",
    "lakeimg.commands.history",
    "lakeimg.commands.lineage",
    "lakeimg.commands.reproduce",
    "lakeimg.commands.verify",
    "lakeimg.commands.trainset",
    "lakeimg.commands.maintain",
    "lakeimg.commands.sql",
    "lakeimg.commands.show",
)
