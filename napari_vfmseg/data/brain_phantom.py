"""The brain MR phantom: scalp, skull, CSF, ventricles, grey and white matter and a white-matter
lesion, with a bias field. Conventions in :mod:`napari_vfmseg.data.phantoms`, which re-exports it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_vfmseg.data.primitives import (
    ellipsoid_radius,
    make_grid,
    radial_depth,
    smooth_field,
    smoothstep,
    snapped_ellipsoid,
    tube_distance,
)
from napari_vfmseg.data.phantom_tools import (
    _blur_sigma_vox,
    _meta,
    _rng_streams,
)

BRAIN_MR_SHAPE = (48, 192, 160)
BRAIN_MR_SPACING = (3.0, 1.2, 1.2)
BRAIN_MR_LABELS: dict[int, str] = {
    1: "scalp",
    2: "skull",
    3: "cerebrospinal fluid",
    4: "ventricles",
    5: "grey matter",
    6: "white matter",
    7: "white-matter lesion",
}
BRAIN_MR_LESION_MM = 8.0
# Position of the volume in patient space: axis-aligned but not centred on the origin.
BRAIN_MR_CENTRE_ZYX = (22.0, 12.0, -3.0)


def make_brain_mr(
    seed: int = 0,
    shape: Sequence[int] = BRAIN_MR_SHAPE,
    spacing: Sequence[float] | None = None,
    noise_sigma: float = 16.0,
    bias_strength: float = 0.18,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """T1-weighted brain MR phantom (arbitrary scanner units, white matter ≈ 800), with labels.

    Anatomy (reference field of view 144 × 230 × 192 mm): scalp (skin, fat, galea), skull (dark
    tables, brighter diploë, varying thickness), subarachnoid CSF, folded cortex (gyri and sulci
    from the zero level set of a smooth random field), interhemispheric fissure, white matter,
    deep grey nuclei (thalami, caudate, lentiform; part of the grey-matter label), lateral
    ventricles (frontal, occipital and temporal horns) and third ventricle, and a hypointense
    periventricular white-matter lesion (nominal 8 mm; footprint 9.0 × 8.4 × 8.4 mm at the
    default shape). Then a smooth multiplicative bias field and Rician noise (magnitude of a
    complex signal with Gaussian noise).

    Args:
        seed: random seed; the same seed and shape give identical arrays.
        shape: (plane, row, col). Smaller shapes give the same anatomy at lower resolution.
        spacing: (plane, row, col) mm; ``None`` keeps the reference field of view (default
            spacing (3.0, 1.2, 1.2) mm at the default shape).
        noise_sigma: standard deviation of each of the two Gaussian noise channels.
        bias_strength: amplitude of the log bias field (0 → no bias field).

    Returns:
        image: float32 (plane, row, col), non-negative.
        labels: uint8 (plane, row, col); ids and names in ``BRAIN_MR_LABELS``.
        meta: spacing, origin (an axis-aligned, non-centred position), direction, label_names,
            seed, lesion_label, lesion_mm (voxel footprint in mm per axis), lesion_center_index.
    """
    grid = make_grid(shape, BRAIN_MR_SHAPE, BRAIN_MR_SPACING, spacing)
    rng_anat, rng_tex, rng_noise = _rng_streams(seed)
    z, y, x = grid.open()
    f32 = np.float32

    f_skull = smooth_field(rng_anat, grid, 30.0)
    f_fold = smooth_field(rng_anat, grid, 5.0)
    f_surface = smooth_field(rng_anat, grid, 20.0)
    f_bias = smooth_field(rng_anat, grid, 70.0)
    bias_tilt = rng_anat.uniform(-1.0, 1.0, size=3)

    head_c = (-20.0, 4.0, 0.0)
    head_semi = (88.0, 95.0, 76.0)
    depth = radial_depth((z, y, x), head_c, head_semi) + 1.2 * f_surface  # mm below the skin

    t1 = np.zeros(grid.shape, dtype=f32)
    lab = np.zeros(grid.shape, dtype=np.uint8)

    def paint(mask: np.ndarray, value: float, label: int | None = None) -> None:
        mask = np.broadcast_to(mask, grid.shape)
        t1[mask] = value
        if label is not None:
            lab[mask] = label

    skull_thick = np.maximum(6.5 + 1.5 * f_skull, 3.5)
    skull_out = 6.5
    skull_in = skull_out + skull_thick
    brain_top = skull_in + np.maximum(2.0 + 0.8 * f_surface, 0.8)  # CSF layer ~1–3 mm

    head = depth > 0.0
    paint(head, 460.0, 1)  # skin
    paint(depth > 1.5, 930.0, 1)  # subcutaneous fat (bright on T1)
    paint(depth > 4.8, 360.0, 1)  # galea / muscle
    paint(depth > skull_out, 70.0, 2)  # outer table
    diploe = (depth > skull_out + 1.8) & (depth < skull_in - 1.8)
    paint(diploe, 480.0, 2)
    paint(depth > skull_in - 1.8, 70.0, 2)  # inner table
    paint(depth > skull_in, 170.0, 3)  # subarachnoid CSF

    db = depth - brain_top  # depth below the brain surface, mm
    brain = db > 0.0
    # Gyri and sulci: sulcal CSF along the zero level set of f_fold, deepest where the cortex is deep.
    sulcus = brain & (np.abs(f_fold) < 0.15 * (1.0 - smoothstep(db, 6.0, 15.0))) & (db < 15.0)
    wm_depth = 4.5 + 10.0 * np.exp(-((f_fold / 0.8) ** 2))
    fissure = brain & (np.abs(x - 1.5 * np.sin(y / 40.0)) < 1.3) & (z - head_c[0] > 50.0 - 0.45 * np.abs(y))
    paint(brain, 560.0, 5)  # cortex
    paint(brain & (db > wm_depth), 820.0, 6)
    paint(sulcus | fissure, 170.0, 3)

    zc = head_c[0]
    # Deep grey nuclei (grey-matter label).
    for side in (-1.0, 1.0):
        thal = ellipsoid_radius((z, y, x), (zc + 22.0, 14.0, side * 11.0), (10.0, 15.0, 9.0)) < 1.0
        caud = ellipsoid_radius((z, y, x), (zc + 34.0, -18.0, side * 15.0), (9.0, 11.0, 6.0)) < 1.0
        lent = ellipsoid_radius((z, y, x), (zc + 24.0, -4.0, side * 25.0), (11.0, 18.0, 6.5)) < 1.0
        paint(brain & (thal | caud | lent), 650.0, 5)

    # Lateral ventricles: a curved horn system per side; third ventricle in the midline.
    vent_sd = np.full(grid.shape, np.inf, dtype=f32)
    for side in (-1.0, 1.0):
        body_path = np.array(
            [[zc + 30.0, -38.0, 9.0], [zc + 36.0, -20.0, 10.0], [zc + 38.0, 2.0, 11.0], [zc + 34.0, 22.0, 15.0],
             [zc + 26.0, 34.0, 19.0], [zc + 20.0, 50.0, 15.0]]
        )
        body_path[:, 2] *= side
        tube_distance(grid, body_path, np.array([4.5, 5.0, 4.0, 4.5, 5.5, 2.5]), out=vent_sd)
        temporal = np.array([[zc + 26.0, 34.0, 19.0], [zc + 12.0, 26.0, 28.0], [zc + 0.0, 8.0, 30.0],
                             [zc - 6.0, -8.0, 29.0]])
        temporal[:, 2] *= side
        tube_distance(grid, temporal, np.array([4.0, 3.0, 2.5, 2.0]), out=vent_sd)
    ventricles = brain & (vent_sd < 0.0)
    third = brain & (np.abs(x) < 2.2) & (y > -10.0) & (y < 16.0) & (np.abs(z - (zc + 16.0)) < 11.0)
    paint(ventricles | third, 160.0, 4)

    # Hypointense periventricular white-matter lesion, exact 8 mm footprint.
    lesion_diam = BRAIN_MR_LESION_MM
    lesion, lesion_idx = snapped_ellipsoid(grid, (zc + 42.0, 10.0, -26.0), lesion_diam)
    paint(lesion, 330.0, 7)

    # Tissue texture (a few percent), then blur for the point-spread function and partial volume.
    texture = ndimage.gaussian_filter(rng_tex.standard_normal(grid.shape, dtype=f32), 1.0)
    texture /= f32(texture.std() or 1.0)
    t1 *= 1.0 + f32(0.025) * texture
    t1 = ndimage.gaussian_filter(t1, _blur_sigma_vox(grid, in_plane=0.7, through_plane=1.2), mode="nearest")

    # Multiplicative bias field: smooth random part plus a linear tilt across the head.
    tilt = sum(float(b) * c / (f / 2) for b, c, f in zip(bias_tilt, (z, y, x), grid.fov))
    bias = np.exp(f32(bias_strength) * (0.7 * f_bias + 0.5 * tilt)).astype(f32)
    t1 *= bias

    # Rician noise: magnitude of (signal + n1, n2).
    n1 = rng_noise.standard_normal(grid.shape, dtype=f32) * f32(noise_sigma)
    n2 = rng_noise.standard_normal(grid.shape, dtype=f32) * f32(noise_sigma)
    image = np.sqrt((t1 + n1) ** 2 + n2**2).astype(f32)

    lesion_mm = tuple(round(max(1, round(lesion_diam / st)) * sp, 6) for st, sp in zip(grid.step, grid.spacing))
    meta = _meta(
        grid,
        BRAIN_MR_CENTRE_ZYX,
        BRAIN_MR_LABELS,
        seed,
        modality="MR",
        units="arbitrary (T1-weighted)",
        lesion_label=7,
        lesion_mm=lesion_mm,
        lesion_center_index=tuple(float(c) for c in lesion_idx),
    )
    return image, lab, meta
