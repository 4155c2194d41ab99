"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one torch thread (and do not fight other processes for cores).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _private_vfmseg_home(tmp_path, monkeypatch):
    """Every test writes autosaves, caches and adapters under a temporary napari-vfmseg home,
    never into the real user's one."""
    monkeypatch.setenv("VFMSEG_HOME", str(tmp_path / "vfmseg-home"))
