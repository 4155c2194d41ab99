"""Background embedding of a volume's planes: order, cancellation and progress.

The worker is a plain daemon thread (no Qt), so the engine stays usable from scripts and the CLI;
the napari widget wraps the handle in its own worker if it wants signals.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Optional, Sequence

__all__ = ["outward_order", "PrefetchHandle", "ProgressCallback"]

# callback(done, total, plane): called after each plane is available (computed or found in a cache).
ProgressCallback = Callable[[int, int, int], None]


def outward_order(center: int, count: int) -> list[int]:
    """Planes ``0..count-1`` ordered from ``center`` outwards: center, center+1, center-1, center+2, ..."""
    if count <= 0:
        return []
    center = min(max(int(center), 0), count - 1)
    order = [center]
    for step in range(1, count):
        for plane in (center + step, center - step):
            if 0 <= plane < count:
                order.append(plane)
    return order


class PrefetchHandle:
    """A running prefetch. ``cancel()`` stops it after the batch in progress; ``wait()`` joins it.

    ``done``/``total`` count planes made available; ``error`` holds an exception that stopped it.
    """

    def __init__(
        self,
        order: Sequence[int],
        embed_batch: Callable[[list[int]], None],
        batch_size: int = 1,
        callback: Optional[ProgressCallback] = None,
    ) -> None:
        self.order = list(order)
        self.total = len(self.order)
        self.done = 0
        self.error: Optional[BaseException] = None
        self._batch_size = max(1, int(batch_size))
        self._embed_batch = embed_batch
        self._callback = callback
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vfmseg-prefetch", daemon=True)

    def start(self) -> "PrefetchHandle":
        self._thread.start()
        return self

    def _batches(self) -> Iterable[list[int]]:
        for start in range(0, self.total, self._batch_size):
            yield self.order[start : start + self._batch_size]

    def _run(self) -> None:
        try:
            for batch in self._batches():
                if self._cancel.is_set():
                    return
                self._embed_batch(batch)
                for plane in batch:
                    self.done += 1
                    if self._callback is not None:
                        self._callback(self.done, self.total, plane)
        except BaseException as exc:  # reported through .error and wait(); the thread must not die silently
            self.error = exc

    def cancel(self) -> None:
        """Ask the worker to stop before its next batch (the batch being encoded finishes)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Block until the worker ends (or ``timeout`` seconds), without raising its error."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the worker ends (or ``timeout`` seconds). True when it ended; re-raises its error."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self.error is not None:
            raise self.error
        return True
