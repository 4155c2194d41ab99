"""The expensive path: encoder inputs → image embeddings, through the memory cache, the disk cache
and the encoder, each key computed once however many threads ask for it.

:class:`EmbeddingProvider` owns the memory cache, the disk cache, the in-flight table, the encoder
lock and the encoder runner; :class:`~napari_vfmseg.engine.segmenter.Segmenter` (the cheap path,
prompts → masks) asks it for embeddings, and so does its prefetch thread.

Threads and locks — the one list for the whole engine:

- ``EmbeddingProvider._lock`` guards the in-flight table (``_inflight``: key → the request that
  computes it) and every counter in ``stats`` (:class:`EngineStats`). It is held only for short
  bookkeeping, never while encoding or reading the disk.
- ``EmbeddingProvider._encoder_lock`` lets one encoder forward pass run at a time (the runner's
  int8 copy of the encoder is rebuilt inside it, and two passes would only compete for the cores).
- ``MemoryCache._lock`` guards its entries and byte count; ``DiskCache._lock`` its counters and
  its running estimate of the bytes on disk (entries themselves are written with atomic renames
  and need no lock); ``BackgroundWriter._cond`` its queue and the writer thread's handle.
- ``Segmenter._lock`` guards what the segmenter is set to: the 2D image item, the volume (and the
  plane items it remembers), the current plane and the prefetch handle.
  ``PromptDecoder._lock`` guards its per-image decoder contexts and the fast decoder's lazily
  filled tensors (positional encoding, first-block projections): one fast decode at a time.
- A :class:`~napari_vfmseg.engine.prefetch.PrefetchHandle`'s ``done`` and ``error`` are written by
  its worker thread only; ``cancel`` is a ``threading.Event``.

Locks are leaves: code holding one takes no other, except that ``_encoder_lock`` is held while
``_lock`` is taken to count the pass, and ``_lock`` while the memory cache's lock answers a lookup.
The order is therefore fixed (encoder lock, provider lock, memory cache lock) and no cycle is
possible. No engine attribute is written from more than one thread without its lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from napari_vfmseg.engine.acceleration import EncoderRunner
from napari_vfmseg.engine.cache import DiskCache, Embedding, MemoryCache, embedding_key
from napari_vfmseg.engine.preprocess import Geometry, PreparedImage, encoder_input
from napari_vfmseg.models.base import LoadedModel

__all__ = ["EngineStats", "EncoderItem", "EmbeddingProvider"]


@dataclass
class EngineStats:
    """Counters of a segmenter's embedding provider. ``encoder_calls`` counts encoder forward
    passes (a batch of planes counts once); ``images_encoded`` the images they embedded (cache
    misses); ``damaged_entries`` the disk-cache entries found damaged, deleted and recomputed."""

    encoder_calls: int = 0
    images_encoded: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    shared_waits: int = 0  # requests served by another thread's encoder call in flight
    damaged_entries: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EncoderItem:
    """An encoder input: its cache key, the model key it was made for, its geometry, and how to
    (re)make its pixels.

    Items remembered per volume plane drop ``prepared`` (about 1 MB of resized pixels each) and
    rebuild it with ``make`` only when the plane has to be encoded. ``scan``: gives the fingerprint
    of the scan the pixels come from (see :func:`~napari_vfmseg.engine.cache.scan_fingerprint`), so
    that the disk cache can purge one scan's entries; called on the disk writer's thread.
    """

    key: str
    model_key: str
    geometry: Geometry
    make: Callable[[], PreparedImage]
    prepared: Optional[PreparedImage] = None
    scan: Optional[Callable[[], str]] = None
    persist: bool = True  # False: memory cache only (zoomed crops, one per box)

    def image(self) -> PreparedImage:
        return self.prepared if self.prepared is not None else self.make()

    def light(self) -> "EncoderItem":
        return EncoderItem(self.key, self.model_key, self.geometry, self.make, None, self.scan, self.persist)


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    result: Optional[Embedding] = None
    error: Optional[BaseException] = None


class EmbeddingProvider:
    """Embeddings of :class:`EncoderItem` s for one model: memory cache, then disk cache, then encoder.

    ``cache_dir``: folder of the disk cache (None = memory only); ``cache_max_bytes``: its size
    limit (None: ``VFMSEG_CACHE_MAX_BYTES`` or the default, see
    :class:`~napari_vfmseg.engine.cache.DiskCache`). ``memory_bytes``: memory cache budget.
    ``accelerate``: the encoder mode (:data:`~napari_vfmseg.engine.acceleration.ENCODER_MODES`).
    ``preprocess``: the input convention ("sam" or "medsam").
    """

    def __init__(self, model: LoadedModel, cache_dir=None, memory_bytes: Optional[int] = None,
                 accelerate: str = "sdpa", preprocess: str = "sam", cache_max_bytes: Optional[int] = None) -> None:
        self.model = model
        self.sam = model.sam
        self.device = torch.device(model.device)
        self.preprocess = preprocess
        self._encoder = EncoderRunner(self.sam, accelerate, autocast_dtype=model.encoder_dtype)
        self.memory = MemoryCache(memory_bytes)
        self.disk: Optional[DiskCache] = (
            DiskCache(cache_dir, max_bytes=cache_max_bytes) if cache_dir is not None else None
        )
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._encoder_lock = threading.Lock()
        self._inflight: dict[str, _Pending] = {}

    @property
    def encoder_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    @property
    def numerics(self) -> str:
        """Numerics tag of the embeddings ("fp32", "bf16", "int8"), part of every cache key."""
        return self._encoder.cache_tag

    # ------------------------------------------------------------------------------------ items

    def item(self, make: Callable[[], PreparedImage], prepared: Optional[PreparedImage] = None,
             scan: Optional[Callable[[], str]] = None, persist: bool = True) -> EncoderItem:
        """An item for the model as it is now; ``make`` must return the same pixels every time
        (``prepared``: its result when already at hand; ``persist``: False keeps its embedding out
        of the disk cache)."""
        prepared = prepared if prepared is not None else make()
        model_key = self.model.cache_key
        key = embedding_key(
            prepared.pixels,
            window=None if prepared.window is None else prepared.window.as_tuple(),
            encoder_size=self.encoder_size,
            model_key=model_key,
            numerics=self.numerics,
            preprocess=self.preprocess,
        )
        return EncoderItem(key, model_key, prepared.geometry, make, prepared, scan, persist)

    def is_current(self, item: EncoderItem) -> bool:
        """False once the model's encoder changed since ``item`` was keyed (an adapter applied or
        removed): its embedding is stale and the item must be keyed again."""
        return item.model_key == self.model.cache_key

    def current(self, item: EncoderItem) -> EncoderItem:
        """``item``, keyed again for the model as it is now if the encoder changed since."""
        return item if self.is_current(item) else self.item(item.make, item.prepared, item.scan, item.persist)

    def has(self, key: str) -> bool:
        """True when ``key`` is in the memory or disk cache (no encoder run)."""
        return self.memory.get(key) is not None or (self.disk is not None and key in self.disk)

    # ------------------------------------------------------------------------------------ embeddings

    def _finish(self, key: str, pending: _Pending, embedding: Optional[Embedding], error: Optional[BaseException]) -> None:
        with self._lock:
            pending.result, pending.error = embedding, error
            self._inflight.pop(key, None)
        pending.event.set()

    def _claim(self, items: Sequence[EncoderItem], results: dict[str, Embedding]
               ) -> tuple[list[tuple[EncoderItem, _Pending]], list[tuple[EncoderItem, _Pending]]]:
        """Memory hits go to ``results``; returns (items this call computes, items another thread is computing)."""
        claimed: list[tuple[EncoderItem, _Pending]] = []
        waiting: list[tuple[EncoderItem, _Pending]] = []
        seen: set[str] = set()
        with self._lock:
            for item in items:
                if item.key in seen:
                    continue
                seen.add(item.key)
                embedding = self.memory.get(item.key)
                if embedding is not None:
                    results[item.key] = embedding
                    self.stats.memory_hits += 1
                    continue
                pending = self._inflight.get(item.key)
                if pending is not None:
                    waiting.append((item, pending))
                    continue
                pending = _Pending()
                self._inflight[item.key] = pending
                claimed.append((item, pending))
        return claimed, waiting

    def _from_disk(self, key: str) -> Optional[Embedding]:
        if self.disk is None:
            return None
        embedding, damaged = self.disk.lookup(key)
        with self._lock:
            self.stats.disk_hits += embedding is not None
            self.stats.damaged_entries += damaged
        return embedding

    def obtain(self, items: Sequence[EncoderItem]) -> list[Embedding]:
        """Embeddings for ``items``, in order: memory, then disk, then one encoder call for the rest.

        A key being encoded by another thread is waited for, never encoded twice. A new embedding
        goes to the memory cache at once and to the disk cache on its writer thread.
        """
        results: dict[str, Embedding] = {}
        claimed, waiting = self._claim(items, results)
        unfinished = {item.key: (item, pending) for item, pending in claimed}
        try:
            to_encode = []
            for item, pending in claimed:
                embedding = self._from_disk(item.key) if item.persist else None
                if embedding is None:
                    to_encode.append((item, pending))
                    continue
                self.memory.put(item.key, embedding)
                results[item.key] = embedding
                self._finish(item.key, pending, embedding, None)
                del unfinished[item.key]
            if to_encode:
                embeddings = self._encode([item for item, _ in to_encode])
                for (item, pending), embedding in zip(to_encode, embeddings):
                    self.memory.put(item.key, embedding)
                    if self.disk is not None and item.persist:
                        self.disk.put_later(item.key, embedding, scan=item.scan)
                    results[item.key] = embedding
                    self._finish(item.key, pending, embedding, None)
                    del unfinished[item.key]
        except BaseException as exc:
            for item, pending in unfinished.values():
                self._finish(item.key, pending, None, exc)
            raise
        for item, pending in waiting:
            pending.event.wait()
            with self._lock:
                self.stats.shared_waits += 1
            if pending.result is None:  # the other thread failed: try ourselves
                results[item.key] = self.obtain([item])[0]
            else:
                results[item.key] = pending.result
        return [results[item.key] for item in items]

    def _encode(self, items: Sequence[EncoderItem]) -> list[Embedding]:
        with self._encoder_lock:
            x = encoder_input([item.image() for item in items], self.sam, self.device)
            features = self._encoder(x)
            with self._lock:
                self.stats.encoder_calls += 1
                self.stats.images_encoded += len(items)
        features = features.detach().to("cpu", torch.float32)
        return [
            Embedding(features[i].clone(), item.geometry.original_size, item.geometry.input_size)
            for i, item in enumerate(items)
        ]

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until the embeddings computed so far are in the disk cache; False if ``timeout``
        seconds ran out first or the writer thread died with entries left (they are dropped with
        a warning). True at once without a disk cache."""
        return self.disk.flush(timeout) if self.disk is not None else True
