"""Segmenter: prompts on a 2D slice or a volume plane → a boolean mask, with SAM-family models.

The expensive step (the image encoder) is separate from the cheap one (prompt encoder + mask
decoder), as in segment-anything's ``SamPredictor``; embeddings are cached in memory and optionally
on disk, keyed by content. Given an RGB uint8 image and the default settings, masks and scores equal
``SamPredictor``'s for the same weights and prompts (within fp32 rounding).

Coordinates are napari's: a point is (row, col), a box (row0, col0, row1, col1), in pixels of the
slice, pixel centres at integer coordinates.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from napari_vfmseg.engine.acceleration import DecoderContext, EncoderRunner, FastDecoder
from napari_vfmseg.engine.cache import DiskCache, Embedding, MemoryCache, embedding_key
from napari_vfmseg.engine.prefetch import PrefetchHandle, ProgressCallback, outward_order
from napari_vfmseg.engine.preprocess import (
    Geometry,
    PreparedImage,
    encoder_input,
    pixel_aspect,
    prepare_image,
    upscale_logits,
    validate_box,
    validate_points,
)
from napari_vfmseg.io.windowing import Window, resolve_window
from napari_vfmseg.models.base import LoadedModel

__all__ = ["Segmenter", "Prediction", "EngineStats"]

WindowArg = Union[None, str, Window, tuple, list]


@dataclass
class Prediction:
    """Result of one :meth:`Segmenter.predict`.

    ``mask``: bool (rows, cols) on the slice grid. ``score``: the model's predicted IoU of ``mask``.
    ``logits``: float32 (L, L) low-resolution logits of ``mask`` (L=256 for SAM) — pass them as
    ``mask_input`` with a correction click. ``candidate_scores`` (k,) and ``candidate_logits``
    (k, L, L): every mask the decoder returned (k=3 for multimask output; 4 for a box alone: its
    own mask first, then the three multimask masks as alternatives; 1 otherwise); ``index`` is the
    one chosen. ``np.asarray(prediction)`` gives ``mask``.
    """

    mask: np.ndarray
    score: float
    logits: np.ndarray
    candidate_scores: np.ndarray
    candidate_logits: np.ndarray
    index: int
    multimask: bool
    plane: Optional[int] = None

    def __array__(self, dtype=None, copy=None):
        return self.mask if dtype is None else self.mask.astype(dtype)


@dataclass
class EngineStats:
    """Counters of a :class:`Segmenter`. ``encoder_calls`` counts encoder forward passes (a batch of
    planes counts once); ``images_encoded`` the images they embedded (cache misses)."""

    encoder_calls: int = 0
    images_encoded: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    shared_waits: int = 0  # requests served by another thread's encoder call in flight

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Item:
    """An encoder input: its cache key, its geometry, and how to (re)make its pixels.

    Items remembered per volume plane drop ``prepared`` (about 1 MB of resized pixels each) and
    rebuild it with ``make`` only when the plane has to be encoded.
    """

    key: str
    geometry: Geometry
    make: Callable[[], PreparedImage]
    prepared: Optional[PreparedImage] = None

    def image(self) -> PreparedImage:
        return self.prepared if self.prepared is not None else self.make()

    def light(self) -> "_Item":
        return _Item(self.key, self.geometry, self.make)


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    result: Optional[Embedding] = None
    error: Optional[BaseException] = None


@dataclass
class _Volume:
    array: np.ndarray
    axis: int
    window: Optional[Window]
    pixel_aspect: float = 1.0  # a plane's pixel height / width in mm
    items: dict = field(default_factory=dict)  # plane → (model key, _Item)

    @property
    def count(self) -> int:
        return int(self.array.shape[self.axis])

    def plane(self, index: int) -> np.ndarray:
        return np.take(self.array, index, axis=self.axis)


class Segmenter:
    """Interactive SAM segmentation of 2D slices and volume planes.

    ``model``: a :class:`~napari_vfmseg.models.base.LoadedModel`. ``cache_dir``: folder for the disk
    cache (None = memory only). ``memory_bytes``: memory cache budget (default min(2 GiB, 10% of
    RAM)). ``accelerate``: encoder mode, one of "sdpa" (default, exact within fp32 rounding),
    "none" (upstream modules as they are, decoder included), "bf16", "int8" (approximate).
    ``batch_size``: planes per encoder call when prefetching (default 1 on CPU, 4 on GPU).
    The input convention follows ``model.info["preprocess"]`` ("sam" by default, or "medsam").
    """

    def __init__(
        self,
        model: LoadedModel,
        cache_dir=None,
        memory_bytes: Optional[int] = None,
        accelerate: str = "sdpa",
        batch_size: Optional[int] = None,
    ) -> None:
        self.model = model
        self.sam = model.sam
        self.sam.eval()
        self.device = torch.device(model.device)
        self.accelerate = accelerate
        self.preprocess = str((model.info or {}).get("preprocess") or "sam")
        self._encoder = EncoderRunner(self.sam, accelerate, autocast_dtype=model.encoder_dtype)
        self._decoder: Optional[FastDecoder] = FastDecoder(self.sam) if accelerate != "none" else None
        self.memory = MemoryCache(memory_bytes)
        self.disk: Optional[DiskCache] = DiskCache(cache_dir) if cache_dir is not None else None
        self.batch_size = int(batch_size) if batch_size else (4 if self.device.type == "cuda" else 1)
        self.stats = EngineStats()

        self._lock = threading.RLock()
        self._encoder_lock = threading.Lock()
        self._inflight: dict[str, _Pending] = {}
        self._contexts: "OrderedDict[str, DecoderContext]" = OrderedDict()
        self._image: Optional[_Item] = None
        self._volume: Optional[_Volume] = None
        self._prefetch: Optional[PrefetchHandle] = None
        self.current_plane: Optional[int] = None

    # ------------------------------------------------------------------------------------ properties

    @property
    def encoder_calls(self) -> int:
        """Encoder forward passes run by this segmenter (cache hits run none)."""
        return self.stats.encoder_calls

    @property
    def encoder_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    @property
    def numerics(self) -> str:
        """Numerics tag of the embeddings ("fp32", "bf16", "int8"), part of every cache key."""
        return self._encoder.cache_tag

    @property
    def plane_count(self) -> int:
        """Planes along the volume's axis (0 when no volume is set)."""
        return self._volume.count if self._volume is not None else 0

    @property
    def volume_axis(self) -> Optional[int]:
        """The axis planes are taken along (None when no volume is set)."""
        return self._volume.axis if self._volume is not None else None

    def has_embedding(self, plane: int) -> bool:
        """True when plane ``plane`` of the volume is in the memory or disk cache (no encoder run)."""
        item = self._plane_item(plane)
        with self._lock:
            if self.memory.get(item.key) is not None:
                return True
        return self.disk is not None and item.key in self.disk

    # ------------------------------------------------------------------------------------ images

    def _resolve_window(self, array: np.ndarray, window: WindowArg, modality: Optional[str]) -> Optional[Window]:
        if array.ndim == 3 and array.shape[-1] == 3:
            if window is not None:
                raise ValueError("an RGB image is used as it is; do not pass a window with it")
            return None
        if window is None and array.dtype == np.uint8:
            return None  # 8-bit grey slices are used as they are, like SamPredictor on a grey photo
        return resolve_window(window, array, modality)

    def _item(self, get_image: Callable[[], np.ndarray], window: Optional[Window], aspect: float = 1.0) -> _Item:
        """Prepare an image now and key it; ``get_image`` must return the same pixels when called again."""

        def make() -> PreparedImage:
            return prepare_image(get_image(), window, self.encoder_size, self.preprocess, pixel_aspect=aspect)

        prepared = make()
        key = embedding_key(
            prepared.pixels,
            window=None if window is None else window.as_tuple(),
            encoder_size=self.encoder_size,
            model_key=self.model.cache_key,
            numerics=self.numerics,
            preprocess=self.preprocess,
        )
        return _Item(key, prepared.geometry, make, prepared)

    def set_image(self, image: np.ndarray, window: WindowArg = None, modality: Optional[str] = None,
                  spacing: Optional[Sequence[float]] = None) -> Embedding:
        """Embed a 2D image for :meth:`predict`.

        ``image``: grey (rows, cols) of any dtype, or RGB uint8 (rows, cols, 3). A grey image that is not
        uint8 goes through ``window`` (None/"auto" chooses one from the data and ``modality``; a preset
        name, a :class:`Window` or (level, width)); a grey uint8 image without a window is used as is.
        ``spacing``: (row, col) pixel size in mm; non-square pixels are resized to their true
        proportions for the encoder (None: square). Runs the encoder unless the embedding is cached.
        Returns the embedding.
        """
        array = np.asarray(image)
        if array.ndim not in (2, 3):
            raise ValueError(f"set_image expects (rows, cols) or (rows, cols, 3); got shape {array.shape}")
        item = self._item(lambda: array, self._resolve_window(array, window, modality), pixel_aspect(spacing))
        embedding = self._obtain([item])[0]
        with self._lock:
            self._image = item
            self._volume = None
            self.current_plane = None
        return embedding

    def set_volume(self, volume: np.ndarray, axis: int = 0, window: WindowArg = None, modality: Optional[str] = None,
                   spacing: Optional[Sequence[float]] = None) -> Window | None:
        """Use a 3D volume (plane, row, col); planes along ``axis`` are embedded lazily or by :meth:`prefetch`.

        The window is resolved once for the whole volume so every plane is mapped to 8 bits alike.
        ``spacing``: (plane, row, col) voxel size in mm; a plane whose pixels are not square (a coronal
        plane of a CT with thick slices) is resized to its true proportions for the encoder (None:
        square pixels). Returns the window (None for a uint8 volume without one). Cancels a running
        prefetch.
        """
        array = np.asarray(volume)
        if array.ndim != 3:
            raise ValueError(f"set_volume expects a 3D array (plane, row, col); got shape {array.shape}")
        if axis not in (0, 1, 2, -1, -2, -3):
            raise ValueError(f"axis must be 0, 1 or 2; got {axis}")
        if min(array.shape) < 1:
            raise ValueError(f"cannot segment an empty volume of shape {array.shape}")
        aspect = 1.0
        if spacing is not None:
            values = [float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(-1)]
            if len(values) != 3:
                raise ValueError(f"spacing must be three numbers (plane, row, col) in mm; got {values}")
            aspect = pixel_aspect([v for i, v in enumerate(values) if i != axis % 3])
        resolved = None if (window is None and array.dtype == np.uint8) else resolve_window(window, array, modality)
        self.cancel()
        with self._lock:
            self._volume = _Volume(array, axis % 3, resolved, aspect)
            self._image = None
            self.current_plane = self._volume.count // 2
        return resolved

    def plane_image(self, plane: int) -> np.ndarray:
        """Volume plane ``plane`` along the volume's axis as stored: (rows, cols), the volume's dtype
        and units (HU for CT), before any window. A view, not a copy."""
        volume = self._volume
        if volume is None:
            raise ValueError("no volume is set: call set_volume(...) first")
        if not isinstance(plane, (int, np.integer)) or not 0 <= plane < volume.count:
            raise ValueError(f"plane {plane} is outside the volume: axis {volume.axis} has {volume.count} planes")
        return volume.plane(int(plane))

    def _plane_item(self, plane: int, volume: Optional[_Volume] = None) -> _Item:
        volume = volume if volume is not None else self._volume
        if volume is None:
            raise ValueError("no volume is set: call set_volume(...) first")
        if not isinstance(plane, (int, np.integer)) or not 0 <= plane < volume.count:
            raise ValueError(f"plane {plane} is outside the volume: axis {volume.axis} has {volume.count} planes")
        plane = int(plane)
        model_key = self.model.cache_key
        with self._lock:
            cached = volume.items.get(plane)
        if cached is not None and cached[0] == model_key:
            return cached[1]
        item = self._item(lambda: volume.plane(plane), volume.window, volume.pixel_aspect)
        with self._lock:
            volume.items[plane] = (model_key, item.light())
        return item

    # ------------------------------------------------------------------------------------ embeddings

    def _finish(self, key: str, pending: _Pending, embedding: Optional[Embedding], error: Optional[BaseException]) -> None:
        with self._lock:
            pending.result, pending.error = embedding, error
            self._inflight.pop(key, None)
        pending.event.set()

    def _obtain(self, items: Sequence[_Item]) -> list[Embedding]:
        """Embeddings for ``items``: memory, then disk, then one encoder call for the rest.

        A key being encoded by another thread is waited for, never encoded twice.
        """
        results: dict[str, Embedding] = {}
        claimed: list[tuple[_Item, _Pending]] = []
        waiting: list[tuple[_Item, _Pending]] = []
        seen: set[str] = set()
        with self._lock:
            for item in items:
                if item.key in results or item.key in seen:
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
        unfinished = {item.key: (item, pending) for item, pending in claimed}
        try:
            to_encode = []
            for item, pending in claimed:
                embedding = self.disk.get(item.key) if self.disk is not None else None
                if embedding is None:
                    to_encode.append((item, pending))
                    continue
                with self._lock:
                    self.stats.disk_hits += 1
                self.memory.put(item.key, embedding)
                results[item.key] = embedding
                self._finish(item.key, pending, embedding, None)
                del unfinished[item.key]
            if to_encode:
                embeddings = self._encode([item for item, _ in to_encode])
                for (item, pending), embedding in zip(to_encode, embeddings):
                    self.memory.put(item.key, embedding)
                    if self.disk is not None:
                        self.disk.put_later(item.key, embedding)
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
                results[item.key] = self._obtain([item])[0]
            else:
                results[item.key] = pending.result
        return [results[item.key] for item in items]

    def _encode(self, items: Sequence[_Item]) -> list[Embedding]:
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

    def embedding(self, plane: Optional[int] = None) -> Embedding:
        """The embedding of the current image, or of volume ``plane`` (computed if needed)."""
        return self._obtain([self._target_item(plane)])[0]

    def embed_planes(self, planes: Optional[Sequence[int]] = None, callback: Optional[ProgressCallback] = None) -> int:
        """Embed volume planes now (all by default), ``batch_size`` per encoder call; returns images encoded."""
        if self._volume is None:
            raise ValueError("no volume is set: call set_volume(...) first")
        order = list(range(self._volume.count)) if planes is None else [int(p) for p in planes]
        before = self.stats.images_encoded
        done = 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            self._obtain([self._plane_item(p) for p in batch])
            for plane in batch:
                done += 1
                if callback is not None:
                    callback(done, len(order), plane)
        return self.stats.images_encoded - before

    # ------------------------------------------------------------------------------------ prefetch

    def _planes_that_fit(self) -> int:
        """How many plane embeddings the memory cache holds (all planes when a disk cache exists)."""
        if self.disk is not None or self._volume is None:
            return self.plane_count
        height, width = (int(v) for v in self.sam.prompt_encoder.image_embedding_size)
        per_plane = max(1, int(self.sam.prompt_encoder.embed_dim) * height * width * 4)  # float32
        return max(1, min(self.plane_count, self.memory.max_bytes // per_plane))

    def prefetch(self, order: Optional[Sequence[int]] = None, callback: Optional[ProgressCallback] = None,
                 center: Optional[int] = None) -> PrefetchHandle:
        """Embed volume planes in a background thread and return its handle (``cancel()``, ``wait()``).

        Default order: plane ``center`` (else the current plane), then outwards (k, k+1, k-1, k+2,
        ...), limited to what the memory cache holds when there is no disk cache.
        ``callback(done, total, plane)`` reports progress from the worker thread. A running prefetch
        is cancelled first.
        """
        if self._volume is None:
            raise ValueError("no volume is set: call set_volume(...) first")
        count = self._volume.count
        if order is None:
            if center is None:
                center = self.current_plane if self.current_plane is not None else count // 2
            order = outward_order(center, count)[: self._planes_that_fit()]
        else:
            order = [int(p) for p in order]
            bad = [p for p in order if not 0 <= p < count]
            if bad:
                raise ValueError(f"prefetch planes {bad[:5]} are outside the volume: axis has {count} planes")
        self.cancel()
        volume = self._volume  # a later set_volume must not redirect this worker

        def embed_batch(planes: list[int]) -> None:
            self._obtain([self._plane_item(p, volume) for p in planes])

        handle = PrefetchHandle(order, embed_batch, self.batch_size, callback)
        self._prefetch = handle
        return handle.start()

    def cancel(self) -> None:
        """Cancel the running prefetch, if any (the plane being encoded finishes)."""
        if self._prefetch is not None:
            self._prefetch.cancel()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until the embeddings computed so far are in the disk cache (they are written on a
        background thread); False if ``timeout`` seconds ran out first. True at once without one."""
        return self.disk.flush(timeout) if self.disk is not None else True

    def close(self) -> None:
        """Cancel background work, wait for it to stop and for the disk cache writes to finish."""
        if self._prefetch is not None:
            self._prefetch.cancel()
            self._prefetch.join()
        self.flush()

    # ------------------------------------------------------------------------------------ prediction

    def _target_item(self, plane: Optional[int]) -> _Item:
        if self._volume is not None:
            if plane is None:
                plane = self.current_plane
            return self._plane_item(plane)
        if plane is not None:
            raise ValueError("plane= is only valid after set_volume(...)")
        if self._image is None:
            raise ValueError("no image is set: call set_image(...) or set_volume(...) first")
        return self._image

    def _context(self, key: str, embedding: Embedding) -> DecoderContext:
        with self._lock:
            previous = self._contexts.get(key)
            if previous is None:
                previous = DecoderContext(embedding=embedding.features.to(self.device)[None])
            context = self._decoder.context(previous.embedding, previous)
            self._contexts[key] = context
            self._contexts.move_to_end(key)
            while len(self._contexts) > 4:
                self._contexts.popitem(last=False)
        return context

    def predict(
        self,
        points=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask: Optional[bool] = None,
        plane: Optional[int] = None,
        candidate: Optional[int] = None,
    ) -> Prediction:
        """Predict one mask from prompts on the current image or on volume ``plane``.

        ``points``: (N, 2) as (row, col); ``point_labels``: (N,) 1 = object, 0 = background (default all 1).
        ``box``: (row0, col0, row1, col1). ``mask_input``: low-res logits (L, L) or (1, L, L), e.g. a
        previous ``Prediction.logits``. ``multimask``: None chooses as SAM's authors recommend — one
        point alone (no box, no mask) is ambiguous, so the decoder's three masks are computed and the
        best-scoring one returned; a box alone returns its single mask, with the three multimask
        masks of the same decoder call as alternatives (a box around a ring or a hollow organ may mean
        the ring or all it encloses); anything else gives one mask. True or False forces three masks
        or one. ``candidate``: return that one of the masks (0-based, in ``candidate_scores`` order)
        instead of the default one — how a user steps through the other readings of an ambiguous
        prompt. Raises ValueError for a prompt outside the image or a candidate the decoder did not
        return.
        """
        if points is None and box is None and mask_input is None:
            raise ValueError("predict needs at least one prompt: points, box or mask_input")
        if points is None and point_labels is not None:
            raise ValueError("point_labels were given without points")
        item = self._target_item(plane)
        geometry = item.geometry
        coords = labels = None
        if points is not None:
            points_rc, labels = validate_points(points, point_labels, geometry.original_size)
            coords = geometry.points_to_sam(points_rc)
        box_xy = geometry.box_to_sam(validate_box(box, geometry.original_size)) if box is not None else None
        mask_tensor = None
        if mask_input is not None:
            mask_tensor = self._mask_tensor(mask_input)
        if multimask is None:
            multimask = coords is not None and len(coords) == 1 and box_xy is None and mask_tensor is None
            box_alone = box_xy is not None and coords is None and mask_tensor is None
            outputs = [1, 2, 3] if multimask else [0, 1, 2, 3] if box_alone else [0]
        else:
            outputs = [1, 2, 3] if multimask else [0]

        embedding = self._obtain([item])[0]
        if self._volume is not None:
            self.current_plane = plane if plane is not None else self.current_plane
        with torch.inference_mode():
            low_res, scores = self._decode(item.key, embedding, coords, labels, box_xy, mask_tensor, outputs)
            index = int(torch.argmax(scores[0]).item()) if multimask else 0
            if candidate is not None:
                count = int(scores.shape[1])
                if not 0 <= int(candidate) < count:
                    raise ValueError(f"candidate {candidate} does not exist: this prompt gives {count} mask(s)")
                index = int(candidate)
            logits = upscale_logits(low_res[:, index : index + 1], geometry)
            mask = (logits[0, 0] > self.sam.mask_threshold).cpu().numpy()
        candidate_logits = low_res[0].float().cpu().numpy()
        candidate_scores = scores[0].float().cpu().numpy()
        return Prediction(
            mask=mask,
            score=float(candidate_scores[index]),
            logits=candidate_logits[index],
            candidate_scores=candidate_scores,
            candidate_logits=candidate_logits,
            index=index,
            multimask=bool(multimask),
            plane=None if self._volume is None else int(self.current_plane),
        )

    def _mask_tensor(self, mask_input) -> torch.Tensor:
        expected = tuple(int(v) for v in self.sam.prompt_encoder.mask_input_size)
        array = np.asarray(mask_input, dtype=np.float32)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.shape != expected:
            raise ValueError(
                f"mask_input must be low-resolution logits of shape {expected} (a previous Prediction.logits); got {array.shape}"
            )
        return torch.as_tensor(array, device=self.device)[None, None]

    def _decode(self, key, embedding, coords, labels, box_xy, mask_tensor, outputs: list[int]):
        """Prompt encoder + mask decoder → low-res logits (1, k, L, L) and scores (1, k) of the
        decoder's mask tokens ``outputs`` (0 = the single-mask output, 1–3 = the multimask outputs)."""
        device = self.device
        points = None
        if coords is not None:
            points = (
                torch.as_tensor(coords, dtype=torch.float, device=device)[None],
                torch.as_tensor(labels, dtype=torch.int, device=device)[None],
            )
        boxes = torch.as_tensor(box_xy, dtype=torch.float, device=device)[None] if box_xy is not None else None
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=mask_tensor)
        outputs = [i for i in outputs if i < self.sam.mask_decoder.num_mask_tokens]
        if self._decoder is not None and self._decoder.usable:
            context = self._context(key, embedding)
            low_res, iou = self._decoder(context, sparse, dense if mask_tensor is not None else None, outputs)
            return low_res, iou[:, outputs]
        features = embedding.features.to(device)[None]
        parts = [
            self.sam.mask_decoder(
                image_embeddings=features,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            for multimask in ([False] if 0 in outputs else []) + ([True] if max(outputs) > 0 else [])
        ]
        return torch.cat([low for low, _ in parts], dim=1), torch.cat([iou for _, iou in parts], dim=1)
