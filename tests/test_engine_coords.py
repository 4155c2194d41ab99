"""(row, col) → (x, y) in one function, the same for numpy and torch."""

import numpy as np
import pytest
import torch

from napari_vfmseg.engine.coords import rc_to_xy, xy_to_rc


def test_numpy_and_torch_agree_and_round_trip() -> None:
    rc = np.array([[[3.0, 10.0], [7.5, 1.0]]])  # (1, 2, 2): rows 3 and 7.5, cols 10 and 1
    xy = rc_to_xy(rc)
    assert xy.tolist() == [[[10.0, 3.0], [1.0, 7.5]]]
    assert np.shares_memory(xy, rc) is False
    t = rc_to_xy(torch.tensor(rc, dtype=torch.float32))
    assert t.dtype == torch.float32 and t.tolist() == xy.tolist()
    assert xy_to_rc(xy).tolist() == rc.tolist()
    assert rc_to_xy([(2, 5)]).tolist() == [[5.0, 2.0]]


def test_wrong_last_axis_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(row, col\)"):
        rc_to_xy(np.zeros((4, 3)))
