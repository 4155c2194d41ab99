"""The core layers import without Qt, napari or magicgui, each in a fresh interpreter; the engine
package imports without torch (its heavy parts load on first use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUI_PREFIXES = ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "magicgui", "superqt", "vispy")
FRONT_ENDS = {"widgets", "cli"}  # the napari plugin and the command line may load Qt
# every other package of napari_vfmseg is core: io, models, engine, training, data, and annotation,
# federated, ... as they are added
CORE = sorted(p.parent.name for p in (ROOT / "napari_vfmseg").glob("*/__init__.py") if p.parent.name not in FRONT_ENDS)


def test_the_known_core_packages_are_checked():
    assert {"io", "models", "engine", "training", "data"} <= set(CORE)


def _modules_after(statement: str) -> set[str]:
    """Top-level names of the modules loaded by ``statement`` in a new interpreter."""
    script = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", CORE)
def test_core_package_imports_no_gui(package):
    loaded = _modules_after(f"import napari_vfmseg.{package}")
    gui = sorted(m for m in loaded if m.split(".")[0] in GUI_PREFIXES)
    assert not gui, f"importing napari_vfmseg.{package} loads {gui[:8]}"
    assert f"napari_vfmseg.{package}" in loaded


def test_engine_imports_without_torch_and_keeps_its_public_names():
    loaded = _modules_after(
        "import napari_vfmseg.engine as engine\n"
        "from napari_vfmseg.engine import PropagationConfig, preset, propagate\n"
        "assert callable(propagate) and PropagationConfig().min_score == preset('generic').min_score"
    )
    assert "torch" not in loaded and "napari_vfmseg.engine.segmenter" not in loaded
    loaded = _modules_after(
        "from napari_vfmseg.engine import Segmenter, propagate, PropagationConfig\n"
        "from napari_vfmseg.engine.propagate import propagate as walk, segmenter_model\n"
        "assert walk is propagate and Segmenter.__name__ == 'Segmenter'"
    )
    assert "torch" in loaded  # Segmenter was imported on first access
