"""``vfmseg models``: list the registry (table or JSON) and fetch weights ahead of time."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the available models and whether their weights are on this machine",
        description=(
            "List the SAM-family models napari-vfmseg knows, with licence, download size and "
            "whether the weights are already in the local cache (VFMSEG_HOME/weights). "
            "With --download NAME, fetch and verify that model's weights now."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the list as JSON (one array of records)")
    parser.add_argument(
        "--download",
        metavar="NAME",
        help="download and verify the weights of model NAME (sha256), then list",
    )
    parser.set_defaults(func=run)


def _size(size_bytes: int | None) -> str:
    if not size_bytes:
        return "?"
    return f"{size_bytes / 1e6:.0f} MB" if size_bytes < 1e9 else f"{size_bytes / 1e9:.2f} GB"


def _table(records: list[dict]) -> str:
    header = ("NAME", "ARCH", "SIZE", "PRESENT", "LICENCE", "DESCRIPTION")
    rows = [
        (r["name"], r["arch"], _size(r["size_bytes"]), "yes" if r["present"] else "no", r["licence"], r["description"])
        for r in records
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths)]
        lines.append("  ".join([*cells, str(row[-1])]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import UserError
    from napari_vfmseg.models import ensure_weights, get_spec, list_models, model_names, weights_dir

    if args.download:
        if args.download not in model_names():
            raise UserError(f"unknown model {args.download!r}; known models: {', '.join(model_names())}")
        path = ensure_weights(get_spec(args.download), progress=not args.json)
        if not args.json:
            print(f"{args.download}: weights verified at {path}")
    records = list_models()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(_table(records))
    print(f"\nweights folder: {weights_dir()}  (set VFMSEG_HOME to move it)")
    return 0
