"""The pre-training data stream: one batch of synthetic slices per step, seeded by the step number.

Batch ``step`` is drawn from a :class:`~napari_vfmseg.training.synth.SynthGenerator` seeded with
``(seed, step)``, so the stream is the same whether it is made in this process or in ``workers``
DataLoader processes (worker ``w`` makes steps ``w, w + workers, ...`` and the loader hands them
out in step order), and a resumed run continues the stream where the checkpoint left it.

Each label map is rendered ``renders`` times with independent appearances (the label map is the
costly part), and each image gets ``objects`` targets chosen among its parts, organs, tubes, small
structures and (less often) the body; images with fewer objects repeat some.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from napari_vfmseg.training.synth import SynthConfig, SynthGenerator

__all__ = ["StreamConfig", "SynthStream", "step_batch", "batch_loader"]


@dataclass(frozen=True)
class StreamConfig:
    size: int = 256
    label_maps: int = 8         # label maps per step
    renders: int = 1            # appearances per label map (images per step = label_maps × renders)
    objects: int = 4            # targets per image
    seed: int = 0
    body_weight: float = 0.3    # the body outline is a rarer target than organs and parts

    @property
    def images(self) -> int:
        return self.label_maps * self.renders


def _pick_objects(kind: list[str], count: int, body_weight: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``count`` objects, without repetition while there are enough."""
    weight = torch.tensor([body_weight if k == "body" else 1.0 for k in kind])
    replace = len(kind) < count
    return torch.multinomial(weight, count, replacement=replace, generator=generator)


def step_batch(cfg: StreamConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (I, S, S) float32 in [0, 1] and targets (I, K, S, S) bool of one step (on the CPU)."""
    seed = cfg.seed * 1_000_003 + step
    gen = SynthGenerator(SynthConfig(size=cfg.size), seed=seed)
    pick = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(cfg.label_maps):
        labels, objects, _, kind, hosts = gen.anatomy()
        for _ in range(cfg.renders):
            image = gen.appearance(labels, hosts)
            target = objects[_pick_objects(kind, cfg.objects, cfg.body_weight, pick)]
            flip = int(torch.randint(0, 4, (), generator=pick))
            if flip & 1:
                image, target = image.flip(-1), target.flip(-1)
            if flip & 2:
                image, target = image.transpose(-1, -2), target.transpose(-1, -2)
            images.append(image.float().contiguous())
            targets.append(target.contiguous())
    return torch.stack(images), torch.stack(targets)


class SynthStream(IterableDataset):
    """Steps ``start .. stop-1`` of the stream; each worker makes every ``workers``-th step."""

    def __init__(self, cfg: StreamConfig, start: int, stop: int):
        super().__init__()
        self.cfg, self.start, self.stop = cfg, start, stop

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        for step in range(self.start + worker, self.stop, workers):
            yield step_batch(self.cfg, step)


def batch_loader(cfg: StreamConfig, start: int, stop: int, workers: int = 0) -> DataLoader:
    """Batches of steps ``start .. stop-1`` in step order, made in ``workers`` processes (0: here)."""
    return DataLoader(SynthStream(cfg, start, stop), batch_size=None, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None,
                      persistent_workers=False)
