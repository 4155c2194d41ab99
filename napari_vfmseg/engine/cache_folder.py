"""The embedding cache's folder as a whole: its entries, their size, least-recently-used eviction,
purging (all, or one scan's entries) and the record of damaged entries.

The cache holds data derived from patient images (image embeddings, from which a coarse picture of
the scan can be recovered): it lives under the user's cache folder (``vfmseg cache`` shows where)
and is bounded in size. Layout under ``<root>``::

    embeddings-v1/<key[:2]>/<key>.zarr     one entry (see :mod:`napari_vfmseg.engine.cache`)
    embeddings-v1/damaged.json             how many entries were found damaged, the last one

An entry's folder's modification time is its last use (set when it is written and at every hit);
eviction removes the least recently used entries first. Removal renames an entry away before
deleting it, so a reader sees a whole entry or none. Nothing here imports torch or zarr: ``vfmseg
cache`` starts fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from napari_vfmseg.io.atomic import write_text_atomic

__all__ = [
    "SUBDIR",
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "parse_size",
    "configured_max_bytes",
    "CacheEntry",
    "entries",
    "entry_bytes",
    "touch",
    "remove_entry",
    "evict",
    "purge",
    "record_damaged",
    "damaged_record",
    "summary",
]

SUBDIR = "embeddings-v1"
DEFAULT_MAX_BYTES = 4 * 1024**3
MAX_BYTES_ENV = "VFMSEG_CACHE_MAX_BYTES"
_DAMAGED = "damaged.json"
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

PathLike = Union[str, os.PathLike]


def parse_size(text: Union[str, int, float]) -> int:
    """Bytes from ``4294967296``, ``"4G"``, ``"4 GiB"``, ``"500MB"`` or ``"0.5g"`` (binary units).
    ValueError for anything else or a negative size."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
        if match is None:
            raise ValueError(f"not a size: {text!r} (use bytes or a number with K, M, G or T, e.g. 4G)")
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if value < 0:
        raise ValueError(f"a size cannot be negative: {text!r}")
    return int(value)


def configured_max_bytes(max_bytes: Optional[Union[int, str]] = None) -> int:
    """The cache's size limit: ``max_bytes`` when given, else ``$VFMSEG_CACHE_MAX_BYTES``, else 4 GiB."""
    if max_bytes is not None:
        return parse_size(max_bytes)
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ValueError(f"environment variable {MAX_BYTES_ENV}: {exc}") from None


@dataclass(frozen=True)
class CacheEntry:
    """One entry on disk: ``bytes`` of all its files, ``last_used`` (seconds since the epoch)."""

    key: str
    path: Path
    bytes: int
    last_used: float

    def scan(self) -> Optional[str]:
        """The fingerprint of the scan the entry came from (None for entries that do not say)."""
        try:
            meta = json.loads((self.path / "zarr.json").read_text())
            return (meta.get("attributes") or {}).get("scan")
        except (OSError, ValueError):
            return None


def entry_bytes(path: Path) -> int:
    """Bytes of all files under one entry's folder (0 if it is gone)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def entries(root: PathLike) -> list[CacheEntry]:
    """Every complete entry under ``root``, least recently used first."""
    folder = Path(root).expanduser() / SUBDIR
    found = []
    if not folder.is_dir():
        return found
    for path in folder.glob("*/*.zarr"):
        try:
            used = path.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        found.append(CacheEntry(path.name[: -len(".zarr")], path, entry_bytes(path), used))
    found.sort(key=lambda entry: entry.last_used)
    return found


def touch(path: Path) -> None:
    """Mark an entry as used now (a read-only cache only loses the ordering)."""
    try:
        os.utime(path)
    except OSError:
        pass


def remove_entry(path: Path) -> bool:
    """Remove one entry: renamed away first (readers see it whole or not at all), then deleted."""
    doomed = path.parent / f".gone-{uuid.uuid4().hex}"
    try:
        os.replace(path, doomed)
    except OSError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def _remove(chosen: Iterable[CacheEntry]) -> tuple[int, int]:
    removed = freed = 0
    for entry in chosen:
        if remove_entry(entry.path):
            removed += 1
            freed += entry.bytes
    return removed, freed


def evict(root: PathLike, max_bytes: int, keep: Iterable[str] = (), target: float = 0.9) -> tuple[int, int]:
    """Remove least recently used entries until the cache holds at most ``target * max_bytes``
    (when it holds more than ``max_bytes``). ``keep``: keys never removed. Returns (bytes left,
    entries removed)."""
    found = entries(root)
    total = sum(entry.bytes for entry in found)
    if total <= max_bytes:
        return total, 0
    kept, chosen, goal = set(keep), [], int(target * max_bytes)
    for entry in found:
        if total <= goal:
            break
        if entry.key not in kept:
            chosen.append(entry)
            total -= entry.bytes
    removed, _ = _remove(chosen)
    return total, removed


def purge(root: PathLike, scan: Optional[str] = None) -> tuple[int, int]:
    """Remove every entry, or only those of the scan with fingerprint ``scan`` (see
    :func:`napari_vfmseg.engine.cache.scan_fingerprint`). Returns (entries removed, bytes freed)."""
    found = entries(root)
    if scan is not None:
        found = [entry for entry in found if entry.scan() == scan]
    result = _remove(found)
    if scan is None:
        for leftover in (Path(root).expanduser() / SUBDIR).glob("*/.*"):  # interrupted writes and removals
            shutil.rmtree(leftover, ignore_errors=True)
    return result


def record_damaged(root: PathLike, key: str, reason: str) -> None:
    """Count one damaged entry in ``damaged.json`` (best effort: a read-only folder records nothing)."""
    path = Path(root).expanduser() / SUBDIR / _DAMAGED
    record = damaged_record(root)
    record["count"] = int(record.get("count", 0)) + 1
    record["last"] = {"key": key, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        write_text_atomic(path, json.dumps(record))
    except OSError:
        pass


def damaged_record(root: PathLike) -> dict:
    """``{"count": n, "last": {"key", "reason", "time"}}`` of the damaged entries found so far
    (``{"count": 0}`` when none)."""
    try:
        record = json.loads((Path(root).expanduser() / SUBDIR / _DAMAGED).read_text())
        return record if isinstance(record, dict) else {"count": 0}
    except (OSError, ValueError):
        return {"count": 0}


def summary(root: PathLike, max_bytes: Optional[int] = None) -> dict:
    """A JSON-ready description of the cache under ``root``: location, entries, bytes, the limit,
    the scans it holds entries of, and the damaged entries found."""
    root = Path(root).expanduser()
    found = entries(root)
    scans = {entry.scan() for entry in found} - {None}
    return {
        "location": str(root / SUBDIR),
        "entries": len(found),
        "bytes": sum(entry.bytes for entry in found),
        "max_bytes": configured_max_bytes(max_bytes),
        "scans": len(scans),
        "damaged_entries": int(damaged_record(root).get("count", 0)),
        "contents": "image embeddings derived from the scans segmented (patient data)",
    }
