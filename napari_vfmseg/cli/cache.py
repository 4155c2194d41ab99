"""``vfmseg cache``: where the embedding cache is, how big, and purging it (all, or one scan's entries).

The cache holds image embeddings derived from the scans segmented — data derived from patient
images. Only the folder and zarr-free metadata are read: no torch import, so it answers at once.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="show the embedding cache (location, size, limit) or purge it",
        description=(
            "The embedding cache keeps the image encoder's output for every plane segmented, keyed by "
            "content, so a scan opened again is not encoded again. It holds data derived from patient "
            "images. 'vfmseg cache' shows where it is and how big; 'vfmseg cache purge --all' empties "
            "it; 'vfmseg cache purge --scan FILE' removes the entries of one scan. Its size limit is "
            "VFMSEG_CACHE_MAX_BYTES (e.g. 8G; default 4G): least recently used entries go first."
        ),
    )
    parser.add_argument("action", nargs="?", default="show", choices=("show", "purge"),
                        help="show (default) or purge")
    parser.add_argument("--all", dest="purge_all", action="store_true", help="with purge: remove every entry")
    parser.add_argument("--scan", metavar="FILE", default=None,
                        help="with purge: remove the entries of this scan (any file or DICOM folder vfmseg reads)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache folder (default: the one the viewer uses, VFMSEG_HOME or the user cache folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def default_cache_dir():
    """The folder the viewer's disk cache uses: ``vfmseg_home()``."""
    from napari_vfmseg.models.paths import vfmseg_home

    return vfmseg_home()


def _scan_fingerprint(path: str) -> str:
    """The fingerprint the engine recorded for the scan at ``path`` (its pixel array as read)."""
    from napari_vfmseg.engine.cache import scan_fingerprint
    from napari_vfmseg.io import read_volume

    return scan_fingerprint(read_volume(path).array)


def _size(value: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import UserError
    from napari_vfmseg.engine import cache_folder

    root = args.cache_dir or default_cache_dir()
    if args.action == "show" and (args.purge_all or args.scan):
        raise UserError("--all and --scan go with 'vfmseg cache purge'")
    result: dict = {}
    if args.action == "purge":
        if args.purge_all == bool(args.scan):
            raise UserError("purge needs exactly one of --all (every entry) or --scan FILE (one scan's entries)")
        fingerprint = _scan_fingerprint(args.scan) if args.scan else None
        removed, freed = cache_folder.purge(root, fingerprint)
        result["purged"] = {"entries": removed, "bytes": freed, "scan": args.scan, "scan_fingerprint": fingerprint}
    result.update(cache_folder.summary(root))
    if args.json:
        print(json.dumps(result))
        return 0
    if "purged" in result:
        what = f"of {args.scan}" if args.scan else "(all)"
        print(f"purged {result['purged']['entries']} entries {what}, {_size(result['purged']['bytes'])} freed")
    print(f"embedding cache  {result['location']}")
    print(f"  holds          {result['contents']}")
    print(f"  entries        {result['entries']} from {result['scans']} scan(s)")
    print(f"  size           {_size(result['bytes'])} of {_size(result['max_bytes'])} "
          f"(limit: VFMSEG_CACHE_MAX_BYTES; least recently used entries go first)")
    print(f"  damaged found  {result['damaged_entries']} (deleted and recomputed)")
    return 0
