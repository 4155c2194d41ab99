"""Segmenter: prompts on a 2D slice or a volume plane → a boolean mask, with SAM-family models.

The expensive step (the image encoder) is separate from the cheap one (prompt encoder + mask
decoder), as in segment-anything's ``SamPredictor``: :class:`Segmenter` is the cheap path and asks
its :class:`~napari_vfmseg.engine.embeddings.EmbeddingProvider` for embeddings (memory cache, disk
cache, encoder; that module also lists which lock guards what). Given an RGB uint8 image and the
default settings, masks and scores equal ``SamPredictor``'s for the same weights and prompts
(within fp32 rounding), except where a small box is segmented on a zoomed crop
(:mod:`napari_vfmseg.engine.zoom`; on by default for small encoders only, ``zoom=None`` turns it off).

Coordinates are napari's: a point is (row, col), a box (row0, col0, row1, col1), in pixels of the
slice, pixel centres at integer coordinates.
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from napari_vfmseg.engine.cache import DiskCache, Embedding, MemoryCache, lazy_scan_fingerprint
from napari_vfmseg.engine.decoding import Prediction, PromptDecoder
from napari_vfmseg.engine.embeddings import EmbeddingProvider, EncoderItem, EngineStats
from napari_vfmseg.engine.errors import NonFiniteImageError
from napari_vfmseg.engine.prefetch import PrefetchHandle, ProgressCallback, outward_order
from napari_vfmseg.engine.preprocess import (
    PreparedImage,
    pixel_aspect,
    prepare_image,
    upscale_logits,
    validate_box,
    validate_points,
)
from napari_vfmseg.engine.sources import VolumeSource, WindowArg, image_window, require_finite, volume_source
from napari_vfmseg.engine.zoom import Crop, LogitFrames, ZoomPolicy, bounding_box_of, crop_for_box, default_zoom
from napari_vfmseg.io.windowing import Window
from napari_vfmseg.models.base import LoadedModel

__all__ = ["Segmenter", "Prediction", "EngineStats"]


class Segmenter:
    """Interactive SAM segmentation of 2D slices and volume planes.

    ``model``: a :class:`~napari_vfmseg.models.base.LoadedModel`. ``cache_dir``: folder for the disk
    cache (None = memory only); ``cache_max_bytes``: its size limit, least recently used entries
    evicted first (None: ``VFMSEG_CACHE_MAX_BYTES`` or 4 GiB). ``memory_bytes``: memory cache budget
    (default min(2 GiB, 10% of RAM)). ``accelerate``: encoder mode, one of "sdpa" (default, exact
    within fp32 rounding), "none" (upstream modules as they are, decoder included), "bf16", "int8"
    (approximate). ``batch_size``: planes per encoder call when prefetching (default 1 on CPU, 4 on
    GPU). The input convention follows ``model.info["preprocess"]`` ("sam" by default, or "medsam").

    ``zoom``: when a box is small (see :class:`~napari_vfmseg.engine.zoom.ZoomPolicy`) its mask is
    predicted on a crop around it, encoded at the model's full resolution (one more encoder pass,
    kept in the memory cache, never on disk). "auto" (default): on for models with a small encoder
    (the built-in one, distilled students), off for SAM ViTs; None: never; or a ``ZoomPolicy``.
    ``Prediction.crop`` says which crop a mask came from; logits fed back as ``mask_input`` are
    carried over to the next prediction's crop (or whole slice) by the segmenter itself.

    Applying or removing an adapter that changes the encoder (``training.apply_adapter``) changes
    ``model.cache_key``; the next request keys the image or plane again, so no stale embedding is
    ever served.
    """

    def __init__(
        self,
        model: LoadedModel,
        cache_dir=None,
        memory_bytes: Optional[int] = None,
        accelerate: str = "sdpa",
        batch_size: Optional[int] = None,
        cache_max_bytes: Optional[int] = None,
        zoom: Union[str, ZoomPolicy, None] = "auto",
    ) -> None:
        self.model = model
        self.sam = model.sam
        self.sam.eval()
        self.device = torch.device(model.device)
        self.accelerate = accelerate
        self.preprocess = str((model.info or {}).get("preprocess") or "sam")
        self.embeddings = EmbeddingProvider(model, cache_dir, memory_bytes, accelerate, self.preprocess,
                                            cache_max_bytes=cache_max_bytes)
        self._decoder = PromptDecoder(self.sam, self.device, fast=accelerate != "none")
        self.batch_size = int(batch_size) if batch_size else (4 if self.device.type == "cuda" else 1)

        self._lock = threading.RLock()  # guards _image, _volume (and its items), _current_plane, _prefetch
        self._image: Optional[EncoderItem] = None
        self._volume: Optional[VolumeSource] = None
        self._prefetch: Optional[PrefetchHandle] = None
        self._current_plane: Optional[int] = None
        self._image_pixels: Optional[tuple] = None  # (array, window, aspect) of the 2D image, for crops
        if isinstance(zoom, str):
            if zoom != "auto":
                raise ValueError(f"zoom must be 'auto', None or a ZoomPolicy; got {zoom!r}")
            zoom = default_zoom(self.sam)
        self.zoom: Optional[ZoomPolicy] = zoom
        self._frames = LogitFrames()  # which crop (or whole slice) each returned logits array belongs to

    # ------------------------------------------------------------------------------------ properties

    @property
    def memory(self) -> MemoryCache:
        return self.embeddings.memory

    @property
    def disk(self) -> Optional[DiskCache]:
        return self.embeddings.disk

    @property
    def stats(self) -> EngineStats:
        return self.embeddings.stats

    @property
    def encoder_calls(self) -> int:
        """Encoder forward passes run by this segmenter (cache hits run none)."""
        return self.stats.encoder_calls

    @property
    def encoder_size(self) -> int:
        return self.embeddings.encoder_size

    @property
    def numerics(self) -> str:
        """Numerics tag of the embeddings ("fp32", "bf16", "int8"), part of every cache key."""
        return self.embeddings.numerics

    @property
    def current_plane(self) -> Optional[int]:
        """The volume plane prompts go to when ``predict`` names none (None without a volume)."""
        with self._lock:
            return self._current_plane

    @current_plane.setter
    def current_plane(self, plane: Optional[int]) -> None:
        with self._lock:
            self._current_plane = None if plane is None else int(plane)

    @property
    def plane_count(self) -> int:
        """Planes along the volume's axis (0 when no volume is set)."""
        volume = self._volume
        return volume.count if volume is not None else 0

    @property
    def volume_axis(self) -> Optional[int]:
        """The axis planes are taken along (None when no volume is set)."""
        volume = self._volume
        return volume.axis if volume is not None else None

    def has_embedding(self, plane: int) -> bool:
        """True when plane ``plane`` of the volume is in the memory or disk cache (no encoder run)."""
        try:
            item = self._plane_item(plane)
        except NonFiniteImageError:
            return False
        return self.embeddings.has(item.key)

    # ------------------------------------------------------------------------------------ images

    def _item(self, get_image: Callable[[], np.ndarray], window: Optional[Window], aspect: float = 1.0,
              scan: Optional[Callable[[], str]] = None, persist: bool = True) -> EncoderItem:
        """Prepare an image now and key it; ``get_image`` must return the same pixels when called again."""
        size, preprocess = self.encoder_size, self.preprocess

        def make() -> PreparedImage:
            return prepare_image(get_image(), window, size, preprocess, pixel_aspect=aspect)

        return self.embeddings.item(make, scan=scan, persist=persist)

    def _crop_item(self, plane: Optional[int], crop: Crop) -> EncoderItem:
        """The encoder item of ``crop`` of volume ``plane`` (or of the 2D image when ``plane`` is None):
        windowed as the whole slice is, in its true proportions, kept out of the disk cache."""
        with self._lock:
            volume, image = self._volume, self._image_pixels
        if plane is not None and volume is not None:
            return self._item(lambda: crop.cut(volume.data_plane(plane)), volume.window, volume.pixel_aspect,
                              persist=False)
        if image is None:
            raise ValueError("no image is set: call set_image(...) or set_volume(...) first")
        array, window, aspect = image
        return self._item(lambda: crop.cut(array), window, aspect, persist=False)

    def set_image(self, image: np.ndarray, window: WindowArg = None, modality: Optional[str] = None,
                  spacing: Optional[Sequence[float]] = None) -> Embedding:
        """Embed a 2D image for :meth:`predict`.

        ``image``: grey (rows, cols) of any dtype, or RGB uint8 (rows, cols, 3). A grey image that is not
        uint8 goes through ``window`` (None/"auto" chooses one from the data and ``modality``; a preset
        name, a :class:`Window` or (level, width)); a grey uint8 image without a window is used as is.
        NaN and infinite pixels count as the window's lower end. ``spacing``: (row, col) pixel size in
        mm; non-square pixels are resized to their true proportions for the encoder (None: square).
        Runs the encoder unless the embedding is cached. Returns the embedding. Raises
        :class:`~napari_vfmseg.engine.errors.NonFiniteImageError` for an image without a finite pixel.
        """
        array = np.asarray(image)
        if array.ndim not in (2, 3):
            raise ValueError(f"set_image expects (rows, cols) or (rows, cols, 3); got shape {array.shape}")
        require_finite(array, f"the image of shape {array.shape}")
        resolved, aspect = image_window(array, window, modality), pixel_aspect(spacing)
        item = self._item(lambda: array, resolved, aspect, scan=lazy_scan_fingerprint(array))
        embedding = self.embeddings.obtain([item])[0]
        with self._lock:
            self._image = item
            self._image_pixels = (array, resolved, aspect)
            self._volume = None
            self._current_plane = None
        return embedding

    def set_volume(self, volume: np.ndarray, axis: int = 0, window: WindowArg = None, modality: Optional[str] = None,
                   spacing: Optional[Sequence[float]] = None) -> Window | None:
        """Use a 3D volume (plane, row, col); planes along ``axis`` are embedded lazily or by :meth:`prefetch`.

        The window is resolved once for the whole volume (from its finite voxels) so every plane is
        mapped to 8 bits alike. ``spacing``: (plane, row, col) voxel size in mm; a plane whose pixels
        are not square (a coronal plane of a CT with thick slices) is resized to its true proportions
        for the encoder (None: square pixels). Returns the window (None for a uint8 volume without
        one). Cancels a running prefetch. A plane without a finite voxel raises
        :class:`~napari_vfmseg.engine.errors.NonFiniteImageError` when it is prompted.
        """
        source = volume_source(volume, axis, window, modality, spacing)
        self.cancel()
        with self._lock:
            self._volume = source
            self._image = None
            self._image_pixels = None
            self._current_plane = source.count // 2
        return source.window

    def plane_image(self, plane: int) -> np.ndarray:
        """Volume plane ``plane`` along the volume's axis as stored: (rows, cols), the volume's dtype
        and units (HU for CT), before any window. A view, not a copy."""
        volume = self._volume
        if volume is None:
            raise ValueError("no volume is set: call set_volume(...) first")
        return volume.plane(volume.checked_plane(plane))

    def _plane_item(self, plane: int, volume: Optional[VolumeSource] = None) -> EncoderItem:
        """The encoder item of ``plane``, keyed for the model as it is now (remembered without pixels)."""
        volume = volume if volume is not None else self._volume
        if volume is None:
            raise ValueError("no volume is set: call set_volume(...) first")
        plane = volume.checked_plane(plane)
        with self._lock:
            cached = volume.items.get(plane)
        if cached is not None and self.embeddings.is_current(cached):
            return cached

        item = self._item(lambda: volume.data_plane(plane), volume.window, volume.pixel_aspect, scan=volume.scan)
        with self._lock:
            volume.items[plane] = item.light()
        return item

    # ------------------------------------------------------------------------------------ embeddings

    def embedding(self, plane: Optional[int] = None) -> Embedding:
        """The embedding of the current image, or of volume ``plane`` (computed if needed)."""
        return self.embeddings.obtain([self._target_item(plane)])[0]

    def _data_items(self, planes: Sequence[int], volume: VolumeSource) -> list[EncoderItem]:
        """Items of ``planes``, leaving out planes without a finite voxel (nothing to embed there)."""
        items = []
        for plane in planes:
            try:
                items.append(self._plane_item(plane, volume))
            except NonFiniteImageError:
                continue
        return items

    def embed_planes(self, planes: Optional[Sequence[int]] = None, callback: Optional[ProgressCallback] = None) -> int:
        """Embed volume planes now (all by default), ``batch_size`` per encoder call; returns images
        encoded. Planes without a finite voxel are skipped."""
        volume = self._volume
        if volume is None:
            raise ValueError("no volume is set: call set_volume(...) first")
        order = list(range(volume.count)) if planes is None else [int(p) for p in planes]
        before = self.stats.images_encoded
        done = 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            self.embeddings.obtain(self._data_items(batch, volume))
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
        is cancelled first. Planes without a finite voxel are skipped.
        """
        volume = self._volume  # a later set_volume must not redirect this worker
        if volume is None:
            raise ValueError("no volume is set: call set_volume(...) first")
        count = volume.count
        if order is None:
            if center is None:
                current = self.current_plane
                center = current if current is not None else count // 2
            order = outward_order(center, count)[: self._planes_that_fit()]
        else:
            order = [int(p) for p in order]
            bad = [p for p in order if not 0 <= p < count]
            if bad:
                raise ValueError(f"prefetch planes {bad[:5]} are outside the volume: axis has {count} planes")

        def embed_batch(planes: list[int]) -> None:
            self.embeddings.obtain(self._data_items(planes, volume))

        handle = PrefetchHandle(order, embed_batch, self.batch_size, callback)
        with self._lock:
            previous, self._prefetch = self._prefetch, handle
        if previous is not None:
            previous.cancel()
        return handle.start()

    def cancel(self) -> None:
        """Cancel the running prefetch, if any (the plane being encoded finishes)."""
        with self._lock:
            handle = self._prefetch
        if handle is not None:
            handle.cancel()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until the embeddings computed so far are in the disk cache (they are written on a
        background thread); False if ``timeout`` seconds ran out first, or if the writer thread died
        (its entries are then dropped with a warning). True at once without a disk cache."""
        return self.embeddings.flush(timeout)

    def close(self, timeout: Optional[float] = 30.0) -> bool:
        """Cancel background work, wait for it to stop and for the disk cache writes to finish, at
        most ``timeout`` seconds for the writes (None: no limit), then free the memory cache and the
        decoder's per-image tensors. Returns False, with a warning, when writes were left unfinished
        (a dead or stuck writer thread can never make ``close`` hang). A closed segmenter still
        works; it reads or computes embeddings again."""
        with self._lock:
            handle = self._prefetch
        if handle is not None:
            handle.cancel()
            handle.join()
        finished = self.flush(timeout)
        if not finished:
            warnings.warn(f"closing the segmenter with embedding cache writes unfinished after {timeout} s; "
                          "those entries are not on disk and will be computed again", stacklevel=2)
        self._decoder.clear()
        self.memory.clear()
        return finished

    # ------------------------------------------------------------------------------------ prediction

    def _target_item(self, plane: Optional[int]) -> EncoderItem:
        """The item prompts on ``plane`` (or the 2D image) go to."""
        return self._target(plane)[0]

    def _target(self, plane: Optional[int]) -> tuple[EncoderItem, Optional[int]]:
        """(the item prompts go to, its volume plane or None for a 2D image), keyed for the model as it is."""
        with self._lock:
            volume, image, current = self._volume, self._image, self._current_plane
        if volume is not None:
            plane = current if plane is None else plane
            return self._plane_item(plane, volume), int(plane)
        if plane is not None:
            raise ValueError("plane= is only valid after set_volume(...)")
        if image is None:
            raise ValueError("no image is set: call set_image(...) or set_volume(...) first")
        if not self.embeddings.is_current(image):  # an adapter changed the encoder since set_image
            fresh = self.embeddings.current(image)
            with self._lock:
                if self._image is image:
                    self._image = fresh
            image = fresh
        return image, None

    def predict(
        self,
        points=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask: Optional[bool] = None,
        plane: Optional[int] = None,
        candidate: Optional[int] = None,
        zoom: Union[bool, Crop, None] = None,
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
        prompt. ``zoom``: None follows the segmenter's policy (a small box is segmented on a crop
        around it), False always uses the whole slice, True zooms a small box even when the policy
        is off, a :class:`~napari_vfmseg.engine.zoom.Crop` forces that crop. Raises ValueError for a
        prompt outside the image or a candidate the decoder did not return,
        :class:`~napari_vfmseg.engine.errors.NonFiniteImageError` for a plane without a finite voxel.
        """
        if points is None and box is None and mask_input is None:
            raise ValueError("predict needs at least one prompt: points, box or mask_input")
        if points is None and point_labels is not None:
            raise ValueError("point_labels were given without points")
        item, plane = self._target(plane)
        plane_shape = tuple(item.geometry.original_size)
        points_rc = labels = None
        if points is not None:
            points_rc, labels = validate_points(points, point_labels, plane_shape)
        box_rc = validate_box(box, plane_shape) if box is not None else None
        policy = self._policy(zoom, item.geometry)
        crop = zoom if isinstance(zoom, Crop) else self._zoom_crop(box_rc, points_rc, mask_input, plane_shape,
                                                                   item.geometry, policy)
        prediction = self._predict_on(item, plane, crop, points_rc, labels, box_rc, mask_input, multimask, candidate)
        if crop is None and policy is not None and box_rc is None and mask_input is None and prediction.mask.any():
            # a click alone has no size: when its mask is small, segment the click again on a crop around it
            second = crop_for_box(bounding_box_of(prediction.mask), plane_shape, item.geometry.pixel_aspect, policy,
                                  points_rc)
            if second is not None:
                prediction = self._predict_on(item, plane, second, points_rc, labels, box_rc, None, multimask, candidate)
        if plane is not None:
            self.current_plane = plane
        return prediction

    def _policy(self, zoom: Union[bool, Crop, None], geometry) -> Optional[ZoomPolicy]:
        """The zoom policy of one request (None: the whole slice unless ``zoom`` is a Crop)."""
        if zoom is False or isinstance(zoom, Crop) or geometry.stretch:
            return None
        if zoom is True and self.zoom is None:
            return ZoomPolicy()
        return self.zoom

    def _zoom_crop(self, box_rc: Optional[np.ndarray], points_rc: Optional[np.ndarray], mask_input,
                   plane_shape: tuple[int, int], geometry, policy: Optional[ZoomPolicy]) -> Optional[Crop]:
        """The crop prompts go to under ``policy``: around a small box (holding the clicks too), or,
        for clicks that correct a mask made on a crop, that crop while it holds them; else None."""
        if policy is None:
            return None
        if box_rc is not None:
            return crop_for_box(box_rc, plane_shape, geometry.pixel_aspect, policy, points_rc)
        source = self._frames.frame_of(mask_input) if mask_input is not None else None
        if source is None or source[1] is None or source[2] != tuple(plane_shape):
            return None
        crop = source[1]
        if points_rc is not None:
            rows, cols = points_rc[:, 0], points_rc[:, 1]
            inside = (rows >= crop.row0) & (rows <= crop.row1 - 1) & (cols >= crop.col0) & (cols <= crop.col1 - 1)
            if not bool(np.all(inside)):
                return None
        return crop

    def _predict_on(self, item: EncoderItem, plane: Optional[int], crop: Optional[Crop],
                    points_rc: Optional[np.ndarray], labels: Optional[np.ndarray], box_rc: Optional[np.ndarray],
                    mask_input, multimask: Optional[bool], candidate: Optional[int]) -> Prediction:
        """Decode prompts (slice pixels, (row, col)) on the whole slice of ``item`` or on ``crop`` of it."""
        plane_shape = tuple(item.geometry.original_size)
        if crop is not None:
            item = self._crop_item(plane, crop)
            offset = crop.offset
            points_rc = None if points_rc is None else points_rc - offset
            box_rc = None if box_rc is None else box_rc - np.concatenate([offset, offset])
        geometry = item.geometry
        frame = (geometry, crop, plane_shape)
        coords = geometry.points_to_sam(points_rc) if points_rc is not None else None
        box_xy = geometry.box_to_sam(box_rc) if box_rc is not None else None
        if mask_input is not None:
            mask_input = self._frames.carry(mask_input, frame)
        mask_tensor = self._decoder.mask_tensor(mask_input) if mask_input is not None else None
        if multimask is None:
            multimask = coords is not None and len(coords) == 1 and box_xy is None and mask_tensor is None
            box_alone = box_xy is not None and coords is None and mask_tensor is None
            outputs = [1, 2, 3] if multimask else [0, 1, 2, 3] if box_alone else [0]
        else:
            outputs = [1, 2, 3] if multimask else [0]

        embedding = self.embeddings.obtain([item])[0]
        with torch.inference_mode():
            low_res, scores = self._decoder(item.key, embedding, coords, labels, box_xy, mask_tensor, outputs)
            index = int(torch.argmax(scores[0]).item()) if multimask else 0
            if candidate is not None:
                count = int(scores.shape[1])
                if not 0 <= int(candidate) < count:
                    raise ValueError(f"candidate {candidate} does not exist: this prompt gives {count} mask(s)")
                index = int(candidate)
            logits = upscale_logits(low_res[:, index : index + 1], geometry)
            mask = (logits[0, 0] > self.sam.mask_threshold).cpu().numpy()
        if crop is not None:
            mask = crop.paste(mask, plane_shape, fill=False)
        candidate_logits = low_res[0].float().cpu().numpy()
        candidate_scores = scores[0].float().cpu().numpy()
        self._frames.remember(candidate_logits, frame)
        return Prediction(
            mask=mask,
            score=float(candidate_scores[index]),
            logits=candidate_logits[index],
            candidate_scores=candidate_scores,
            candidate_logits=candidate_logits,
            index=index,
            multimask=bool(multimask),
            plane=plane,
            crop=crop,
        )
