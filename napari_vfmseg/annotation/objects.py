"""The committed objects: id, name, colour, size in voxels and millilitres, and their export.

Sizes come from the label array (``refresh``), so voxels painted or erased with napari's own tools
are counted too. Physical size uses the scan's spacing in mm: a 3D voxel is
``prod(spacing) / 1000`` mL; a 2D pixel ``prod(spacing)`` mm².
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.io.atomic import write_text_atomic

__all__ = ["ObjectRecord", "ObjectTable", "colour_for", "PALETTE"]

# Distinct, colour-blind-aware hues (hex RGB), assigned by object id.
PALETTE: tuple[str, ...] = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000", "#ffd8b1",
)


def colour_for(label_id: int) -> str:
    """The palette colour (``#rrggbb``) of object ``label_id`` (ids ≥ 1)."""
    return PALETTE[(int(label_id) - 1) % len(PALETTE)]


@dataclass
class ObjectRecord:
    """One object of the label map."""

    id: int
    name: str
    colour: str
    voxels: int = 0
    visible: bool = True


class ObjectTable:
    """Objects keyed by label id, with the physical size of a voxel (``spacing`` in mm, array order)."""

    def __init__(self, spacing: Sequence[float]) -> None:
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.spacing) not in (2, 3) or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be 2 or 3 positive numbers (mm); got {spacing}")
        self._records: dict[int, ObjectRecord] = {}

    # ---------------------------------------------------------------------------- access

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def voxel_ml(self) -> Optional[float]:
        """Volume of one voxel in mL (None for a 2D image)."""
        return float(np.prod(self.spacing)) / 1000.0 if self.ndim == 3 else None

    @property
    def pixel_mm2(self) -> Optional[float]:
        """Area of one pixel in mm² (None for a 3D image)."""
        return float(np.prod(self.spacing)) if self.ndim == 2 else None

    def records(self) -> list[ObjectRecord]:
        """All objects, by increasing id."""
        return [self._records[k] for k in sorted(self._records)]

    def get(self, label_id: int) -> ObjectRecord:
        try:
            return self._records[int(label_id)]
        except KeyError:
            raise KeyError(f"no object with id {label_id}") from None

    def __contains__(self, label_id: object) -> bool:
        return label_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def ml(self, record: ObjectRecord) -> Optional[float]:
        """Physical volume of ``record`` in mL (None for 2D)."""
        return None if self.voxel_ml is None else record.voxels * self.voxel_ml

    def area_mm2(self, record: ObjectRecord) -> Optional[float]:
        """Physical area of ``record`` in mm² (None for 3D)."""
        return None if self.pixel_mm2 is None else record.voxels * self.pixel_mm2

    # ---------------------------------------------------------------------------- changes

    def next_id(self, labels: np.ndarray) -> int:
        """An id used neither by an object nor anywhere in ``labels``."""
        top = int(labels.max()) if labels.size else 0
        return max([top, *self._records]) + 1

    def add(self, label_id: int, name: Optional[str] = None, voxels: int = 0) -> ObjectRecord:
        label_id = int(label_id)
        if label_id <= 0:
            raise ValueError(f"object ids start at 1; got {label_id}")
        if label_id in self._records:
            raise ValueError(f"an object with id {label_id} already exists")
        record = ObjectRecord(label_id, name or f"object {label_id}", colour_for(label_id), int(voxels))
        self._records[label_id] = record
        return record

    def remove(self, label_id: int) -> ObjectRecord:
        return self._records.pop(self.get(label_id).id)

    def rename(self, label_id: int, name: str) -> ObjectRecord:
        text = str(name).strip()
        if not text:
            raise ValueError("an object name cannot be empty")
        record = self.get(label_id)
        record.name = text
        return record

    def set_visible(self, label_id: int, visible: bool) -> ObjectRecord:
        record = self.get(label_id)
        record.visible = bool(visible)
        return record

    def refresh(self, labels: np.ndarray) -> list[int]:
        """Recount voxels from ``labels``; ids found there without a record get one. Returns new ids."""
        values = np.asarray(labels)
        if values.size == 0:
            counts: dict[int, int] = {}
        elif int(values.max()) <= 1_000_000:
            bins = np.bincount(values.ravel().astype(np.int64, copy=False))
            counts = {int(i): int(n) for i, n in enumerate(bins) if i > 0 and n > 0}
        else:
            ids, numbers = np.unique(values, return_counts=True)
            counts = {int(i): int(n) for i, n in zip(ids, numbers) if i > 0}
        for record in self._records.values():
            record.voxels = counts.get(record.id, 0)
        new = [i for i in sorted(counts) if i not in self._records]
        for label_id in new:
            self.add(label_id, voxels=counts[label_id])
        return new

    def snapshot(self) -> list[ObjectRecord]:
        """Copies of every record (for undo)."""
        return [replace(r) for r in self.records()]

    def restore(self, snapshot: Sequence[ObjectRecord]) -> None:
        self._records = {r.id: replace(r) for r in snapshot}

    # ---------------------------------------------------------------------------- export

    def rows(self) -> list[dict]:
        """One dict per object: id, name, colour, voxels, ml (3D) or area_mm2 (2D)."""
        rows = []
        for record in self.records():
            row = {"id": record.id, "name": record.name, "colour": record.colour, "voxels": record.voxels}
            if self.ndim == 3:
                row["ml"] = round(self.ml(record), 4)
            else:
                row["area_mm2"] = round(self.area_mm2(record), 3)
            rows.append(row)
        return rows

    def to_csv(self) -> str:
        size_column = "ml" if self.ndim == 3 else "area_mm2"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["id", "name", "voxels", size_column, "colour"], lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow(row)
        return buffer.getvalue()

    def to_json(self, extra: Optional[dict] = None) -> str:
        document: dict = {"spacing_mm": list(self.spacing)}
        if self.ndim == 3:
            document["voxel_ml"] = self.voxel_ml
        else:
            document["pixel_mm2"] = self.pixel_mm2
        document["objects"] = self.rows()
        document.update(extra or {})
        return json.dumps(document, indent=2)

    def write_csv(self, path: os.PathLike | str) -> Path:
        """Write :meth:`to_csv` to ``path`` atomically (its folder must exist)."""
        return write_text_atomic(path, self.to_csv(), make_parents=False)

    def write_json(self, path: os.PathLike | str, extra: Optional[dict] = None) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (its folder must exist)."""
        return write_text_atomic(path, self.to_json(extra), make_parents=False)

    def __repr__(self) -> str:
        return f"ObjectTable({[asdict(r) for r in self.records()]})"
