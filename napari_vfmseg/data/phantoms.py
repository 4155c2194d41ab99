"""Procedural CT and MR phantoms with exact ground-truth label maps.

Both generators are pure numpy/scipy and deterministic: the same ``seed`` and ``shape`` give
byte-identical arrays on the same platform. Anatomy is drawn in reference millimetres (see
:mod:`napari_vfmseg.data.primitives`), so a smaller ``shape`` gives the same anatomy at a lower
resolution — handy for fast tests.

Conventions (as :class:`napari_vfmseg.io.Volume` and :func:`napari_vfmseg.io.dicom.write_dicom_series`):
arrays are (plane, row, col); patient axes are LPS with an identity direction, so planes run
inferior → superior, rows anterior → posterior and columns patient-right → patient-left (the
radiological view: the patient's right is on the left of the image). ``meta`` gives ``spacing``
(plane, row, col) in mm, ``origin`` (z, y, x) in mm of voxel (0, 0, 0), and ``direction`` (3x3,
array order).

Ground truth is exact: a voxel's label is the structure that contains the voxel centre. The
image is made from the same geometry plus blur (point-spread function and partial volume),
tissue texture, noise and, for MR, a bias field — the labels are not blurred.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_vfmseg.data.primitives import (
    ellipsoid_radius,
    make_grid,
    smooth_field,
    smoothstep,
    snapped_ellipsoid,
    tube_distance,
)
from napari_vfmseg.data.phantom_tools import (
    _blur_sigma_vox,
    _correlated_noise,
    _curve,
    _meta,
    _rng_streams,
    _rotation_yx,
    _rotation_zx,
)
from napari_vfmseg.data.brain_phantom import (  # noqa: F401  (re-exported: the brain MR phantom)
    BRAIN_MR_CENTRE_ZYX,
    BRAIN_MR_LABELS,
    BRAIN_MR_LESION_MM,
    BRAIN_MR_SHAPE,
    BRAIN_MR_SPACING,
    make_brain_mr,
)

__all__ = [
    "ABDOMEN_CT_LABELS",
    "BRAIN_MR_LABELS",
    "ABDOMEN_CT_SHAPE",
    "ABDOMEN_CT_SPACING",
    "BRAIN_MR_SHAPE",
    "BRAIN_MR_SPACING",
    "make_abdomen_ct",
    "make_brain_mr",
]

ABDOMEN_CT_SHAPE = (48, 192, 192)
ABDOMEN_CT_SPACING = (4.0, 1.6, 1.6)
ABDOMEN_CT_LABELS: dict[int, str] = {
    1: "liver",
    2: "liver lesion",
    3: "spleen",
    4: "right kidney",
    5: "left kidney",
    6: "aorta",
    7: "right ureter",
    8: "vertebrae",
}
ABDOMEN_CT_LESION_MM = 9.5


def make_abdomen_ct(
    seed: int = 0,
    shape: Sequence[int] = ABDOMEN_CT_SHAPE,
    spacing: Sequence[float] | None = None,
    noise_hu: float = 12.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Abdominal CT phantom in Hounsfield units, with its label map.

    Anatomy (reference field of view 192 × 307 × 307 mm, a slim adult): air, patient table,
    skin, subcutaneous fat, abdominal wall muscle, visceral fat with bowel loops (some gas),
    stomach with an air–fluid level, ribs, psoas and paraspinal muscles, vertebrae with discs,
    spinal canal, liver with an enhancing portal/hepatic vessel tree, a hypodense liver
    lesion, spleen, kidneys (bright cortex, darker medulla, renal sinus fat), aorta, inferior
    vena cava, and a dilated right ureter (10 mm tube that wanders across planes).

    Args:
        seed: random seed; the same seed and shape give identical arrays.
        shape: (plane, row, col). Smaller shapes give the same anatomy at lower resolution.
        spacing: (plane, row, col) mm. ``None`` keeps the reference field of view (default
            spacing (4.0, 1.6, 1.6) mm at the default shape); an explicit spacing rescales the
            anatomy proportionally to the new field of view.
        noise_hu: standard deviation of the (in-plane correlated) quantum noise in HU.

    Returns:
        image: float32 (plane, row, col) in HU, clipped to [-1024, 3071].
        labels: uint8 (plane, row, col); ids and names in ``ABDOMEN_CT_LABELS``.
        meta: spacing, origin, direction (array order), label_names, seed, lesion_label,
            lesion_mm (the lesion's voxel footprint in mm along each axis, ≤ 10 mm at the default
            shape: 8.0 × 9.6 × 9.6), lesion_center_index (fractional voxel index).
    """
    grid = make_grid(shape, ABDOMEN_CT_SHAPE, ABDOMEN_CT_SPACING, spacing)
    rng_anat, rng_tex, rng_noise = _rng_streams(seed)
    z, y, x = grid.open()
    f32 = np.float32

    # Resolution-independent random fields, always drawn in this order.
    f_body = smooth_field(rng_anat, grid, 40.0)
    f_organ = smooth_field(rng_anat, grid, 25.0)
    f_bowel = smooth_field(rng_anat, grid, 11.0)
    f_gas = smooth_field(rng_anat, grid, 9.0)
    f_fat = smooth_field(rng_anat, grid, 18.0)
    vessel_seeds = rng_anat.uniform(-1.0, 1.0, size=(7, 3, 3))
    f_kidney = smooth_field(rng_anat, grid, 5.0)

    hu = np.full(grid.shape, -1000.0, dtype=f32)
    lab = np.zeros(grid.shape, dtype=np.uint8)

    def paint(mask: np.ndarray, value: float | np.ndarray, label: int | None = None) -> None:
        mask = np.broadcast_to(mask, grid.shape)
        if np.ndim(value):
            hu[mask] = np.broadcast_to(np.asarray(value, dtype=f32), grid.shape)[mask]
        else:
            hu[mask] = value
        if label is not None:
            lab[mask] = label

    # Patient table: a curved carbon-fibre shell under the patient (background label).
    table_y = 110.0 + 0.0009 * x**2
    table = (np.abs(y - table_y) < 2.5) & (np.abs(x) < 165.0)
    paint(table, 150.0)

    # Body outline: elliptic cylinder, slightly wider at the bottom, with a wobbly contour.
    sx = 138.0 + 6.0 * smoothstep(-z, 0.0, 96.0)
    body_rho = ellipsoid_radius((y, x), (2.0, 0.0), (100.0, sx)) * (1.0 + 0.025 * f_body)
    body_depth = (1.0 - body_rho) * 100.0  # ~ mm below the skin
    body = body_rho < 1.0
    fat_thick = 13.0 + 6.0 * smoothstep(-y, -20.0, 80.0) + 3.0 * f_fat
    paint(body, -105.0)  # subcutaneous fat
    paint(body & (body_depth < 2.0), 25.0)  # skin
    wall = body & (body_depth >= fat_thick) & (body_depth < fat_thick + 9.0)
    paint(wall, 50.0)  # abdominal wall muscle
    cavity = body & (body_depth >= fat_thick + 9.0)
    paint(cavity, -95.0 + 12.0 * f_fat)  # visceral fat with fat-density variation

    # Bowel loops (thin-walled tubes from a noise level set) in the lower, anterior abdomen.
    bowel_zone = cavity & (z < 50.0) & (y < 45.0)
    bowel = bowel_zone & (np.abs(f_bowel) < 0.42)
    lumen = bowel_zone & (np.abs(f_bowel) < 0.28)
    paint(bowel, 45.0)
    paint(lumen, 18.0)
    paint(lumen & (f_gas > 0.9), -850.0)

    # Stomach in the left upper quadrant with an air-fluid level (gas anterior: patient supine).
    stomach_rho = ellipsoid_radius((z, y, x), (55.0, -30.0, 72.0), (38.0, 32.0, 34.0)) * (1.0 + 0.05 * f_organ)
    paint(cavity & (stomach_rho < 1.0), 45.0)
    stomach_lumen = cavity & (stomach_rho < 0.84)
    paint(stomach_lumen, 12.0)
    paint(stomach_lumen & (y < -36.0), -900.0)

    # Muscles around the spine.
    psoas_r = 6.0 + 14.0 * smoothstep(-z, -40.0, 90.0)
    for side in (-1.0, 1.0):
        psoas = ellipsoid_radius((y, x), (44.0, side * 40.0), (psoas_r * 0.9, psoas_r)) < 1.0
        paint(body & psoas, 52.0)
        paraspinal = ellipsoid_radius((y, x), (80.0, side * 30.0), (15.0, 21.0)) < 1.0
        paint(body & paraspinal, 48.0)

    # Ribs: oblique bony arcs inside the wall, upper abdomen only, not across the anterior midline.
    theta = np.arctan2(y - 2.0, x)
    rib_band = (body_depth > fat_thick + 2.5) & (body_depth < fat_thick + 7.0) & body
    rib_phase = np.sin(8.0 * theta + z / 6.0) > 0.72
    ribs = rib_band & rib_phase & (z > -10.0) & (y > -45.0) & (np.abs(x) > 40.0)
    paint(ribs, 480.0)

    # Liver: smooth union of a right lobe and a left lobe, tapering inferiorly.
    taper = 0.55 + 0.45 * smoothstep(z, -45.0, 20.0)
    r_right = ellipsoid_radius((z, y, x), (30.0, -2.0, -58.0), (62.0, 78.0 * taper, 72.0 * taper))
    r_left = ellipsoid_radius((z, y, x), (52.0, -42.0, 10.0), (38.0, 32.0, 58.0))
    k = 0.08
    liver_rho = -k * np.logaddexp(-r_right / k, -r_left / k)
    liver_rho = liver_rho * (1.0 + 0.06 * f_organ)
    liver = cavity & (liver_rho < 1.0)
    paint(liver, 60.0, 1)

    # Portal / hepatic vessel tree: curved tapering tubes from the hilum, enhancing (label stays liver).
    hilum = np.array([12.0, 8.0, -28.0])
    targets = np.array(
        [[70.0, -20.0, -70.0], [40.0, -60.0, -50.0], [-10.0, -10.0, -95.0], [5.0, 40.0, -80.0],
         [60.0, -50.0, 25.0], [75.0, 10.0, -30.0], [-30.0, -40.0, -60.0]]
    )
    vessel_sd = np.full(grid.shape, np.inf, dtype=f32)
    for target, wiggle in zip(targets, vessel_seeds):
        ctrl = hilum + (target - hilum) * 0.5 + 12.0 * wiggle[0]
        t = np.linspace(0.0, 1.0, 9)[:, None]
        main = (1 - t) ** 2 * hilum + 2 * (1 - t) * t * ctrl + t**2 * target
        tube_distance(grid, main, np.linspace(7.0, 2.4, len(main)), out=vessel_sd)
        start = main[4]
        branch_end = start + 30.0 * wiggle[1] / (np.linalg.norm(wiggle[1]) + 1e-6)
        branch = start + (branch_end - start) * np.linspace(0.0, 1.0, 5)[:, None]
        tube_distance(grid, branch, np.linspace(3.0, 1.6, len(branch)), out=vessel_sd)
    paint(liver & (vessel_sd < 0.0), 135.0, 1)

    # Small hypodense lesion (< 10 mm) in the right lobe; exact voxel footprint.
    lesion_diam = ABDOMEN_CT_LESION_MM
    lesion, lesion_idx = snapped_ellipsoid(grid, (46.0, -12.0, -62.0), lesion_diam)
    paint(lesion, 8.0, 2)

    # Spleen: a crescent in the left upper quadrant, posterior.
    rot_spleen = _rotation_yx(-35.0)
    spleen_rho = ellipsoid_radius((z, y, x), (40.0, 42.0, 92.0), (44.0, 52.0, 26.0), rot_spleen)
    notch = ellipsoid_radius((z, y, x), (40.0, 30.0, 62.0), (40.0, 30.0, 18.0))
    spleen = cavity & (spleen_rho * (1.0 + 0.05 * f_organ) < 1.0) & (notch > 1.0)
    paint(spleen, 48.0, 3)

    # Kidneys: bean-shaped, cortex bright, medulla darker, renal sinus fat at the hilum (not kidney).
    for label, side, zc, tilt in ((4, -1.0, -12.0, 12.0), (5, 1.0, 4.0, -12.0)):
        centre = (zc, 48.0, side * 70.0)
        rot = _rotation_zx(tilt)
        k_rho = ellipsoid_radius((z, y, x), centre, (52.0, 24.0, 27.0), rot) * (1.0 + 0.03 * f_organ)
        sinus = ellipsoid_radius((z, y, x), (zc, 44.0, side * 50.0), (22.0, 11.0, 13.0)) < 1.0
        kidney = body & (k_rho < 1.0) & ~sinus
        paint(kidney, 115.0, label)  # cortex
        medulla = kidney & (k_rho < 0.74)
        pyramids = medulla & (f_kidney > -0.35)  # medullary pyramids between columns of cortex
        paint(pyramids, 55.0, label)
        paint(body & sinus & (k_rho < 1.15), -70.0, 0)

    # Great vessels: inferior vena cava (unlabelled) and aorta, gently curving through the planes.
    zs = np.linspace(-110.0, 110.0, 23)
    ivc = _curve(zs, 30.0 + 3.0 * np.cos(zs / 45.0), -24.0 + 4.0 * np.sin(zs / 70.0))
    ivc_sd = tube_distance(grid, ivc, np.full(len(zs), 11.0))
    paint(body & (ivc_sd < 0.0), 118.0, 0)
    aorta = _curve(zs, 27.0 + 4.0 * np.cos(zs / 50.0), 12.0 + 7.0 * np.sin(zs / 60.0))
    aorta_sd = tube_distance(grid, aorta, 11.0 - 1.5 * smoothstep(-zs, -50.0, 100.0))
    paint(body & (aorta_sd < 0.0), 165.0, 6)

    # Dilated right ureter: from the renal pelvis along the psoas, wandering medially and anteriorly.
    uz = np.linspace(-22.0, -110.0, 16)
    s = (uz + 22.0) / -88.0
    uy = 40.0 - 22.0 * s + 5.0 * np.sin(3.0 * np.pi * s)
    ux = -54.0 + 14.0 * np.sin(np.pi * s)
    ureter_sd = tube_distance(grid, _curve(uz, uy, ux), np.full(len(uz), 5.0))
    ureter = body & (ureter_sd < 0.0)
    paint(ureter, 42.0, 7)  # wall
    paint(ureter & (ureter_sd < -1.6), 8.0, 7)  # urine

    # Spine: vertebral bodies with discs, posterior arch, spinous and transverse processes, canal.
    period, disc = 32.0, 7.0
    level = np.mod(z + 11.0, period)
    in_disc = level < disc
    vb_rho = ellipsoid_radius((y, x), (52.0, 0.0), (17.0, 21.0))
    canal_rho = ellipsoid_radius((y, x), (79.0, 0.0), (8.0, 9.5))
    arch = (ellipsoid_radius((y, x), (79.0, 0.0), (15.0, 16.0)) < 1.0) & (canal_rho >= 1.0) & (y > 70.0)
    spinous = (np.abs(x) < 4.0) & (y > 88.0) & (y < 99.0)
    transverse = (np.abs(y - 70.0) < 3.5) & (np.abs(x) > 12.0) & (np.abs(x) < 34.0 - 0.15 * np.abs(y - 70.0))
    posterior = (arch | spinous | (transverse & (level > disc + 8.0) & (level < disc + 17.0))) & ~in_disc
    paint(posterior & body, 620.0, 8)
    vb = (vb_rho < 1.0) & body
    paint(vb & ~in_disc, 240.0, 8)  # cancellous bone
    paint(vb & ~in_disc & (vb_rho > 0.86), 820.0, 8)  # cortical shell
    paint(vb & in_disc, 85.0, 0)  # intervertebral disc
    paint((canal_rho < 1.0) & body, 22.0, 0)  # spinal canal: CSF and cord

    # Texture: smooth per-voxel variation, stronger in parenchyma than in fat; none in air.
    tex_amp = np.where(hu < -500.0, f32(0.0), np.where(np.abs(hu) < 200.0, f32(7.0), f32(20.0)))
    tex_amp[lab == 1] = 5.0
    texture = ndimage.gaussian_filter(rng_tex.standard_normal(grid.shape, dtype=f32), 1.0)
    texture /= f32(texture.std() or 1.0)
    hu += tex_amp * texture

    # Partial volume and point-spread function: blur the sharp image (not the labels).
    hu = ndimage.gaussian_filter(hu, _blur_sigma_vox(grid, in_plane=0.9, through_plane=1.6), mode="nearest")

    # Quantum noise (correlated in-plane, as after filtered back-projection) and a faint streak pattern.
    hu += f32(noise_hu) * _correlated_noise(rng_noise, grid.shape, 0.7)
    angle = np.arctan2(y, x)
    streaks = (np.sin(23.0 * angle + 1.3) * np.sin(7.0 * angle) * body).astype(f32)
    hu += f32(6.0) * streaks
    np.clip(hu, -1024.0, 3071.0, out=hu)

    lesion_mm = tuple(round(max(1, round(lesion_diam / st)) * sp, 6) for st, sp in zip(grid.step, grid.spacing))
    meta = _meta(
        grid,
        (0.0, 0.0, 0.0),
        ABDOMEN_CT_LABELS,
        seed,
        modality="CT",
        units="HU",
        lesion_label=2,
        lesion_mm=lesion_mm,
        lesion_center_index=tuple(float(c) for c in lesion_idx),
    )
    return hu.astype(f32, copy=False), lab, meta
