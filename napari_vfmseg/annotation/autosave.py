"""Committed objects survive a crash: a copy of them per scan, written atomically, offered back.

Where: ``<napari-vfmseg home>/autosave/<scan key>.npz`` (the home folder is ``$VFMSEG_HOME`` or
the user cache folder, see :func:`napari_vfmseg.models.paths.vfmseg_home`). The scan key is a
digest of the scan's pixels (:func:`scan_key`), so the same scan finds its objects again however
it is opened (another path, a copy, a DICOM folder or its NIfTI export with the same voxels).

An entry holds the label map cropped to the box around its objects (uint, compressed), where
that box lies, the full shape, and the object table (id, name, colour, visible) as JSON. It is
plain arrays (read with ``allow_pickle=False``) and is rewritten whole on every save through a
temporary file and a rename (:func:`napari_vfmseg.io.atomic.write_bytes_atomic`), so a crash
during a save leaves the previous copy. These files hold data derived from patient images.
Qt-free and napari-free.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.annotation.objects import ObjectRecord
from napari_vfmseg.io.atomic import write_bytes_atomic

__all__ = ["AUTOSAVE_FORMAT", "AutosaveEntry", "AutosaveStore", "autosave_folder", "scan_key", "restore_into"]

AUTOSAVE_FORMAT = "napari-vfmseg-autosave-1"


def autosave_folder() -> Path:
    """``<napari-vfmseg home>/autosave`` (not created here)."""
    from napari_vfmseg.models.paths import vfmseg_home

    return vfmseg_home() / "autosave"


def scan_key(image: np.ndarray) -> str:
    """Content key (24 hex characters) of a scan's pixels, any shape and dtype: same pixels, same key."""
    array = np.ascontiguousarray(np.asarray(image))
    digest = hashlib.blake2b(f"{array.shape}|{array.dtype.str}".encode(), digest_size=12)
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


@dataclass
class AutosaveEntry:
    """What an autosave holds: ``labels`` (the full label map, the scan's array shape), the object
    ``records``, when it was ``saved`` (UTC ISO) and free-form ``meta`` (e.g. the image's name)."""

    labels: np.ndarray
    records: list[ObjectRecord]
    saved: str
    meta: dict = field(default_factory=dict)

    @property
    def object_count(self) -> int:
        return len(self.records)


class AutosaveStore:
    """The autosaves in ``folder`` (default :func:`autosave_folder`), one file per scan key.

    Safe to call from several threads: a save of an older snapshot (lower ``sequence``) never
    overwrites a newer one.
    """

    def __init__(self, folder: Optional[str | Path] = None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else autosave_folder()
        self._lock = threading.Lock()              # guards _written and the file writes
        self._written: dict[str, int] = {}         # scan key → sequence number of the snapshot on disk

    def path(self, key: str) -> Path:
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"invalid autosave key {key!r} (hex digits from scan_key)")
        return self.folder / f"{key}.npz"

    def save(self, key: str, labels: np.ndarray, records: Sequence[ObjectRecord], meta: Optional[dict] = None,
             sequence: int = 0) -> Optional[Path]:
        """Write the label map (any shape, unsigned ints) and its object records for scan ``key``.

        No objects: the entry is removed instead (nothing to restore). Returns the path written,
        or None when nothing was written (no objects, or a newer snapshot is on disk already).
        """
        labels = np.asarray(labels)
        nonzero = np.nonzero(labels)
        if nonzero[0].size == 0 or not records:
            self.discard(key)
            return None
        low = [int(axis.min()) for axis in nonzero]
        high = [int(axis.max()) + 1 for axis in nonzero]
        crop = labels[tuple(slice(a, b) for a, b in zip(low, high))]
        document = {
            "format": AUTOSAVE_FORMAT,
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "shape": list(labels.shape),
            "origin": low,
            "records": [{"id": r.id, "name": r.name, "colour": r.colour, "visible": bool(r.visible)} for r in records],
            "meta": dict(meta or {}),
        }
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=np.ascontiguousarray(crop), document=np.array(json.dumps(document)))
        with self._lock:
            if self._written.get(key, -1) > sequence:
                return None
            path = write_bytes_atomic(self.path(key), buffer.getvalue(), fsync=True)
            self._written[key] = sequence
        return path

    def load(self, key: str) -> Optional[AutosaveEntry]:
        """The entry of scan ``key``, or None when there is none. ValueError naming the file when it
        cannot be read (the file is left in place for inspection)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                document = json.loads(str(data["document"]))
                crop = np.array(data["labels"])
            if document.get("format") != AUTOSAVE_FORMAT:
                raise ValueError(f"not a napari-vfmseg autosave (format {document.get('format')!r})")
            labels = np.zeros(tuple(document["shape"]), dtype=crop.dtype)
            origin = document["origin"]
            labels[tuple(slice(a, a + n) for a, n in zip(origin, crop.shape))] = crop
            records = [ObjectRecord(int(r["id"]), str(r["name"]), str(r["colour"]), visible=bool(r.get("visible", True)))
                       for r in document["records"]]
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: the autosaved objects cannot be read ({exc})") from None
        return AutosaveEntry(labels, records, str(document.get("saved", "")), dict(document.get("meta", {})))

    def discard(self, key: str) -> None:
        """Forget scan ``key``'s entry (no error when there is none)."""
        with self._lock:
            self.path(key).unlink(missing_ok=True)


def restore_into(session, entry: AutosaveEntry):
    """Put ``entry``'s objects into ``session`` (an :class:`~napari_vfmseg.annotation.session.AnnotationSession`)
    as one undoable edit: its label map replaces the session's, its records (names, colours,
    visibility) replace the table. Returns the edit, or None when nothing changes. ValueError when
    the entry's label map does not have the session's shape."""
    from napari_vfmseg.annotation.history import LabelEdit, _bounding_region

    labels = session.labels
    if entry.labels.shape != labels.shape:
        raise ValueError(f"autosaved objects have shape {entry.labels.shape}, the image has {labels.shape}")
    if int(entry.labels.max(initial=0)) > np.iinfo(labels.dtype).max:
        raise ValueError(f"autosaved object ids exceed what the labels layer ({labels.dtype}) holds")
    before = session.table.snapshot()
    changed = entry.labels != labels
    if not changed.any() and {r.id for r in before} == {r.id for r in entry.records}:
        return None
    edit = None
    if changed.any():
        region = _bounding_region(changed)
        mask = changed[region]
        edit = LabelEdit(region, mask, labels[region][mask].copy(), entry.labels[region][mask].astype(labels.dtype),
                         "restore autosaved objects")
        edit.apply(labels)
    session.table.restore(entry.records)
    session.table.refresh(labels)
    if edit is not None:
        edit.table_before, edit.table_after = before, session.table.snapshot()
        session.history.push(edit)
    return edit
