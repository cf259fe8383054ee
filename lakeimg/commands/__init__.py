"""CLI subcommands: one module per command, each with `add_parser(subparsers)`.

A command's handler returns the exit status. `COMMAND_MODULES` lists them in --help order.
"""

from __future__ import annotations

_NAMES = "ingest demo tables info region transform export history lineage reproduce verify trainset maintain sql show serve"
COMMAND_MODULES = tuple(f"lakeimg.commands.{name}" for name in _NAMES.split())
