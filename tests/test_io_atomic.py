"""The one atomic-write helper: a finished write replaces the target, a failed one leaves no trace."""

from pathlib import Path

import pytest

from napari_vfmseg.io.atomic import atomic_path, write_bytes_atomic, write_text_atomic


def test_text_and_bytes_replace_the_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.csv"
    write_text_atomic(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]


def test_failed_write_leaves_target_and_folder_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "labels.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            assert temporary.name.endswith(".nii.gz") and temporary.parent == tmp_path
            temporary.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_folder_mode_and_missing_parent(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "entry.zarr", folder=True) as temporary:
        (temporary / "data").write_text("x")
    assert (tmp_path / "entry.zarr" / "data").read_text() == "x"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_text_atomic(tmp_path / "nowhere" / "f.txt", "x", make_parents=False)
