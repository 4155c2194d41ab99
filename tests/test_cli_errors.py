"""The CLI's exit codes and messages: bad input is one line on stderr naming the file and the
problem (exit 2); a bug keeps its traceback and says where to report it (exit 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

import napari_vfmseg.cli as cli
from napari_vfmseg.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
BRAIN = SAMPLES / "brain_mr.nii.gz"


def _fails_with(capsys, argv, code=2) -> str:
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"vfmseg {argv[0]}: error: ")
        return lines[0]
    return err


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VFMSEG_HOME", str(tmp_path / "home"))


def test_missing_file(capsys, tmp_path):
    missing = tmp_path / "nowhere" / "ct.nii.gz"
    line = _fails_with(capsys, ["segment", missing, "--box", "0,1,1,5,5"])
    assert str(missing) in line and "no such file" in line


def test_corrupt_file(capsys, tmp_path):
    corrupt = tmp_path / "scan.nii.gz"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8).tobytes())
    line = _fails_with(capsys, ["segment", corrupt, "--box", "0,1,1,5,5"])
    assert str(corrupt) in line


def test_truncated_file(capsys, tmp_path):
    truncated = tmp_path / "cut.nii.gz"
    data = BRAIN.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    line = _fails_with(capsys, ["segment", truncated, "--box", "10,20,20,60,60"])
    assert str(truncated) in line


def test_wrong_prompt_syntax(capsys):
    line = _fails_with(capsys, ["segment", BRAIN, "--box", "1,2,three"])
    assert "'1,2,three'" in line and "--box" in line
    line = _fails_with(capsys, ["segment", BRAIN, "--points", "10,5"])
    assert "--points" in line and "2 numbers" in line


def test_box_outside_the_image(capsys):
    line = _fails_with(capsys, ["segment", BRAIN, "--box", "10,0,0,5000,5000"])
    assert "outside" in line and "192 rows x 160 cols" in line


def test_labels_of_another_shape(capsys):
    labels = SAMPLES / "ultrasound_2d_labels.png"
    line = _fails_with(capsys, ["evaluate", BRAIN, labels])
    assert str(labels) in line and "(48, 192, 160)" in line


def test_cache_purge_without_a_choice(capsys):
    line = _fails_with(capsys, ["cache", "purge"])
    assert "--all" in line and "--scan" in line


def test_purge_of_an_unreadable_scan_names_it(capsys, tmp_path):
    line = _fails_with(capsys, ["cache", "purge", "--scan", tmp_path / "gone.nrrd"])
    assert "gone.nrrd" in line


def _fake_subcommand(monkeypatch, raise_it):
    def run(args: argparse.Namespace) -> int:
        raise_it()

    def add_parser(subparsers) -> None:
        subparsers.add_parser("boom").set_defaults(func=run)

    import types

    module = types.ModuleType("napari_vfmseg.cli._boom")
    module.add_parser = add_parser
    monkeypatch.setitem(__import__("sys").modules, module.__name__, module)
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, ("boom", module.__name__)])


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    def bug():
        return {}["missing key"]

    _fake_subcommand(monkeypatch, bug)
    err = _fails_with(capsys, ["boom"], code=1)
    assert "Traceback (most recent call last)" in err and "KeyError: 'missing key'" in err
    assert "this is a bug in napari-vfmseg" in err and "report it to" in err and "vfmseg info" in err


def test_a_value_error_from_inside_a_library_is_a_bug_not_bad_input(capsys, monkeypatch):
    _fake_subcommand(monkeypatch, lambda: np.zeros(3).reshape(7))  # numpy raises, not our checks
    err = _fails_with(capsys, ["boom"], code=1)
    assert "Traceback" in err and "ValueError" in err and "bug" in err


def test_our_own_value_error_is_bad_input(capsys, monkeypatch):
    from napari_vfmseg.engine.propagate import preset

    _fake_subcommand(monkeypatch, lambda: preset("sideways"))
    line = _fails_with(capsys, ["boom"])
    assert "unknown propagation preset 'sideways'" in line
