"""Embedding cache: a byte-bounded LRU in memory and an optional content-keyed zarr store on disk.

A key is the sha256 of everything that determines an embedding: the encoder-input pixels (uint8,
after windowing and resizing), the preprocessing parameters (window, encoder size, grey/RGB, input
convention), the
model's cache key (base weights + any encoder-changing adapter) and the encoder numerics
(fp32/bf16/int8). The same slice therefore hits the cache in any session, whatever file or folder
it came from, and a different window, model or adapter never does.

Disk layout: ``<cache_dir>/embeddings-v1/<key[:2]>/<key>.zarr``, one zarr v3 group per embedding
holding a float16 array ``features`` (C, h, w) (zstd level 1) and attributes with the sizes needed by
post-processing and the sha256 of the stored float16 bytes. An entry is written to a temporary
folder beside its final place and renamed, so readers never see half an entry; an entry whose
checksum or metadata does not match is deleted, counted (``DiskCache.damaged_entries`` and the
folder's ``damaged.json``) and reported as a miss, never served. The folder is bounded: after a
write, least recently used entries are evicted beyond ``max_bytes`` (see
:mod:`~napari_vfmseg.engine.cache_folder`, which also purges all or one scan's entries). Each entry
records the fingerprint of the scan it came from (:func:`scan_fingerprint`).
``DiskCache.put_later`` writes on a background thread (the engine uses it, so that encoding never
waits for the disk); until the write has finished, the entry is served from the queue, rounded to
float16 as the disk would return it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from napari_vfmseg.engine import cache_folder
from napari_vfmseg.engine.background_writes import BackgroundWriter
from napari_vfmseg.io.atomic import atomic_path

__all__ = [
    "Embedding",
    "MemoryCache",
    "DiskCache",
    "embedding_key",
    "default_memory_bytes",
    "scan_fingerprint",
    "lazy_scan_fingerprint",
    "CACHE_FORMAT",
]

CACHE_FORMAT = "napari-vfmseg-embedding-v1"
_DISK_SUBDIR = cache_folder.SUBDIR


@dataclass(frozen=True)
class Embedding:
    """One image embedding and the sizes that post-processing needs.

    ``features``: float32 (C, h, w) on the CPU (C=256, h=w=64 for official SAM).
    ``original_size``: (rows, cols) of the slice; ``input_size``: (rows, cols) after resizing.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return int(self.features.numel() * self.features.element_size())


def embedding_key(
    pixels: np.ndarray,
    *,
    window: Optional[tuple[float, float]],
    encoder_size: int,
    model_key: str,
    numerics: str,
    preprocess: str = "sam",
) -> str:
    """sha256 hex key of an encoder input.

    ``pixels``: the resized uint8 image (rows, cols) grey or (rows, cols, 3) RGB; ``window``:
    (level, width) used to make it 8-bit, or None; ``model_key``: ``LoadedModel.cache_key``;
    ``numerics``: the encoder's numerics tag ("fp32", "bf16", "int8"); ``preprocess``: the input
    convention ("sam" or "medsam").
    """
    array = np.ascontiguousarray(pixels)
    header = {
        "format": CACHE_FORMAT,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "window": None if window is None else [float(window[0]), float(window[1])],
        "encoder_size": int(encoder_size),
        "preprocess": str(preprocess),
        "model": str(model_key),
        "numerics": str(numerics),
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def scan_fingerprint(array: np.ndarray) -> str:
    """32 hex digits identifying an image or volume by its dtype, shape and values, as given to the
    segmenter (``Volume.array`` of a file read with ``napari_vfmseg.io.read_volume``): the disk cache
    records it with every entry, so ``vfmseg cache purge --scan FILE`` finds that scan's entries."""
    data = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"dtype": data.dtype.str, "shape": list(data.shape)}).encode())
    digest.update(memoryview(data.reshape(-1).view(np.uint8)))
    return digest.hexdigest()


def lazy_scan_fingerprint(array: np.ndarray) -> Callable[[], str]:
    """A function returning :func:`scan_fingerprint` of ``array``, computed once on its first call
    (the disk writer's thread calls it, so setting an image costs no hashing)."""
    lock, value = threading.Lock(), []

    def fingerprint() -> str:
        with lock:
            if not value:
                value.append(scan_fingerprint(array))
            return value[0]

    return fingerprint


def default_memory_bytes() -> int:
    """Default memory budget: min(2 GiB, 10% of the machine's RAM); 1 GiB if RAM cannot be read."""
    two_gib = 2 * 1024**3
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or unsupported platform
        try:
            total = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 1024**3
    return max(64 * 1024**2, min(two_gib, total // 10))


class MemoryCache:
    """Thread-safe LRU of :class:`Embedding` bounded by the total bytes of their features."""

    def __init__(self, max_bytes: Optional[int] = None) -> None:
        self.max_bytes = int(default_memory_bytes() if max_bytes is None else max_bytes)
        if self.max_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0; got {max_bytes}")
        self._entries: "OrderedDict[str, Embedding]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[Embedding]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding``; least recently used entries go first. One larger than the budget is not kept."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if embedding.nbytes > self.max_bytes:
                return
            self._entries[key] = embedding
            self._bytes += embedding.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class DiskCache:
    """Content-keyed float16 embeddings in zarr v3 groups under ``root`` (see the module docstring).

    ``max_bytes``: size limit of the folder, bytes or a string such as ``"4G"`` (None:
    ``$VFMSEG_CACHE_MAX_BYTES``, else 4 GiB); least recently used entries are evicted beyond it.
    """

    def __init__(self, root: Union[str, os.PathLike], max_bytes: Optional[Union[int, str]] = None) -> None:
        self.root = Path(root).expanduser()
        self.folder = self.root / _DISK_SUBDIR
        self.max_bytes = cache_folder.configured_max_bytes(max_bytes)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create the embedding cache folder {self.folder}: {exc}") from exc
        self.corrupt_entries = 0  # entries found damaged by this instance, deleted and recomputed
        self.evicted_entries = 0  # entries this instance removed to stay within max_bytes
        self._lock = threading.Lock()  # guards the two counters above, _usage and _scans
        self._usage: Optional[int] = None  # running estimate of the folder's bytes (None: not measured yet)
        self._scans: dict[str, Callable[[], str]] = {}  # key queued for writing → its scan's fingerprint
        self._writes = BackgroundWriter(lambda key, embedding: self.put(key, embedding), self._write_failed,
                                        name="vfmseg-embedding-cache-writes")

    @property
    def damaged_entries(self) -> int:
        """Entries this instance found damaged (deleted and recomputed)."""
        return self.corrupt_entries

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.zarr"

    def __contains__(self, key: str) -> bool:
        return self._writes.pending(key) is not None or self.path(key).is_dir()

    def put_later(self, key: str, embedding: Embedding, scan: Optional[Callable[[], str]] = None) -> None:
        """Queue ``embedding`` for :meth:`put` on the background thread; returns at once (unless 8
        entries already wait, then when one is written). A failed write warns and is dropped.
        ``scan``: returns the fingerprint of the scan it came from (called on the writer thread)."""
        if scan is not None:
            with self._lock:
                self._scans[key] = scan
        self._writes.submit(key, embedding)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued entry is on disk; False if ``timeout`` seconds ran out first."""
        return self._writes.flush(timeout)

    @property
    def queued(self) -> int:
        """Entries waiting to be written."""
        return len(self._writes)

    def _write_failed(self, key: str, error: BaseException) -> None:
        warnings.warn(f"could not write embedding {key[:12]} to the cache in {self.folder}: {error}", stacklevel=2)

    def get(self, key: str) -> Optional[Embedding]:
        """The stored embedding as float32, or None when absent or damaged (a damaged entry is deleted)."""
        return self.lookup(key)[0]

    def lookup(self, key: str) -> tuple[Optional[Embedding], bool]:
        """(the stored embedding as float32 or None, whether the entry was found damaged). A damaged
        entry is deleted, counted in :attr:`damaged_entries` and in the folder's record, never served."""
        queued = self._writes.pending(key)
        if queued is not None:  # not on disk yet: what the disk will return
            features = queued.features.to(torch.float16).to(torch.float32)
            return Embedding(features, queued.original_size, queued.input_size), False
        path = self.path(key)
        if not path.is_dir():
            return None, False  # a miss: no zarr import (a quarter of a second) on the way to the encoder
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
            if attrs.get("format") != CACHE_FORMAT or attrs.get("key") != key:
                raise ValueError("metadata does not match the key")
            data = np.asarray(group["features"][...])
            if data.dtype != np.float16 or list(data.shape) != list(attrs["shape"]):
                raise ValueError(f"stored array {data.dtype} {data.shape} does not match its metadata")
            if hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest() != attrs["sha256"]:
                raise ValueError("checksum mismatch")
            original_size = tuple(int(v) for v in attrs["original_size"])
            input_size = tuple(int(v) for v in attrs["input_size"])
        except Exception as exc:  # any damage: unreadable metadata, truncated chunk, wrong checksum
            if not path.is_dir():
                return None, False  # evicted or purged while being read: a plain miss
            with self._lock:
                self.corrupt_entries += 1
            cache_folder.remove_entry(path)
            cache_folder.record_damaged(self.root, key, f"{type(exc).__name__}: {exc}"[:200])
            return None, True
        cache_folder.touch(path)  # least recently used goes first when the folder is full
        features = torch.from_numpy(data.astype(np.float32))
        return Embedding(features, original_size, input_size), False  # type: ignore[arg-type]

    def put(self, key: str, embedding: Embedding) -> int:
        """Write ``embedding`` as float16 atomically (a temporary folder beside it, renamed into place
        by :func:`~napari_vfmseg.io.atomic.atomic_path`). Returns bytes on disk."""
        import zarr
        from zarr.codecs import ZstdCodec

        final = self.path(key)
        with self._lock:
            scan = self._scans.pop(key, None)
        if final.is_dir():
            return self.entry_bytes(key)
        data = np.ascontiguousarray(embedding.features.detach().to("cpu", torch.float16).numpy())
        attrs = {
            "format": CACHE_FORMAT,
            "key": key,
            "shape": list(data.shape),
            "sha256": hashlib.sha256(data.tobytes()).hexdigest(),
            "original_size": [int(v) for v in embedding.original_size],
            "input_size": [int(v) for v in embedding.input_size],
            "scan": scan() if scan is not None else None,
        }
        try:
            with atomic_path(final, folder=True) as temporary:
                # attributes and data in one go each: every separate attribute update rewrites the metadata
                group = zarr.open_group(str(temporary), mode="w", attributes=attrs)
                group.create_array("features", data=data, chunks=data.shape, compressors=[ZstdCodec(level=1)])
        except OSError:
            if not final.is_dir():  # not a lost race with another writer of the same key
                raise
        written = self.entry_bytes(key)
        self._keep_within_limit(key, written)
        return written

    def _keep_within_limit(self, key: str, written: int) -> None:
        """Count ``written`` bytes; past ``max_bytes``, measure the folder and evict least recently
        used entries (never ``key``, just written) down to 90 % of the limit."""
        with self._lock:
            usage = self._usage
        if usage is None:  # first write of this instance: measure the folder once (it includes ``key``)
            usage = sum(entry.bytes for entry in cache_folder.entries(self.root))
        else:
            usage += written
        with self._lock:
            self._usage = usage
            over = usage > self.max_bytes
        if not over:
            return
        left, removed = cache_folder.evict(self.root, self.max_bytes, keep=[key])
        with self._lock:
            self._usage = left
            self.evicted_entries += removed

    def entry_bytes(self, key: str) -> int:
        """Bytes on disk of one entry (all its files), 0 if absent."""
        return cache_folder.entry_bytes(self.path(key))
