"""Bounded undo/redo of edits to the committed label map (commits and deletions).

An edit is stored compactly: the bounding box of the voxels it changed, a boolean mask of them
inside that box, and their values before and after. Undo writes the "before" values back exactly
(voxels outside the edit, e.g. later brush corrections, are left alone); redo writes "after".
Each edit also carries the object table before and after, so the list follows undo and redo.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from napari_vfmseg.annotation.objects import ObjectRecord

__all__ = ["LabelEdit", "EditHistory"]


@dataclass
class LabelEdit:
    """Voxels ``mask`` inside ``region`` of the label map changed from ``before`` to ``after``."""

    region: tuple[slice, ...]
    mask: np.ndarray            # bool, the shape of labels[region]
    before: np.ndarray          # (n,) previous values of the masked voxels
    after: np.ndarray           # (n,) new values of the masked voxels
    description: str = ""
    table_before: list[ObjectRecord] = field(default_factory=list)
    table_after: list[ObjectRecord] = field(default_factory=list)

    @classmethod
    def assign(cls, labels: np.ndarray, where: np.ndarray, value: int, description: str = "") -> Optional["LabelEdit"]:
        """The edit that sets ``labels[where] = value``; None when nothing would change."""
        where = np.asarray(where, dtype=bool)
        if where.shape != labels.shape:
            raise ValueError(f"edit mask of shape {where.shape} does not match labels of shape {labels.shape}")
        changed = where & (labels != value)
        if not changed.any():
            return None
        region = _bounding_region(changed)
        mask = changed[region]
        before = labels[region][mask].copy()
        after = np.full(before.shape, value, dtype=labels.dtype)
        return cls(region, mask, before, after, description)

    @property
    def voxels(self) -> int:
        return int(self.mask.sum())

    def apply(self, labels: np.ndarray) -> None:
        """Write the new values (do / redo)."""
        view = labels[self.region]
        view[self.mask] = self.after

    def revert(self, labels: np.ndarray) -> None:
        """Write the previous values back exactly (undo)."""
        view = labels[self.region]
        view[self.mask] = self.before


class EditHistory:
    """Undo and redo stacks of :class:`LabelEdit`, keeping the ``max_items`` most recent edits."""

    def __init__(self, max_items: int = 32) -> None:
        if max_items < 1:
            raise ValueError(f"history size must be at least 1; got {max_items}")
        self.max_items = int(max_items)
        self._undo: deque[LabelEdit] = deque(maxlen=self.max_items)
        self._redo: list[LabelEdit] = []

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def __len__(self) -> int:
        return len(self._undo)

    def push(self, edit: LabelEdit) -> None:
        """Record an edit already applied to the labels; the redo stack is dropped."""
        self._undo.append(edit)
        self._redo.clear()

    def undo(self, labels: np.ndarray) -> Optional[LabelEdit]:
        """Revert the latest edit on ``labels``; returns it (None when there is nothing to undo)."""
        if not self._undo:
            return None
        edit = self._undo.pop()
        edit.revert(labels)
        self._redo.append(edit)
        return edit

    def redo(self, labels: np.ndarray) -> Optional[LabelEdit]:
        """Re-apply the latest undone edit; returns it (None when there is nothing to redo)."""
        if not self._redo:
            return None
        edit = self._redo.pop()
        edit.apply(labels)
        self._undo.append(edit)
        return edit

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()


def _bounding_region(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box of slices holding every True of ``mask`` (which must have one)."""
    region = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        region.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(region)
