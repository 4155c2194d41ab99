"""A virtual X display for headless runs: napari renders with OpenGL and needs one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

INSTALL_HINT = (
    "napari needs an OpenGL-capable display. On a machine without a screen install a virtual one, "
    "e.g. on Debian/Ubuntu: apt-get install xvfb libgl1-mesa-dri libegl1 libxkbcommon-x11-0 "
    "libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 "
    "libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0"
)


class DisplayUnavailable(RuntimeError):
    """No display is set and none can be started."""


def has_display() -> bool:
    """True when an X11 or Wayland display is configured for this process."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@contextlib.contextmanager
def virtual_display(width: int = 1600, height: int = 1000) -> Iterator[str]:
    """Start Xvfb on a free display number, export DISPLAY for the block, stop it afterwards."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise DisplayUnavailable(INSTALL_HINT)
    number = _free_display_number()
    proc = subprocess.Popen(
        [xvfb, f":{number}", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        socket = Path(f"/tmp/.X11-unix/X{number}")
        for _ in range(100):
            if socket.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            raise DisplayUnavailable(f"Xvfb :{number} exited at start. {INSTALL_HINT}")
        previous = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = f":{number}"
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
        try:
            yield f":{number}"
        finally:
            if previous is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = previous
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def ensure_display() -> Iterator[str]:
    """Use the existing display, or a virtual one when there is none."""
    if has_display():
        yield os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY", "")
        return
    with virtual_display() as display:
        yield display


def _free_display_number(start: int = 90) -> int:
    for number in range(start, start + 200):
        if not Path(f"/tmp/.X{number}-lock").exists() and not Path(f"/tmp/.X11-unix/X{number}").exists():
            return number
    raise DisplayUnavailable("no free X display number between :90 and :289")
