"""Fine-tuning SAM-family models on the user's own labels (Qt-free).

>>> from napari_vfmseg.training import pairs_from_volume, split_by_plane_blocks, TrainConfig, fine_tune
>>> pairs = pairs_from_volume(ct, labels, window="soft_tissue")            # doctest: +SKIP
>>> train, val = split_by_plane_blocks(pairs, val_fraction=0.2)            # doctest: +SKIP
>>> result = fine_tune(model, train, val, TrainConfig(mode="decoder"))     # doctest: +SKIP
>>> result.save("liver.safetensors")                                       # doctest: +SKIP
>>> apply_adapter(other_session_model, "liver.safetensors")                # doctest: +SKIP

Modules: :mod:`.prompts` (prompt simulation), :mod:`.data` (pairs, split, augmentation),
:mod:`.losses`, :mod:`.metrics` (Dice, IoU, NoC, baselines), :mod:`.adapters` (safetensors files),
:mod:`.train_config` (settings and results), :mod:`.forward` (decoder passes), :mod:`.model_state`
(adapter layers and snapshots), :mod:`.trainer` (the loop), :mod:`.rounds` and :mod:`.measures` (the
viewer's rounds). LoRA layers live in :mod:`napari_vfmseg.models.lora`.
"""

from napari_vfmseg.training.adapters import (
    AdapterError,
    AdapterInfo,
    active_adapter,
    apply_adapter,
    read_adapter,
    remove_adapter,
    save_adapter,
)
from napari_vfmseg.training.data import (
    LabelledImage,
    augment,
    pairs_from_folder,
    pairs_from_volume,
    split_by_plane_blocks,
)
from napari_vfmseg.training.metrics import (
    EvaluationReport,
    dice,
    evaluate_volume,
    interactive_protocol,
    iou,
    noc,
    segmenter_plane_predictor,
)
from napari_vfmseg.training.prompts import correction_click, interior_point, jitter_box, simulate_prompts
from napari_vfmseg.training.trainer import TrainConfig, Trainer, TrainProgress, TrainResult, fine_tune

__all__ = [
    "AdapterError",
    "AdapterInfo",
    "EvaluationReport",
    "LabelledImage",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "Trainer",
    "active_adapter",
    "apply_adapter",
    "augment",
    "correction_click",
    "dice",
    "evaluate_volume",
    "fine_tune",
    "interactive_protocol",
    "interior_point",
    "iou",
    "jitter_box",
    "noc",
    "pairs_from_folder",
    "pairs_from_volume",
    "read_adapter",
    "remove_adapter",
    "save_adapter",
    "segmenter_plane_predictor",
    "simulate_prompts",
    "split_by_plane_blocks",
]
