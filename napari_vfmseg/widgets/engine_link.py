"""The engine as the annotator sees it: one Segmenter, its calls off the UI thread, background embedding.

:class:`EngineLink` gives the engine the image being annotated (``set_volume`` along the axis on
screen, or ``set_image`` for a 2D image), embeds the plane on screen first and the others in the
background (the engine's prefetch, followed by a napari generator worker), and runs predictions
for the :class:`~napari_vfmseg.annotation.session.AnnotationSession`'s requests, and 3D propagations
of its key planes (:meth:`EngineLink.propagate`, cancellable). Every engine call runs on a worker
thread, one at a time (:class:`~napari_vfmseg.widgets.workers.JobQueue`); the UI thread only
receives results through signals.

Threads: every attribute of :class:`EngineLink` is read and written on the UI thread only, except
the first-embedding times of a prefetch, which the engine's thread records under
``EngineLink._times_lock``. The engine guards its own state (its current plane included) with its
own lock; :class:`~napari_vfmseg.annotation.session.AnnotationSession` is touched on the UI
thread only (a worker runs a request's copy of the prompts, never the session).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_vfmseg.annotation.planes import Plane
from napari_vfmseg.annotation.session import AnnotationSession
from napari_vfmseg.widgets.workers import JobQueue, start_thread, watch_prefetch

__all__ = ["EngineLink"]


class EngineLink(QObject):
    """Drives a :class:`~napari_vfmseg.engine.Segmenter` for one annotation session at a time.

    Signals: ``ready()`` once the engine holds the image; ``progress(done, total)`` of background
    embedding (``total`` 0 = busy without a count); ``predicted(plane, prediction, milliseconds)``
    when the session accepted a new mask; ``failed(context, error)`` for any engine error.
    ``propagation_progress(done, total, plane)`` during a 3D propagation; ``propagated(result,
    applied)`` when it ends: the engine's PropagationResult (None when it failed or did not run)
    and whether the session now shows it.
    """

    ready = Signal()
    progress = Signal(int, int)
    predicted = Signal(object, object, float)
    failed = Signal(str, object)
    propagation_progress = Signal(int, int, int)
    propagated = Signal(object, bool)

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.segmenter = None
        self.session: Optional[AnnotationSession] = None
        self.jobs = JobQueue(self)
        self.axis: Optional[int] = None          # the plane axis the engine holds (None: 2D image)
        self.stats: dict = {"embed_seconds": None, "predict_ms": []}
        self._ready = False
        self._token: Optional[object] = None
        self._embedded: set[int] = set()
        self._handle = None
        self._watcher = None
        self._current_plane: Callable[[], Optional[Plane]] = lambda: None
        self._propagation: Optional[threading.Event] = None   # the cancel token of the propagation under way
        self._times_lock = threading.Lock()   # first-embedding times written by the engine's thread

    # ------------------------------------------------------------------ state

    @property
    def is_ready(self) -> bool:
        """The engine holds the current image (and axis): predictions can run."""
        return self._ready

    @property
    def busy(self) -> bool:
        """An engine job (set image, prediction) is queued or running."""
        return self.jobs.busy

    @property
    def prefetching(self) -> bool:
        """Background embedding runs, or its last progress has not reached the UI thread yet (so
        once this is False, :meth:`plane_embedded` knows every plane the engine embedded)."""
        return self._handle is not None and (self._handle.running or self._watcher is not None)

    @property
    def embedded_count(self) -> int:
        return len(self._embedded)

    def plane_embedded(self, plane: Optional[Plane]) -> bool:
        """True when ``plane``'s embedding is known to be cached (a click answers at once)."""
        if plane is None or not self._ready:
            return False
        return plane.axis is None or (plane.axis == self.axis and plane.index in self._embedded)

    def set_segmenter(self, segmenter) -> None:
        """Use ``segmenter`` from now on (the previous one's background work is cancelled)."""
        self.stop_prefetch()
        if self.segmenter is not None and self.segmenter is not segmenter:
            self.segmenter.cancel()
        self.segmenter = segmenter
        self.stats["embed_seconds"] = None

    def detach(self) -> None:
        """Forget the session: queued jobs dropped, background embedding and propagation stopped."""
        token, self._propagation = self._propagation, None
        if token is not None:   # a running walk stops at its next plane; its result is ignored
            token.set()
            self.propagated.emit(None, False)
        self.stop_prefetch()
        self.jobs.discard()
        self.session = None
        self._token = None
        self._ready = False
        self._embedded = set()

    def close(self) -> Optional[threading.Thread]:
        """Stop for good: jobs dropped, background work cancelled, and the segmenter closed (its
        prefetch joined, disk writes flushed, decoder state cleared) on a daemon thread once the
        running job returns. The link forgets the segmenter at once. Returns that thread (None
        without a segmenter)."""
        self.detach()
        self.jobs.close()
        segmenter, self.segmenter = self.segmenter, None
        if segmenter is None:
            return None
        segmenter.cancel()
        jobs = self.jobs

        def close_engine() -> None:
            jobs.wait()
            segmenter.close()

        return start_thread(close_engine, "vfmseg-close-engine")

    # ------------------------------------------------------------------ the image

    def configure(
        self,
        session: AnnotationSession,
        image: np.ndarray,
        axis: Optional[int],
        window,
        modality: Optional[str],
        current_plane: Callable[[], Optional[Plane]],
    ) -> None:
        """Give the engine ``image`` (a volume sliced along ``axis``, or a 2D image) for ``session``.

        When done: ``ready`` is emitted, background embedding starts at ``current_plane()``, and
        every plane of ``session`` with prompts along ``axis`` is predicted again.
        """
        self.stop_prefetch()
        self.cancel_propagation()   # it walks the previous image, axis or window
        self.session = session
        self._ready = False
        self._embedded = set()
        self._current_plane = current_plane
        segmenter = self.segmenter
        if segmenter is None:
            return
        token = object()
        self._token = token
        self.progress.emit(0, 0)

        def prepare():
            if token is not self._token:
                return None

            def job():
                started = time.perf_counter()
                spacing = session.geometry["spacing"]  # planes keep their true proportions
                if session.ndim == 3:
                    segmenter.set_volume(image, axis=axis, window=window, modality=modality, spacing=spacing)
                else:
                    segmenter.set_image(image, window=window, modality=modality, spacing=spacing)
                return time.perf_counter() - started

            return job

        def done(seconds: float) -> None:
            if token is not self._token:
                return
            self._ready = True
            self.axis = axis
            if session.ndim == 2:
                self._embedded = {0}
                self.stats["embed_seconds"] = seconds
                self.progress.emit(1, 1)
            else:
                self.start_prefetch(current_plane())
            self.ready.emit()
            self.request_prompted()

        def failed(error: BaseException) -> None:
            if token is self._token:
                self.progress.emit(0, 1)
                self.failed.emit("preparing the image for the model", error)

        self.jobs.submit("engine", prepare, done, failed)

    # ------------------------------------------------------------------ background embedding

    def start_prefetch(self, plane: Optional[Plane]) -> None:
        """Embed ``plane`` first, then the planes around it, on the engine's background thread."""
        self.stop_prefetch()
        segmenter = self.segmenter
        if segmenter is None or plane is None or plane.axis is None or plane.axis != self.axis or not self._ready:
            return
        segmenter.current_plane = plane.index
        started = time.perf_counter()
        first_done: dict[int, float] = {}
        times_lock = self._times_lock

        def record(done: int, total: int, index: int) -> None:  # the engine's thread
            with times_lock:
                first_done.setdefault(int(index), time.perf_counter() - started)

        handle = segmenter.prefetch(callback=record)
        self._handle = handle

        def progress(value: tuple[int, int]) -> None:
            if handle is not self._handle:
                return
            done, total = value
            self._embedded.update(handle.order[:done])
            with times_lock:
                first = first_done.get(handle.order[0]) if handle.order else None
            if first is not None and self.stats["embed_seconds"] is None:
                self.stats["embed_seconds"] = first
            self.progress.emit(done, max(1, total))

        def failed(error: BaseException) -> None:
            if handle is self._handle:
                self.failed.emit("embedding planes in the background", error)

        def finished() -> None:
            if handle is self._handle:
                self._watcher = None

        self._watcher = watch_prefetch(handle, progress, failed, finished)

    def follow(self, plane: Optional[Plane]) -> None:
        """The viewer moved to ``plane``: embed around it unless it is cached or being embedded now."""
        handle = self._handle
        if plane is None or not self._ready or plane.axis != self.axis or plane.index in self._embedded or self.propagating:
            return
        in_flight = handle is not None and handle.running and handle.done < len(handle.order) and handle.order[handle.done] == plane.index
        if not in_flight:
            self.start_prefetch(plane)

    def stop_prefetch(self):
        """Cancel background embedding; returns the engine's prefetch handle that was running (its
        ``join()`` waits for the plane being encoded), or None."""
        handle = self._handle
        if handle is not None:
            handle.cancel()
        if self._watcher is not None:
            self._watcher.quit()
        self._handle = None
        self._watcher = None
        return handle

    # ------------------------------------------------------------------ predictions

    def request_prompted(self) -> None:
        """Predict again every plane of the session with prompts along the engine's axis (after a
        change of model settings that does not touch the image, e.g. the zoom for small boxes)."""
        if self.session is None:
            return
        for plane in self.session.planes_with_prompts():
            if plane.axis == self.axis:
                self.request(plane)

    def request(self, plane: Plane, next_candidate: bool = False) -> None:
        """Predict ``plane`` from the session's current prompts (the newest request per plane wins).
        ``next_candidate``: show the next of an ambiguous prompt's masks instead (a single click or a box alone)."""
        session, segmenter = self.session, self.segmenter
        if session is None or segmenter is None:
            return

        def prepare():
            if session is not self.session or segmenter is not self.segmenter or not self._ready:
                return None
            if plane.axis != self.axis:
                return None
            request = session.next_candidate_request(plane) if next_candidate else session.request(plane)
            if request is None:
                return None

            def job():
                started = time.perf_counter()
                prediction = request.run(segmenter)
                return request, prediction, time.perf_counter() - started

            return job

        def done(result) -> None:
            request, prediction, seconds = result
            if session is not self.session:
                return
            if plane.axis is not None:
                self._embedded.add(plane.index)
            if session.accept(request, prediction):
                milliseconds = seconds * 1000.0
                self.stats["predict_ms"] = (self.stats["predict_ms"] + [milliseconds])[-200:]
                self.predicted.emit(plane, prediction, milliseconds)

        self.jobs.submit(("predict", plane), prepare, done, lambda error: self.failed.emit(f"segmenting {plane.describe()}", error))

    def discard_predictions(self) -> None:
        """Drop queued predictions (their prompts are gone)."""
        self.jobs.discard(lambda key: isinstance(key, tuple) and key[0] == "predict")

    # ------------------------------------------------------------------ 3D propagation

    @property
    def propagating(self) -> bool:
        """A propagation is queued or running (until ``propagated`` is emitted)."""
        return self._propagation is not None

    def propagate(self, **settings) -> bool:
        """Propagate the session's key planes along the engine's axis, on the worker thread.

        ``settings``: :class:`~napari_vfmseg.engine.PropagationConfig` fields (``min_score=``, ...).
        The key planes are read when the job starts, after the predictions queued before it.
        Emits ``propagation_progress`` per predicted plane and ``propagated`` at the end; a
        cancelled walk leaves the preview as it was. Returns False when one is already under way or
        there is no 3D image or model.
        """
        session, segmenter = self.session, self.segmenter
        if session is None or segmenter is None or session.ndim != 3 or self._propagation is not None:
            return False
        token = threading.Event()
        self._propagation = token

        def report(done: int, total: int, plane: int) -> None:  # worker thread: a queued signal only
            self.propagation_progress.emit(int(done), int(total), int(plane))

        def prepare():
            if token is not self._propagation:
                return None
            usable = session is self.session and segmenter is self.segmenter and self._ready and self.axis is not None
            request = session.propagation_request(self.axis) if usable and not token.is_set() else None
            if request is None:
                self._end_propagation(token, None, False)
                return None
            self.stop_prefetch()   # the walk embeds the planes it needs, ahead of itself

            def job():
                from napari_vfmseg.engine import propagate

                return request, propagate(segmenter, request.seeds, axis=request.axis, progress=report, cancel=token, **settings)

            return job

        def done(value) -> None:
            request, result = value
            if token is not self._propagation:
                return
            applied = session is self.session and not result.cancelled and session.accept_propagation(request, result.mask)
            self._end_propagation(token, result, applied)

        def failed(error: BaseException) -> None:
            if token is self._propagation:
                self._end_propagation(token, None, False)
                self.failed.emit("propagating through the volume", error)

        self.jobs.submit("propagate", prepare, done, failed)
        return True

    def cancel_propagation(self) -> None:
        """Ask the propagation under way to stop after the plane it is predicting."""
        if self._propagation is not None:
            self._propagation.set()

    def _end_propagation(self, token: threading.Event, result, applied: bool) -> None:
        if token is not self._propagation:
            return
        self._propagation = None
        if self.session is not None and self._ready and self.session.ndim == 3 and not self.prefetching:
            self.start_prefetch(self._current_plane())   # resume embedding around the plane on screen
        self.propagated.emit(result, bool(applied))
