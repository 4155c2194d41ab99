"""Background work for the annotator: plain Python threads that report back on the UI thread.

The UI thread never runs the model: :class:`JobQueue` runs engine calls (set a volume, embed an
image, predict a mask) one at a time on a worker thread, :func:`watch_prefetch` follows the
engine's background embedding of a volume's planes so a progress bar can show it, and
:func:`run_in_background` runs one call (loading a model, a fine-tuning round).

Why not Qt thread-pool workers: napari may drop the widget (closing its dock) or the whole
application may exit while a model is still loading. A Qt worker that finishes after that emits
on a deleted signal object and aborts the process. Here each call runs on a daemon thread and
posts its result through a :class:`_Relay` that the thread itself keeps alive; once the call is
cancelled (:meth:`BackgroundCall.cancel`, done by the widget's shutdown) or the Qt event loop is
gone, the result is dropped instead of delivered. Results and errors are delivered on the thread
that created the call (the UI thread), through a queued signal.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

from qtpy.QtCore import QObject, Qt, Signal

__all__ = ["BackgroundCall", "JobQueue", "watch_prefetch", "run_in_background", "start_thread", "set_all", "EXIT_GRACE_S"]

Prepare = Callable[[], Optional[Callable[[], Any]]]

# At interpreter exit, wait this long in all for our threads still running (a model still loading,
# an engine being closed): native code (torch) torn down under a running thread can abort the
# process. A thread still running after that is abandoned (it is a daemon thread).
EXIT_GRACE_S = 30.0
_running: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()   # the threads joined at exit


def _join_at_exit() -> None:
    deadline = time.monotonic() + EXIT_GRACE_S
    for thread in list(_running):
        thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(_join_at_exit)


def start_thread(function: Callable[[], Any], name: str) -> threading.Thread:
    """Start ``function`` on a daemon thread that interpreter exit waits for (up to :data:`EXIT_GRACE_S`)."""
    thread = threading.Thread(target=function, name=name, daemon=True)
    _running.add(thread)
    thread.start()
    return thread


class _Relay(QObject):
    """Carries (handler, value) from a worker thread to the thread that created it."""

    posted = Signal(object, object)

    def __init__(self) -> None:
        super().__init__()
        self.posted.connect(self._deliver, Qt.QueuedConnection)

    def _deliver(self, handler: Callable[[Any], None], value: Any) -> None:
        handler(value)


class BackgroundCall:
    """``function()`` on a daemon thread; ``done(result)`` / ``failed(error)`` / ``finished()`` on
    the creating (UI) thread, unless :meth:`cancel` was called first. ``progress(value)`` may be
    called from the function's thread (through :meth:`post_progress`) and arrives on the UI thread."""

    def __init__(self, function: Callable[[], Any], done: Callable[[Any], None],
                 failed: Callable[[BaseException], None], finished: Optional[Callable[[], None]] = None,
                 name: str = "vfmseg-worker") -> None:
        self._function = function
        self._done, self._failed, self._finished = done, failed, finished
        self._relay = _Relay()
        self._cancelled = threading.Event()
        self._name = name
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "BackgroundCall":
        self._thread = start_thread(self._run, self._name)
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Deliver nothing from now on (the function itself runs to its end)."""
        self._cancelled.set()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the function to return; True if it did within ``timeout`` seconds."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def post(self, handler: Callable[[Any], None], value: Any) -> None:
        """Run ``handler(value)`` on the UI thread (callable from any thread); dropped once cancelled."""
        if self._cancelled.is_set():
            return
        try:
            self._relay.posted.emit(lambda v, h=handler: None if self._cancelled.is_set() else h(v), value)
        except RuntimeError:   # the Qt side is gone (application exit): nobody is listening any more
            self._cancelled.set()

    def _run(self) -> None:
        try:
            result = self._function()
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller's handler
            self.post(self._failed, exc)
        else:
            self.post(self._done, result)
        if self._finished is not None:
            self.post(lambda _: self._finished(), None)
        self._function = None   # drop references to the job's objects as soon as it is over


def run_in_background(function: Callable[[], Any], done: Callable[[Any], None],
                      failed: Callable[[BaseException], None], name: str = "vfmseg-worker") -> BackgroundCall:
    """Run ``function`` on a worker thread; ``done``/``failed`` run on the UI thread. Returns the call."""
    return BackgroundCall(function, done, failed, name=name).start()


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
    volume can never race with a prediction. :meth:`close` drops queued jobs and the running
    job's result; :meth:`wait` waits for the running job (the engine may be closed after it).
    """

    idle = Signal()

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self._queue: "OrderedDict[Hashable, _Job]" = OrderedDict()
        self._call: Optional[BackgroundCall] = None
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._call is not None or bool(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

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
        if self._call is not None:
            self._call.cancel()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the running job's function to return (True if it did, or none was running)."""
        call = self._call
        return call is None or call.join(timeout)

    def _start_next(self) -> None:
        if self._call is not None or self._closed:
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
            self._call = BackgroundCall(function, lambda result, job=job: self._deliver(job.done, result, job),
                                        lambda error, job=job: self._deliver(job.failed, error, job),
                                        finished=self._on_finished, name="vfmseg-engine-job")
            self._call.start()
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
        self._call = None
        self._start_next()


def watch_prefetch(handle, on_progress: Callable[[tuple[int, int]], None], on_error: Callable[[BaseException], None],
                   on_finished: Callable[[], None], interval: float = 0.1) -> BackgroundCall:
    """A started watcher that reports ``(done, total)`` of an engine prefetch handle on the UI thread.

    ``handle`` is a :class:`napari_vfmseg.engine.PrefetchHandle`; cancelling the watcher (``quit()``
    or ``cancel()``) cancels the handle.
    """
    call: BackgroundCall

    def watch() -> None:
        try:
            while not handle.wait(interval) and not call.cancelled:
                call.post(on_progress, (handle.done, handle.total))
            call.post(on_progress, (handle.done, handle.total))
        finally:
            handle.cancel()

    call = BackgroundCall(watch, lambda _: None, on_error, finished=on_finished, name="vfmseg-prefetch-watch")
    call.quit = call.cancel   # type: ignore[attr-defined]  # the name the engine link calls
    return call.start()


def set_all(events: list, *_args) -> None:
    """Set every ``threading.Event`` in ``events``: the cancel slot of a panel's background work.

    Connect it with ``partial(set_all, events)`` to the annotator's ``destroyed``, never as a method
    of the panel: Qt deletes child widgets before the parent's ``destroyed`` is emitted.
    """
    for event in events:
        event.set()
