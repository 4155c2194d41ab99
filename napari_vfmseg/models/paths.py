"""Where napari-vfmseg keeps per-user files: the home folder and its ``weights`` subfolder.

``VFMSEG_HOME`` overrides the home folder; otherwise it is the platform's per-user cache
folder (``~/.cache/napari-vfmseg`` on Linux, ``~/Library/Caches/napari-vfmseg`` on macOS,
``%LOCALAPPDATA%\\napari-vfmseg\\Cache`` on Windows). Both are read from the environment at every
call, so a test or a user can change ``VFMSEG_HOME`` at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "VFMSEG_HOME"
APP_NAME = "napari-vfmseg"


def vfmseg_home() -> Path:
    """The per-user napari-vfmseg folder (not created here)."""
    override = os.environ.get(HOME_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    import pooch  # pooch's os_cache is platformdirs' user cache folder

    return Path(pooch.os_cache(APP_NAME)).resolve()


def weights_dir() -> Path:
    """Folder that holds downloaded model weights: ``<home>/weights`` (not created here)."""
    return vfmseg_home() / "weights"
