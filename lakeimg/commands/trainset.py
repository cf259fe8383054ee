"""`lakeimg trainset create|show|list`: pinned training sets with deterministic splits."""

from __future__ import annotations

from lakeimg.commands._common import format_table, heartbeat, lake_of, print_json, show_progress
from lakeimg.tables import parse_table_ref


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("trainset", help="create, show and list pinned training sets")
    sub = p.add_subparsers(dest="trainset_command", metavar="ACTION")
    sub.required = True

    c = sub.add_parser("create", help="record an immutable training set on a table version")
    c.add_argument("--lake", required=True, help="the lake's root folder")
    c.add_argument("--name", required=True, help="training set name (unique, immutable)")
    c.add_argument("--table", required=True, metavar="TABLE[@VERSION]", help="table to pin (latest version when no @)")
    c.add_argument("--where", default=None, metavar="CONDITION",
                   help="one condition over the table's non-binary columns, e.g. \"label IN ('cats', 'dogs')\" (README: Names and filters)")
    c.add_argument("--split", default="train=0.8,val=0.1,test=0.1", help="split rule NAME=FRACTION,... (default train=0.8,val=0.1,test=0.1)")
    c.add_argument("--seed", type=int, required=True, help="seed of the split hash and the default shuffle")
    c.add_argument("--label-column", default="label", help="column holding labels ('' for none; default label)")
    c.add_argument("--stratify", action="store_true", help="exact per-label split quotas (see README: the trade-off)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(handler=run_create)

    s = sub.add_parser("show", help="a training set's record and counts per split and label")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--lake", required=True, help="the lake's root folder")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(handler=run_show)

    ls = sub.add_parser("list", help="every training set of the lake")
    ls.add_argument("--lake", required=True, help="the lake's root folder")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=run_list)


def run_create(args) -> int:
    ref = parse_table_ref(args.table)
    with heartbeat("creating training set", show_progress(args)):
        trainset = lake_of(args).create_training_set(args.name, ref.name, ref.version, splits=args.split, seed=args.seed,
                                                   where=args.where, label_column=args.label_column or None,
                                                   stratify=args.stratify)
    return _show(trainset, args.json)


def run_show(args) -> int:
    return _show(lake_of(args).training_set(args.name), args.json)


def _show(ts, as_json: bool) -> int:
    info = ts.describe()
    if as_json:
        print_json(info)
        return 0
    rule = ",".join(f"{s['name']}={s['fraction']:g}" for s in info["splits"])
    print(f"training set {info['name']}: {info['table']}@{info['version']}  split {rule}  seed {info['seed']}"
          f"{'  stratified' if info['stratify'] else ''}{'  where ' + info['where'] if info['where'] else ''}")
    print(f"created {info['created_at']} by run {info['run_id']} (lakeimg {info['code_version']})")
    rows = []
    for split, labels in info["by_split_and_label"].items():
        for label, n in sorted(labels.items()):
            rows.append({"split": split, "label": label, "index": info["label_index"].get(label, -1), "images": n})
        rows.append({"split": split, "label": "(all)", "index": "", "images": sum(labels.values())})
    print(format_table(rows))
    return 0


def run_list(args) -> int:
    records = lake_of(args).training_sets()
    if args.json:
        print_json({"trainsets": records})
        return 0
    rows = [
        {"name": r.name, "table": r.pinned, "seed": r.seed, "splits": ",".join(f"{n}={f:g}" for n, f in r.splits),
         "counts": ", ".join(f"{k} {v}" for k, v in r.counts.items()), "created": str(r.created_at)[:19]}
        for r in records
    ]
    print(format_table(rows))
    return 0
