"""Task-specific distillation: a fine-tuned SAM-family teacher into a small, fast student (Qt-free).

>>> from napari_vfmseg.training.distill import DistillConfig, distill, load_teacher
>>> teacher = load_teacher("builtin", adapter="brain.safetensors")               # doctest: +SKIP
>>> result = distill(teacher, [volume], "student.safetensors", config=DistillConfig())   # doctest: +SKIP

Modules: :mod:`.config` (settings, progress, result), :mod:`.transfer` (the transfer set),
:mod:`.targets` (teacher pass, grid matching, pseudo-objects), :mod:`.steps` (the losses),
:mod:`.loop` (stages, checkpoints, cancel), :mod:`.student_file` (student build and files),
:mod:`.measure` (encoder times, agreement), :mod:`.api` (one call). The student architecture is
:mod:`napari_vfmseg.models.student`; ``load_model(path)`` reads student files.
"""

from napari_vfmseg.training.distill.api import apply_teacher_adapter, distill, load_teacher
from napari_vfmseg.training.distill.config import STAGES, DistillConfig, DistillProgress, DistillResult
from napari_vfmseg.training.distill.loop import Distiller
from napari_vfmseg.training.distill.student_file import build_student, read_checkpoint, save_student
from napari_vfmseg.training.distill.transfer import TransferImage, build_transfer_set, synthetic_images, volume_planes

__all__ = [
    "STAGES",
    "DistillConfig",
    "DistillProgress",
    "DistillResult",
    "Distiller",
    "TransferImage",
    "apply_teacher_adapter",
    "build_student",
    "build_transfer_set",
    "distill",
    "load_teacher",
    "read_checkpoint",
    "save_student",
    "synthetic_images",
    "volume_planes",
]
