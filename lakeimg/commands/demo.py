"""`lakeimg demo DIR`: generate a mixed sample folder, ingest it, and print what landed."""

from __future__ import annotations

import os

from lakeimg.commands._common import format_table, print_json
from lakeimg.lake import Lake
from lakeimg.samples import write_sample_folder
from lakeimg.storage import printable, uri_to_path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="generate sample images in DIR/samples, ingest into DIR/lake, show the result")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    samples, lake_path = os.path.join(args.dir, "samples"), os.path.join(args.dir, "lake")
    write_sample_folder(samples)
    lake = Lake(lake_path)
    summary = lake.ingest([samples], label_from_path="parent", workers=args.workers)
    images = lake.read("images", columns=["uri", "format", "width", "height", "channels", "dtype", "pages", "label"]).sort_by("uri").to_pylist()
    rejects = lake.read("images_rejects", columns=["uri", "error_class", "error_message"]).sort_by("uri").to_pylist()
    if args.json:
        print_json({"summary": summary.to_dict(), "images": images, "rejects": rejects})
        return 0
    for row in images + rejects:
        row["uri"] = printable(os.path.relpath(uri_to_path(row["uri"]), samples))
    print(f"ingested {samples} into {lake_path}\n")
    print(format_table(images))
    print(f"\nrejects ({len(rejects)}):")
    print(format_table(rejects))
    print(
        f"\n{summary.added} added, {summary.rejected} rejected in {summary.seconds:.1f} s; "
        f"try: lakeimg ingest {samples} --lake {lake_path}   (a re-run changes nothing)"
    )
    return 0
