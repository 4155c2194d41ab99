"""Radiological display of scans: the patient's head at the top of coronal and sagittal views.

napari draws the vertical displayed axis downwards. A scan opened by napari-vfmseg sits in world
coordinates that follow the patient frame (mm, axes (z, y, x) of DICOM's LPS frame, see
``_layer_geometry``), so world axis 0 grows towards the head: in a coronal or sagittal view the head
would be at the bottom. Axial views already follow the convention (anterior up, the patient's left on
the viewer's right), and so do the horizontal axes of coronal and sagittal views.
"""

from __future__ import annotations

from napari_vfmseg._layer_geometry import GEOMETRY_KEY

__all__ = ["is_scan_layer", "vertical_direction", "show_head_up"]


def is_scan_layer(layer) -> bool:
    """True for a 3D grey image layer placed in the patient frame (opened by napari-vfmseg's reader
    or carrying its geometry metadata)."""
    metadata = getattr(layer, "metadata", None) or {}
    return GEOMETRY_KEY in metadata and getattr(layer, "ndim", 0) == 3 and not getattr(layer, "rgb", False)


def vertical_direction(displayed: tuple[int, ...], world_ndim: int) -> str:
    """napari's vertical camera orientation ("up" or "down") that puts the patient's head at the top:
    "up" when the vertical displayed axis is world axis 0 (z) of a 3D scan, else "down"."""
    if world_ndim != 3 or len(displayed) != 2:
        return "down"
    return "up" if displayed[0] == 0 else "down"


def show_head_up(viewer, layer=None) -> bool:
    """Orient ``viewer``'s 2D camera for ``layer`` (a scan; default: the viewer's first scan layer):
    head up in coronal and sagittal views, napari's default in axial ones. Call it again after
    ``viewer.dims.order`` changes. Returns False, changing nothing, for other layers or a 3D view."""
    if layer is None:
        layer = next((candidate for candidate in viewer.layers if is_scan_layer(candidate)), None)
    if not is_scan_layer(layer) or viewer.dims.ndisplay != 2:
        return False
    vertical = vertical_direction(tuple(viewer.dims.displayed), viewer.dims.ndim)
    horizontal = viewer.camera.orientation2d[1]
    if viewer.camera.orientation2d[0] != vertical:
        viewer.camera.orientation2d = (vertical, horizontal)
    return True
