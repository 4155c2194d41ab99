"""One hospital's side of a federation: its labelled scans, its base model and its rounds.

A :class:`Site` holds the site's own base model (checked against the federation's fingerprint
before it trains) and its labelled planes, split into training and held-out blocks of planes
(:func:`~napari_vfmseg.training.data.split_by_plane_blocks`). Each round it takes the global
adapter tensors, trains them locally (:func:`~napari_vfmseg.federated.local.train_lora`) and
returns only those tensors, its number of training objects and its metrics; images, labels and
embeddings stay in the object.

Data come as ``IMAGE:LABELS`` file pairs (:func:`parse_pair`) or as a folder that holds one
scan and its label map named ``NAME`` and ``NAME_labels`` (:func:`find_site_files`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.training.data import (
    IMAGE_SUFFIXES,
    MASK_TAGS,
    LabelledImage,
    pairs_from_volume,
    split_by_plane_blocks,
)

from napari_vfmseg.federated.config import FederatedConfig
from napari_vfmseg.federated.local import Plane, evaluate_planes, frame_planes, train_lora
from napari_vfmseg.federated.shared_lora import check_base, get_tensors, prepare_lora, set_tensors

__all__ = ["SiteData", "Site", "parse_pair", "find_site_files", "read_labelled_planes", "load_site_data"]


def parse_pair(spec: str) -> tuple[Path, Path]:
    """``IMAGE:LABELS`` → two paths (the last ':' splits, so Windows drive letters survive)."""
    image, sep, labels = str(spec).rpartition(":")
    if not sep or not image or not labels:
        raise ValueError(f"{spec!r}: expected IMAGE:LABELS (two files joined by ':')")
    return Path(image), Path(labels)


def _stem(name: str) -> tuple[str, bool]:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], True
    return name, False


def find_site_files(folder: str | Path) -> tuple[Path, Path]:
    """The scan and its label map in ``folder``: ``NAME.<ext>`` and ``NAME_labels.<ext>`` (also
    ``_label``, ``_mask``, ``_seg``...). Exactly one such pair must be there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: site data folder not found")
    tag = re.compile(r"^(?P<stem>.+?)[_\-.](?:" + "|".join(MASK_TAGS) + r")$", re.IGNORECASE)
    images, labels = {}, {}
    for path in sorted(folder.iterdir()):
        stem, known = _stem(path.name)
        if not known or not path.is_file():
            continue
        match = tag.match(stem)
        (labels if match else images)[match.group("stem") if match else stem] = path
    pairs = [(images[s], labels[s]) for s in sorted(images) if s in labels]
    if len(pairs) != 1:
        raise ValueError(f"{folder}: expected one scan with its label map (NAME.nii.gz and NAME_labels.nii.gz), "
                         f"found {len(pairs)} pairs among {len(images) + len(labels)} image files")
    return pairs[0]


def read_labelled_planes(image: str | Path, labels: str | Path, axis: int = 0, window=None,
                         min_pixels: int = 20) -> list[LabelledImage]:
    """The labelled planes of a scan and its label map (same shape and spacing, else an error naming
    both files), windowed as the engine windows the scan, each with its pixels' true aspect."""
    from napari_vfmseg.io import read_volume

    vol, lab = read_volume(image), read_volume(labels)
    if vol.array.shape != lab.array.shape:
        raise ValueError(f"{labels}: label map shape {lab.array.shape} differs from scan {image} {vol.array.shape}")
    if not np.allclose(vol.spacing, lab.spacing, rtol=1e-3, atol=1e-4):
        raise ValueError(f"{labels}: label map spacing {lab.spacing} differs from scan {image} {vol.spacing}")
    label_array = np.asarray(lab.array)
    if not np.issubdtype(label_array.dtype, np.integer):
        rounded = np.rint(label_array)
        if not np.array_equal(rounded, label_array):
            raise ValueError(f"{labels}: label map holds non-integer values; expected integer label ids")
        label_array = rounded.astype(np.int32)
    pairs = pairs_from_volume(np.asarray(vol.array), label_array, axis=axis, window=window, min_pixels=min_pixels,
                              source=Path(image).name, modality=vol.modality, spacing=vol.spacing)
    if not pairs:
        raise ValueError(f"{labels}: no plane along axis {axis} holds an object of at least {min_pixels} pixels")
    return pairs


@dataclass
class SiteData:
    """A site's planes: ``train`` for its rounds, ``heldout`` for its Dice (never trained on)."""

    name: str
    train: list[LabelledImage]
    heldout: list[LabelledImage]


def load_site_data(image: str | Path, labels: str | Path, config: FederatedConfig, name: Optional[str] = None,
                   axis: int = 0, window=None) -> SiteData:
    """Read a scan and its labels and split its labelled planes into training and held-out blocks."""
    pairs = read_labelled_planes(image, labels, axis=axis, window=window, min_pixels=config.min_pixels)
    if len(pairs) < 2:
        raise ValueError(f"{labels}: a site needs at least two labelled planes (one to train, one held out)")
    # Blocks of 4 planes, and no training plane right next to a held-out one (neighbouring planes
    # look alike and would flatter the held-out Dice), as in a fine-tuning round.
    # (A site with so few planes that the guard would leave nothing to train on keeps them.)
    for guard in (1, 0):
        train, heldout = split_by_plane_blocks(pairs, val_fraction=config.heldout_fraction, block_size=4,
                                               guard=guard, seed=config.seed)
        if train:
            break
    return SiteData(name or Path(image).name, train, heldout)


class Site:
    """A site's model and planes, ready for rounds.

    ``model`` is the site's own copy of the base model; it is modified in place (LoRA layers).
    """

    def __init__(self, name: str, model: LoadedModel, train: Sequence[LabelledImage],
                 heldout: Sequence[LabelledImage] = ()) -> None:
        self.name = name
        self.model = model
        self._pairs = (list(train), list(heldout))
        self._planes: Optional[tuple[list[Plane], list[Plane]]] = None
        self._config: Optional[FederatedConfig] = None
        self._names: list[str] = []

    @classmethod
    def from_data(cls, data: SiteData, model: LoadedModel) -> "Site":
        return cls(data.name, model, data.train, data.heldout)

    def _ready(self, config: FederatedConfig, base_fingerprint: str) -> None:
        check_base(self.model, base_fingerprint, self.name)
        if self._config is None or self._config.lora != config.lora or self._config.seed != config.seed \
                or self._config.strategy != config.strategy:
            self._names = prepare_lora(self.model, config)
            self._config = config
        if self._planes is None:
            train = frame_planes(self.model, self._pairs[0], config.min_pixels)
            if not train:
                raise ValueError(f"{self.name}: no training plane holds an object of {config.min_pixels} pixels")
            self._planes = (train, frame_planes(self.model, self._pairs[1], config.min_pixels))
        self._config = config

    @property
    def n_objects(self) -> int:
        """Training objects (the weight of this site's update); 0 before the first round."""
        return sum(len(p.ids) for p in self._planes[0]) if self._planes else 0

    def train_round(self, tensors: dict[str, np.ndarray], config: FederatedConfig, base_fingerprint: str,
                    server_round: int = 1) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        """Start from the global ``tensors``, train ``config.local_steps`` steps, and return the trained
        tensors (exactly the names received), the number of training objects and the metrics."""
        self._ready(config, base_fingerprint)
        if set(tensors) != set(self._names):
            raise ValueError(f"{self.name}: the server sent {len(tensors)} tensors, this site exchanges "
                             f"{len(self._names)} ({config.strategy}); the LoRA settings differ")
        set_tensors(self.model, tensors)
        seed = config.seed * 1_000_003 + server_round * 7_919 + sum(map(ord, self.name))
        result = train_lora(self.model, self._planes[0], self._names, config, seed=seed)
        metrics = {"train-loss": result.loss, "seconds": result.seconds}
        return get_tensors(self.model, self._names), self.n_objects, metrics

    def evaluate(self, tensors: dict[str, np.ndarray], config: FederatedConfig,
                 base_fingerprint: str) -> dict[str, float]:
        """Held-out Dice of the adapter given by ``tensors`` on this site's held-out planes."""
        self._ready(config, base_fingerprint)
        set_tensors(self.model, tensors)
        return evaluate_planes(self.model, self._planes[1])
