"""`lakeimg lineage --lake LAKE TABLE[@VERSION] [--json]`: the chain back to ingest runs and sources."""

from __future__ import annotations

from lakeimg.commands._common import lake_of, print_json
from lakeimg.tables import parse_table_ref


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("lineage", help="which runs, specs and source folders made a table version or training set")
    p.add_argument("ref", metavar="TABLE[@VERSION]", help="table, table@7, table@2026-01-31T12:00:00, or trainset:NAME")
    p.add_argument("--lake", required=True, help="the lake's root folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    lake = lake_of(args)
    if args.ref.startswith("trainset:"):
        steps = lake.lineage(args.ref)
    else:
        ref = parse_table_ref(args.ref)
        steps = lake.lineage(ref.name, ref.version)
    if args.json:
        print_json({"ref": args.ref, "steps": steps})
        return 0
    for step in steps:
        indent = "  " * step.depth
        where = step.table if step.version is None else f"{step.table}@{step.version}"
        print(f"{indent}{where}  job={step.job}  run={step.run_id}{_status(step.status)}  lakeimg={step.code_version}  at={step.timestamp}")
        if step.spec_hash:
            print(f"{indent}  spec {step.spec_hash[:16]}: {step.spec}")
        elif step.job == "trainset":
            print(f"{indent}  spec: {step.spec}")
        for ingest in step.ingest_runs or []:
            print(f"{indent}  ingest run {ingest['run_id']}{_status(ingest['status'])} (version {ingest['version']}): {', '.join(ingest['sources'])}")
        for parent in step.inputs:
            print(f"{indent}  input {parent['table']}@{parent['version']}")
        if step.reproduced:
            found = step.reproduced
            what = ("the check could not run" if found["result"] == "failed"
                    else f"{found['differing']} of {found['rows']} rows differ")
            print(f"{indent}  reproduce {found['result']}: {what} (at {found['at']}, run {found['run_id']})")
    return 0


def _status(status: str | None) -> str:
    """A run's status when it is not plain success (a failed or killed run's commits)."""
    return "" if status in (None, "succeeded") else f" ({status})"
