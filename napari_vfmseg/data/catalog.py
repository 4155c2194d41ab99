"""The shipped samples: what each one is, where its files live inside the sample folder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from napari_vfmseg.data.phantoms import (
    ABDOMEN_CT_LABELS,
    ABDOMEN_CT_SHAPE,
    ABDOMEN_CT_SPACING,
    BRAIN_MR_LABELS,
    BRAIN_MR_SHAPE,
    BRAIN_MR_SPACING,
)
from napari_vfmseg.data.ultrasound import ULTRASOUND_LABELS, ULTRASOUND_SHAPE, ULTRASOUND_SPACING

__all__ = ["SampleInfo", "SAMPLES", "GENERATOR_VERSION"]

# Bump when a generator's output changes, so per-user caches are rebuilt rather than reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SampleInfo:
    """One sample: an image and its ground-truth label map, both relative to the sample folder.

    Attributes:
        name: key used by :func:`napari_vfmseg.data.sample_paths`.
        title: one line for menus.
        image: image path relative to the sample folder (a folder for a DICOM series).
        labels: label-map path relative to the sample folder (same geometry as the image).
        image_format: "dicom-series", "nifti" or "png".
        modality: "CT", "MR" or "US".
        shape: array shape, (plane, row, col) or (row, col).
        spacing: voxel size in mm, same axis order.
        seed: generator seed the shipped files were made with.
        label_names: label id → structure name (0, background, is not listed).
        description: a few sentences for docs and tooltips.
    """

    name: str
    title: str
    image: str
    labels: str
    image_format: str
    modality: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    seed: int
    label_names: Mapping[int, str] = field(default_factory=dict)
    description: str = ""


_SAMPLES = (
    SampleInfo(
        name="abdomen_ct",
        title="Abdomen CT phantom (DICOM series + labels)",
        image="abdomen_ct",
        labels="abdomen_ct_labels.nii.gz",
        image_format="dicom-series",
        modality="CT",
        shape=ABDOMEN_CT_SHAPE,
        spacing=ABDOMEN_CT_SPACING,
        seed=0,
        label_names=MappingProxyType(dict(ABDOMEN_CT_LABELS)),
        description=(
            "Synthetic contrast-enhanced abdominal CT in HU, stored as a DICOM series (one int16 "
            "file per plane, RescaleIntercept -1024). Liver with enhancing vessels and a 9.6 mm "
            "hypodense lesion, spleen, kidneys, aorta, a 10 mm ureter wandering across planes, "
            "vertebrae; 4 mm planes, 1.6 mm pixels."
        ),
    ),
    SampleInfo(
        name="brain_mr",
        title="Brain MR phantom (NIfTI + labels)",
        image="brain_mr.nii.gz",
        labels="brain_mr_labels.nii.gz",
        image_format="nifti",
        modality="MR",
        shape=BRAIN_MR_SHAPE,
        spacing=BRAIN_MR_SPACING,
        seed=0,
        label_names=MappingProxyType(dict(BRAIN_MR_LABELS)),
        description=(
            "Synthetic T1-weighted brain MR (int16 NIfTI) with scalp, skull, CSF, folded cortex, "
            "white matter, deep grey nuclei, lateral ventricles and a 9 mm white-matter lesion; "
            "bias field and Rician noise; 3 mm planes, 1.2 mm pixels, off-centre origin."
        ),
    ),
    SampleInfo(
        name="ultrasound_2d",
        title="Ultrasound phantom, 2D (PNG + labels)",
        image="ultrasound_2d.png",
        labels="ultrasound_2d_labels.png",
        image_format="png",
        modality="US",
        shape=ULTRASOUND_SHAPE,
        spacing=ULTRASOUND_SPACING,
        seed=0,
        label_names=MappingProxyType(dict(ULTRASOUND_LABELS)),
        description=(
            "Synthetic B-mode sector image (uint8 PNG) with speckle, a bright organ capsule, "
            "an anechoic cyst with posterior enhancement, a hyperechoic nodule and depth-dependent "
            "attenuation. PNG stores no pixel size: the spacing listed is nominal."
        ),
    ),
)

SAMPLES: Mapping[str, SampleInfo] = MappingProxyType({s.name: s for s in _SAMPLES})
