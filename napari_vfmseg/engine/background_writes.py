"""Writes queued items on one background thread, so that the caller never waits for the disk.

The embedding cache uses it: a freshly encoded embedding goes to memory at once and to disk
while the encoder already works on the next plane.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook must be registered before ours (see below)
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable, Optional

__all__ = ["BackgroundWriter"]

_LIVE: "weakref.WeakSet[BackgroundWriter]" = weakref.WeakSet()


def _flush_all() -> None:
    """Finish every queued write when the main thread ends, before the interpreter shuts down."""
    for writer in list(_LIVE):
        writer.flush(timeout=60.0)


# Run where Python stops the thread pools that file I/O (zarr's included) goes through: these hooks
# run last-registered first, so ours runs before that of concurrent.futures (imported above), and
# all of them before atexit's. Fall back to atexit where this private hook does not exist.
getattr(threading, "_register_atexit", atexit.register)(_flush_all)


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker, say) has no writer thread and must not wait for one at
    its exit: its copies of the queues are dropped; the parent writes those items."""
    for writer in list(_LIVE):
        writer._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _warn(key: str, error: BaseException) -> None:
    warnings.warn(f"could not write {key}: {error}", stacklevel=2)


class BackgroundWriter:
    """Runs ``write(key, value)`` for submitted items on one background thread, oldest first.

    ``pending(key)`` returns an item until its write has finished, so a reader never misses it in
    between; ``flush()`` waits until everything submitted is written. At most ``max_queued`` items
    wait: a further ``submit`` blocks until one is written, which bounds the memory held when the
    disk is slower than the producer. A failing write goes to ``on_error(key, exception)`` (default:
    a warning) and its item is dropped; the thread goes on. The thread starts on demand and ends
    when the queue is empty. When the main thread ends, queued items are written before the
    interpreter shuts down the thread pools that file I/O needs.

    A writer thread that dies (an exception that is not an ``Exception``, such as ``SystemExit``
    raised inside a write) never leaves a caller waiting: the item it was writing is reported to
    ``on_error`` and dropped; ``flush`` reports and drops the items left and returns False; the
    next ``submit`` starts a new thread for what is queued then.
    ``_cond`` guards the queue, the thread handle and the counters.
    """

    def __init__(self, write: Callable[[str, Any], Any], on_error: Optional[Callable[[str, BaseException], None]] = None,
                 max_queued: int = 8, name: str = "vfmseg-background-writes") -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1; got {max_queued}")
        self._write = write
        self._on_error = on_error or _warn
        self.max_queued = int(max_queued)
        self.name = name
        self._queue: "OrderedDict[str, Any]" = OrderedDict()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self.written = 0
        self.failed = 0

    def submit(self, key: str, value: Any) -> None:
        """Queue ``value`` for writing under ``key`` (a key already queued is not queued twice)."""
        with self._cond:
            if key in self._queue:
                return
            while len(self._queue) >= self.max_queued and self._writer_alive():
                self._cond.wait(timeout=1.0)
            self._queue[key] = value
            _LIVE.add(self)
            if not self._writer_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _writer_alive(self) -> bool:
        """True while the writer thread runs (call with ``_cond`` held)."""
        return self._thread is not None and self._thread.is_alive()

    def pending(self, key: str) -> Optional[Any]:
        """The value queued under ``key`` whose write has not finished yet, else None."""
        with self._cond:
            return self._queue.get(key)

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every submitted item is written (or failed); False if ``timeout`` ran out first."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush() called from the writer thread itself")
        with self._cond:
            # A dead writer wakes nobody: poll its liveness every second as well.
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._queue and self._writer_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=1.0 if left is None else min(1.0, left))
            if not self._queue:
                return True
            lost = list(self._queue)
            self._queue.clear()
            self.failed += len(lost)
            self._cond.notify_all()
        for key in lost:
            self._report(key, RuntimeError("the background writer thread ended before writing it"))
        return False

    def _report(self, key: str, error: BaseException) -> None:
        try:
            self._on_error(key, error)
        except Exception:
            pass

    def _forget(self) -> None:
        self._cond = threading.Condition()  # the parent's lock may have been held at the fork
        self._queue = OrderedDict()
        self._thread = None

    def _run(self) -> None:
        try:
            self._write_all()
        finally:  # also when the thread dies of a BaseException: waiters must see it gone
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
                self._cond.notify_all()

    def _write_all(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                key, value = next(iter(self._queue.items()))
            try:
                self._write(key, value)
                failed = False
            except Exception as error:  # a cache write must never kill the thread or lose the others
                failed = True
                self._report(key, error)
            except BaseException as error:  # this thread ends: the item that ended it is not retried
                with self._cond:
                    self._queue.pop(key, None)
                    self.failed += 1
                self._report(key, error)
                raise
            with self._cond:
                self._queue.pop(key, None)
                self.failed += failed
                self.written += not failed
                self._cond.notify_all()
