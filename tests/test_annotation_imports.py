"""The Qt-free layers stay Qt-free: each package outside widgets/ imports in a fresh interpreter
without loading Qt, napari or magicgui (and the annotation state without torch either)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

FORBIDDEN = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui")


@pytest.mark.parametrize("package", ["napari_vfmseg.annotation", "napari_vfmseg.annotation.session",
                                     "napari_vfmseg.annotation.autosave", "napari_vfmseg.annotation.model_choice",
                                     "napari_vfmseg.io", "napari_vfmseg.engine", "napari_vfmseg.training",
                                     "napari_vfmseg.models", "napari_vfmseg.data"])
def test_package_imports_without_qt_or_napari(package):
    code = (f"import sys, {package}\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded, torch_loaded = out.stdout.strip().splitlines()[-2:]
    assert loaded == "[]"
    if package.startswith("napari_vfmseg.annotation"):
        assert torch_loaded == "False"


def test_count_annotated_counts_planes_objects_and_volumes():
    from napari_vfmseg.training.rounds import count_annotated

    volume = np.zeros((5, 16, 16), np.uint16)
    volume[1, 2:8, 2:8] = 1          # 36 px
    volume[1, 10:12, 10:12] = 2      # 4 px: too small to count as an object
    volume[3, 0:5, 0:5] = 2
    volume[3, 8:14, 8:14] = 3
    assert count_annotated([(volume, 0)]) == {"planes": 2, "objects": 3, "volumes": 1}
    # sliced along rows: the same voxels lie on rows 0..13
    assert count_annotated([(volume, 1)])["planes"] == 14
    image = np.zeros((16, 16), np.uint8)
    image[3:9, 3:9] = 5
    empty = np.zeros((4, 8, 8), np.uint8)
    assert count_annotated([(volume, 0), (image, None), (empty, 0)]) == {"planes": 3, "objects": 4, "volumes": 2}
