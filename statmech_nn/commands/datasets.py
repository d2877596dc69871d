"""``statmech-nn datasets``: what datasets exist, whether they are on disk, and how to get them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from statmech_nn import data
from statmech_nn.data.splits import dataset_size, split_sizes

DEFAULT_VAL_FRACTION = 0.1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="list the datasets, whether they are present, and how to get them",
        description=(
            "List every dataset that training accepts: number of classes, default image size, "
            "train / val / test sizes (val carved as 10% of train unless the dataset has an "
            "official one), whether it is present under the data root, and how to get it. "
            "With --download NAME, fetch a torchvision dataset into the data root first."
        ),
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"directory holding the datasets (default: ${data.DATA_ENV}, else ./data)",
    )
    parser.add_argument(
        "--download",
        metavar="NAME",
        action="append",
        default=[],
        help="download this dataset into the data root (repeatable): cifar10, cifar100, flowers102",
    )
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=run)


def describe(root: Any = None) -> list[dict[str, Any]]:
    """One JSON-able row per dataset, with default options and validation fraction."""
    where = data.data_root(root)
    rows = []
    for name in data.names():
        entry = data.spec(name)
        pool, official_val, test = entry.sizes(entry.options)
        if official_val is None:
            train, val = split_sizes(pool, DEFAULT_VAL_FRACTION)
        else:
            train, val = pool, official_val
        present = entry.present(where)
        rows.append(
            {
                "name": name,
                "summary": entry.summary,
                "classes": entry.classes(entry.options),
                "img_size": entry.img_size,
                "sizes": {"train": train, "val": val, "test": test},
                "present": present,
                "location": str(where) if entry.on_disk else None,
                "how_to_get": "present" if entry.on_disk and present else entry.how_to_get,
                "options": dict(entry.options),
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    for name in args.download:
        if not data.spec(name).on_disk:
            print(f"{name} needs no download ({data.spec(name).how_to_get})")
            continue
        splits = data.load(name, root=args.data_root, download=True)
        size = dataset_size(splits.train)
        print(f"{name}: ready in {data.data_root(args.data_root)} ({size} train)")
    rows = describe(args.data_root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"data root: {data.data_root(args.data_root).resolve()}")
    header = (
        f"{'name':<11} {'classes':>7} {'img':>4} {'train/val/test':>19}  {'present':<7}  how to get"
    )
    print(header)
    for row in rows:
        sizes = "/".join(str(row["sizes"][k]) for k in ("train", "val", "test"))
        present = "yes" if row["present"] else "no"
        print(
            f"{row['name']:<11} {row['classes']:>7} {row['img_size']:>4} {sizes:>19}  "
            f"{present:<7}  {row['how_to_get']}"
        )
    return 0
