"""A 2D B-mode ultrasound phantom (curvilinear probe) with an exact label map.

The echo image is formed along the beams, in polar coordinates (depth, angle): scatterers with
Gaussian complex amplitudes weighted by tissue echogenicity, a point-spread function that is
short along the beam and wide across it, attenuation accumulated along each beam (so a cyst,
which barely attenuates, leaves posterior enhancement), specular reflection at the organ capsule,
time-gain compensation, envelope detection, log compression — then scan conversion to a
Cartesian (row, col) image. Labels are evaluated at the Cartesian pixel centres.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_vfmseg.data.primitives import ellipsoid_radius, make_grid, smooth_field, snapped_ellipsoid

__all__ = ["ULTRASOUND_SHAPE", "ULTRASOUND_SPACING", "ULTRASOUND_LABELS", "make_ultrasound_2d"]

ULTRASOUND_SHAPE = (256, 320)
ULTRASOUND_SPACING = (0.3, 0.3)
ULTRASOUND_LABELS: dict[int, str] = {1: "organ", 2: "cyst", 3: "hyperechoic nodule"}
ULTRASOUND_NODULE_MM = 6.0

_APEX_ROW_MM = -52.0  # virtual apex of the sector, above the image (reference mm from the centre)
_HALF_ANGLE = np.deg2rad(34.0)
_SKIN_MM = 52.0 - 38.4 + 2.0  # first echo depth: the top of the image plus a coupling layer


def _tissue(coords: Sequence[np.ndarray], f_tex: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label, echogenicity and attenuation at points given as (row, col) reference mm."""
    r, c = coords
    shape = np.broadcast_shapes(np.shape(r), np.shape(c))
    label = np.zeros(shape, dtype=np.uint8)
    echo = np.full(shape, 1.0, dtype=np.float32) * (1.0 + 0.15 * f_tex)
    atten = np.full(shape, 1.0, dtype=np.float32)  # relative to soft tissue

    fat = (r < -22.0 + 2.5 * np.sin(c / 9.0)).astype(bool)
    echo[fat] = 0.45
    organ_rho = ellipsoid_radius((r, c), (4.0, -6.0), (22.0, 34.0)) * (1.0 + 0.03 * f_tex)
    organ = organ_rho < 1.0
    label[organ] = 1
    echo[organ] = 0.28 * (1.0 + 0.15 * f_tex[organ])
    capsule = (organ_rho > 0.94) & (organ_rho < 1.04)
    echo[capsule] = 8.0
    cyst = ellipsoid_radius((r, c), (0.0, -14.0), (6.5, 7.5)) < 1.0
    label[cyst] = 2
    echo[cyst] = 0.003
    atten[cyst] = 0.05
    return label, echo, atten


def make_ultrasound_2d(
    seed: int = 0,
    shape: Sequence[int] = ULTRASOUND_SHAPE,
    dynamic_range_db: float = 60.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """B-mode sector image with speckle, and its labels.

    Args:
        seed: random seed; the same seed and shape give identical arrays.
        shape: (row, col); rows run down from the probe (depth). The field of view stays
            76.8 × 96 mm, so a smaller shape means larger pixels.
        dynamic_range_db: log-compression range mapped onto 0..255.

    Returns:
        image: uint8 (row, col), 0 outside the sector.
        labels: uint8 (row, col); ids and names in ``ULTRASOUND_LABELS`` (1 organ, 2 anechoic
            cyst inside it, 3 hyperechoic nodule of at most ``ULTRASOUND_NODULE_MM``).
        meta: spacing (row, col) mm (nominal: PNG stores none), label_names, seed, nodule_mm.
    """
    grid = make_grid(shape, ULTRASOUND_SHAPE, ULTRASOUND_SPACING, None)
    children = np.random.SeedSequence(int(seed)).spawn(2)
    rng_anat, rng_speckle = (np.random.default_rng(c) for c in children)
    f32 = np.float32

    # Polar beam grid: depth from the apex, angle across the sector.
    n_depth, n_beams = 2 * grid.shape[0], max(64, grid.shape[1])
    depth = np.linspace(_SKIN_MM, -_APEX_ROW_MM + grid.fov[0] / 2, n_depth)
    angle = np.linspace(-_HALF_ANGLE, _HALF_ANGLE, n_beams)
    pr = (_APEX_ROW_MM + depth[:, None] * np.cos(angle[None, :])).astype(f32)
    pc = (depth[:, None] * np.sin(angle[None, :])).astype(f32)

    # Tissue texture field drawn once on the Cartesian grid, sampled along the beams.
    f_tex_cart = smooth_field(rng_anat, grid, 4.0)
    nodule_cart, nodule_idx = snapped_ellipsoid(grid, (12.0, 8.0), ULTRASOUND_NODULE_MM)

    # Fractional Cartesian pixel index (row, col) of every beam sample.
    beam_idx = np.stack([(p / f + 0.5) * n - 0.5 for p, f, n in zip((pr, pc), grid.fov, grid.shape)])
    f_tex_beam = ndimage.map_coordinates(f_tex_cart, beam_idx, order=1, mode="nearest")
    _, echo, atten = _tissue((pr, pc), f_tex_beam)
    nodule_beam = ndimage.map_coordinates(nodule_cart.astype(f32), beam_idx, order=1, mode="constant") > 0.5
    echo[nodule_beam] = 5.0
    atten[nodule_beam] = 1.6

    # Attenuation along each beam (round trip), with time-gain compensation tuned to soft tissue.
    d_step = float(depth[1] - depth[0])
    alpha = 0.03  # nepers per mm, one way (about 2.6 dB/cm: soft tissue at 5 MHz)
    path = np.cumsum(atten, axis=0) * d_step
    gain = np.exp(-2.0 * alpha * path) * np.exp(2.0 * alpha * 0.9 * (depth[:, None] - depth[0]))

    # Speckle: complex scatterers → beam-shaped PSF (lateral width grows with depth) → envelope.
    scat = (rng_speckle.standard_normal((n_depth, n_beams)) + 1j * rng_speckle.standard_normal((n_depth, n_beams)))
    scat *= np.sqrt(echo * gain)
    psf = (0.35 / d_step, 0.8 / (55.0 * float(angle[1] - angle[0])))  # axial 0.35 mm, lateral 0.8 mm
    rf = ndimage.gaussian_filter(scat.real, psf) + 1j * ndimage.gaussian_filter(scat.imag, psf)
    envelope = np.abs(rf).astype(f32)
    ref = float(np.median(envelope))  # soft tissue is the bulk of the sector: display it at mid-grey
    envelope += f32(0.03 * ref) * np.abs(rng_speckle.standard_normal(envelope.shape)).astype(f32)  # electronic noise

    db = 20.0 * np.log10(np.maximum(envelope / ref, 1e-6))
    bmode = np.clip((db + 0.65 * dynamic_range_db) / dynamic_range_db, 0.0, 1.0) * 255.0

    # Scan conversion: each Cartesian pixel looks up its (depth, angle) on the beam grid.
    rr, cc = grid.open()
    dr, dc = rr - _APEX_ROW_MM, cc
    pix_depth = np.sqrt(dr**2 + dc**2)
    pix_angle = np.arctan2(dc, dr)
    inside = (np.abs(pix_angle) <= _HALF_ANGLE) & (pix_depth >= depth[0]) & (pix_depth <= depth[-1])
    di = (pix_depth - depth[0]) / d_step
    ai = (pix_angle + _HALF_ANGLE) / (angle[1] - angle[0])
    image = ndimage.map_coordinates(bmode.astype(f32), np.stack(np.broadcast_arrays(di, ai)), order=1, mode="nearest")
    image = np.where(inside, image, 0.0)
    image = np.rint(image).astype(np.uint8)

    labels, _, _ = _tissue((rr, cc), f_tex_cart)
    labels[nodule_cart] = 3
    labels[~inside] = 0

    nodule_mm = tuple(
        round(max(1, round(ULTRASOUND_NODULE_MM / st)) * sp, 6) for st, sp in zip(grid.step, grid.spacing)
    )
    meta = {
        "spacing": tuple(round(float(s), 9) for s in grid.spacing),
        "origin": (0.0, 0.0),
        "direction": ((1.0, 0.0), (0.0, 1.0)),
        "label_names": dict(ULTRASOUND_LABELS),
        "seed": int(seed),
        "modality": "US",
        "units": "log-compressed echo amplitude (0-255)",
        "lesion_label": 3,
        "lesion_mm": nodule_mm,
        "lesion_center_index": tuple(float(c) for c in nodule_idx),
    }
    return image, labels, meta
