"""Intensity windows: presets, percentiles, automatic choice, and NaN/inf handling."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vfmseg.io import CT_PRESETS, Window, apply_window, auto_window, percentile_window, resolve_window


def test_presets_have_clinical_level_and_width():
    assert CT_PRESETS["soft_tissue"].as_tuple() == (40.0, 400.0)
    assert CT_PRESETS["lung"].as_tuple() == (-600.0, 1500.0)
    assert CT_PRESETS["bone"].as_tuple() == (400.0, 1800.0)
    assert CT_PRESETS["brain"].as_tuple() == (40.0, 80.0)
    brain = CT_PRESETS["brain"]
    assert (brain.low, brain.high) == (0.0, 80.0)


def test_apply_window_maps_edges_and_middle():
    window = Window(level=40.0, width=400.0)  # -160 .. 240 HU
    hu = np.array([[-1000.0, -160.0, 40.0], [240.0, 3000.0, 140.0]])
    out = apply_window(hu, window)
    assert out.dtype == np.uint8 and out.shape == hu.shape
    np.testing.assert_array_equal(out, [[0, 0, 128], [255, 255, 191]])


def test_apply_window_nan_and_infinities():
    values = np.array([np.nan, np.inf, -np.inf, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(apply_window(values, Window(0.0, 2.0)), [0, 255, 0, 128])


def test_apply_window_integer_input():
    ct = np.array([-1024, 0, 1000], dtype=np.int16)
    np.testing.assert_array_equal(apply_window(ct, Window(0.0, 2000.0)), [0, 128, 255])


def test_percentile_window_ignores_non_finite_values():
    values = np.concatenate([np.arange(1001, dtype=np.float64), [np.nan, np.inf, -np.inf]])
    window = percentile_window(values, 10, 90)
    assert window.low == pytest.approx(100.0)
    assert window.high == pytest.approx(900.0)
    assert isinstance(window.level, float) and isinstance(window.width, float)


def test_percentile_window_degenerate_inputs():
    constant = percentile_window(np.full((4, 4), 7.0))
    assert constant.low <= 7.0 <= constant.high and constant.width > 0
    all_nan = percentile_window(np.full((3, 3), np.nan))
    assert all_nan.width > 0
    mask = percentile_window(np.array([[True, False], [False, True]]))
    assert mask.low >= 0.0 and mask.high <= 1.0 and mask.width > 0


def test_auto_window_by_modality_and_by_values():
    rng = np.random.default_rng(0)
    mr = rng.normal(300.0, 50.0, size=(20, 20))
    assert auto_window(mr, "CT") == CT_PRESETS["soft_tissue"]
    mr_window = auto_window(mr, "MR")
    assert mr_window.name == "mr_percentile"
    assert mr_window.low == pytest.approx(np.percentile(mr, 0.5))
    ct = np.full((20, 20), -1000, dtype=np.int16)
    ct[5:15, 5:15] = 40
    assert auto_window(ct) == CT_PRESETS["soft_tissue"]  # HU-looking data without a modality tag
    assert auto_window(np.full((3, 3), np.nan)).width > 0  # no warning, no crash


def test_resolve_window_accepts_every_spelling():
    data = np.linspace(0.0, 100.0, 101)
    assert resolve_window("Soft-Tissue", data) == CT_PRESETS["soft_tissue"]
    assert resolve_window("lung", data) == CT_PRESETS["lung"]
    assert resolve_window((50, 10), data).as_tuple() == (50.0, 10.0)
    assert resolve_window(Window(1.0, 2.0, "mine"), data).name == "mine"
    assert resolve_window("percentile", data).low == pytest.approx(0.5)
    assert resolve_window(None, data, modality="CT") == CT_PRESETS["soft_tissue"]
    with pytest.raises(ValueError, match="unknown window 'liver'"):
        resolve_window("liver", data)
    with pytest.raises(ValueError, match="cannot interpret"):
        resolve_window((1, 2, 3), data)


def test_window_width_must_be_positive():
    with pytest.raises(ValueError, match="width must be > 0"):
        Window(0.0, 0.0)
    with pytest.raises(ValueError):
        Window(float("nan"), 10.0)
