"""Background work for the annotator on napari's ``thread_worker`` machinery.

The UI thread never runs the model: :class:`JobQueue` runs engine calls (set a volume, embed an
image, predict a mask) one at a time on a worker thread, and :func:`watch_prefetch` follows the
engine's background embedding of a volume's planes so a progress bar can show it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

__all__ = ["JobQueue", "watch_prefetch", "run_in_background"]

Prepare = Callable[[], Optional[Callable[[], Any]]]


@dataclass
class _Job:
    prepare: Prepare
    done: Callable[[Any], None]
    failed: Callable[[BaseException], None]


class JobQueue(QObject):
    """Engine jobs, one at a time, off the UI thread; a queued job is replaced by a newer one with its key.

    ``submit(key, prepare, done, failed)``: ``prepare()`` runs on the UI thread just before the job
    starts and returns the function to run on the worker thread (or None to skip it), so a job
    sees the state of the moment it starts, not of the moment it was queued. ``done(result)`` and
    ``failed(error)`` run on the UI thread. Engine calls never overlap, so switching the engine's
    volume can never race with a prediction.
    """

    idle = Signal()

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self._queue: "OrderedDict[Hashable, _Job]" = OrderedDict()
        self._worker = None
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._worker is not None or bool(self._queue)

    def submit(self, key: Hashable, prepare: Prepare, done: Callable[[Any], None], failed: Callable[[BaseException], None]) -> None:
        if self._closed:
            return
        self._queue.pop(key, None)
        self._queue[key] = _Job(prepare, done, failed)
        self._start_next()

    def discard(self, predicate: Callable[[Hashable], bool] = lambda key: True) -> None:
        """Drop queued (not running) jobs whose key matches ``predicate``."""
        for key in [k for k in self._queue if predicate(k)]:
            del self._queue[key]

    def close(self) -> None:
        """Drop queued jobs and accept no more; a running job finishes but its result is ignored."""
        self._closed = True
        self._queue.clear()

    def _start_next(self) -> None:
        if self._worker is not None or self._closed:
            return
        while self._queue:
            _, job = self._queue.popitem(last=False)
            try:
                function = job.prepare()
            except Exception as exc:  # noqa: BLE001 - reported through the job's own handler
                job.failed(exc)
                continue
            if function is None:
                continue
            worker = create_worker(function, _start_thread=False, _ignore_errors=True)
            worker.returned.connect(lambda result, job=job: self._deliver(job.done, result, job))
            worker.errored.connect(lambda error, job=job: self._deliver(job.failed, error, job))
            worker.finished.connect(self._on_finished)
            self._worker = worker
            worker.start()
            return
        self.idle.emit()

    def _deliver(self, handler: Callable[[Any], None], value: Any, job: _Job) -> None:
        if self._closed:
            return
        try:
            handler(value)
        except Exception as exc:  # noqa: BLE001 - a failing result handler must not stop the queue
            if handler is not job.failed:
                job.failed(exc)
            else:
                raise

    def _on_finished(self) -> None:
        self._worker = None
        self._start_next()


def watch_prefetch(handle, on_progress: Callable[[tuple[int, int]], None], on_error: Callable[[BaseException], None],
                   on_finished: Callable[[], None], interval: float = 0.1):
    """A started napari generator worker that reports ``(done, total)`` of an engine prefetch handle.

    ``handle`` is a :class:`napari_vfmseg.engine.PrefetchHandle`; quitting the worker cancels it.
    """

    def watch():
        try:
            while not handle.wait(interval):
                yield (handle.done, handle.total)
            yield (handle.done, handle.total)
        finally:
            handle.cancel()

    worker = create_worker(watch, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(on_progress)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finished)
    worker.start()
    return worker


def run_in_background(function: Callable[[], Any], done: Callable[[Any], None], failed: Callable[[BaseException], None]):
    """Run ``function`` on a napari worker thread; ``done``/``failed`` run on the UI thread. Returns the worker."""
    worker = create_worker(function, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(done)
    worker.errored.connect(failed)
    worker.start()
    return worker
