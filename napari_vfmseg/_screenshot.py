"""Screenshots of the real napari viewer (window with docks) for the demo and the docs."""

from __future__ import annotations

import os
from pathlib import Path


def save_screenshot(viewer, path: Path, canvas_only: bool = False) -> Path:
    """Render the viewer to a PNG at ``path`` (written to a temp file, then renamed)."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    image = viewer.screenshot(canvas_only=canvas_only, flash=False)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    from imageio.v3 import imwrite

    imwrite(tmp, image)
    os.replace(tmp, path)
    return path
