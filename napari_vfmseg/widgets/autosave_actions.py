"""The annotator's autosave: committed objects are copied to disk shortly after every change and
offered back when the same scan is opened again.

:class:`AutosaveActions` is a part of :class:`~napari_vfmseg.widgets.annotator.AnnotatorWidget`.
The files and their place are :mod:`napari_vfmseg.annotation.autosave`'s; here: when to save (one
second after the objects last changed, written on a worker thread from a copy of the labels), and
the offer (a notification with a **Restore** button, and a line under the preview; scripts and
tests call :meth:`AutosaveActions.restore_autosave`). An offer is never accepted silently, and
nothing is saved over an offered copy before the user commits something on that scan.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from napari_vfmseg.annotation.autosave import AutosaveEntry, AutosaveStore, restore_into, scan_key
from napari_vfmseg.widgets.workers import run_in_background

__all__ = ["AutosaveActions", "AUTOSAVE_DELAY_MS"]

AUTOSAVE_DELAY_MS = 1000


class AutosaveActions:
    """Autosave and restore for the annotator (uses its ``session``, ``image_layer``, controls).

    ``autosave_store``: the :class:`~napari_vfmseg.annotation.autosave.AutosaveStore` in use (None:
    autosave off); ``autosave_offer``: the entry offered for the open scan (None: none pending).
    """

    autosave_store: Optional[AutosaveStore]
    autosave_offer: Optional[AutosaveEntry]

    def _open_autosave(self, layer) -> None:
        """A new image is annotated: key it by content and offer its autosaved objects, if any."""
        self._autosave_key = None
        self.autosave_offer = None
        if self.autosave_store is None or self.session is None:
            return
        self._autosave_key = scan_key(np.asarray(layer.data))
        try:
            entry = self.autosave_store.load(self._autosave_key)
        except ValueError as exc:
            self._notify("warning", str(exc))
            return
        if entry is None or np.array_equal(entry.labels, self.session.labels):
            return
        self.autosave_offer = entry
        text = (f"{entry.object_count} autosaved object{'s' if entry.object_count != 1 else ''} of this scan "
                f"(saved {entry.saved.replace('T', ' ')[:16]} UTC) can be restored")
        self.preview_label.setText(text + ": press Restore in the notification")
        self._offer(text)

    def _offer(self, text: str) -> None:
        from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

        notification_manager.dispatch(Notification(
            text, NotificationSeverity.INFO, actions=[("Restore", lambda *_: self.restore_autosave())]))

    def restore_autosave(self) -> Optional[int]:
        """Put the offered autosaved objects back (one undoable edit). Returns how many objects the
        image then has, or None when nothing was offered (or it could not be restored)."""
        entry, session = self.autosave_offer, self.session
        if entry is None or session is None:
            return None
        try:
            restore_into(session, entry)
        except ValueError as exc:
            self._notify("error", f"cannot restore the autosaved objects: {exc}")
            return None
        self.autosave_offer = None
        self.preview_label.setText(f"restored {entry.object_count} autosaved objects (Ctrl+Z undoes it)")
        self._after_objects_changed()
        return len(session.table)

    def _schedule_autosave(self) -> None:
        if self.autosave_store is not None and self.session is not None and not self._closed:
            self._autosave_timer.start()

    def autosave_now(self, background: bool = False):
        """Save the committed objects of the open scan now. Returns the path written (None when
        nothing was written); with ``background`` the write runs on a worker thread and this
        returns the call."""
        session, store, key = self.session, self.autosave_store, self._autosave_key
        if session is None or store is None or key is None:
            return None
        if self.autosave_offer is not None and len(session.table) == 0:
            return None   # keep the offered copy until the user restores it or commits something new
        self._autosave_sequence += 1
        labels, records, sequence = session.labels.copy(), session.table.snapshot(), self._autosave_sequence
        meta = {"image": getattr(self.image_layer, "name", "")}
        if not background:
            return store.save(key, labels, records, meta, sequence)
        return run_in_background(lambda: store.save(key, labels, records, meta, sequence), lambda _: None,
                                 lambda error: self._notify("warning", f"autosave failed: {error}"),
                                 name="vfmseg-autosave")
