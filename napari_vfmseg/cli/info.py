"""``vfmseg info``: versions, compute device, cache locations and the embedding cache's state
(entries, size, limit, damaged entries found)."""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import platform


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show versions, device and cache directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def collect_info() -> dict:
    """Versions of the stack, the device ``auto`` resolves to, CPU threads and the cache folder."""
    import torch

    from napari_vfmseg import __version__
    from napari_vfmseg.engine import cache_folder
    from napari_vfmseg.models.device import resolve_device
    from napari_vfmseg.models.paths import vfmseg_home

    versions = {"napari-vfmseg": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "segment-anything", "napari", "SimpleITK", "numpy", "zarr"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    device = resolve_device("auto")
    return {
        "versions": versions,
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "cache_dir": str(vfmseg_home()),
        "embedding_cache": cache_folder.summary(vfmseg_home()),
        "platform": platform.platform(),
    }


def run(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"napari-vfmseg {info['versions']['napari-vfmseg']} on {info['platform']}")
    for name, version in info["versions"].items():
        print(f"  {name:<16} {version or 'not installed'}")
    print(f"device (auto)    {info['device']}" + (f" ({info['cuda_device']})" if info["cuda_device"] else ""))
    print(f"CPU threads      {info['cpu_threads']}")
    print(f"cache directory  {info['cache_dir']}")
    cache = info["embedding_cache"]
    print(f"embedding cache  {cache['entries']} entries, {cache['bytes'] / 1024**2:.1f} MiB of "
          f"{cache['max_bytes'] / 1024**3:.1f} GiB, {cache['damaged_entries']} damaged found "
          f"(data derived from patient images; `vfmseg cache` to inspect or purge)")
    return 0
