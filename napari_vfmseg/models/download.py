"""Getting a registry model's weights file onto disk, verified, or saying exactly how to.

Weights are downloaded once with pooch (progress bar, sha256 check, written to a temporary file
and moved into place only when complete) into ``<VFMSEG_HOME>/weights``. A file that the user put
there by hand is checked against the registry's sha256 the first time it is used; the result is
remembered in a small JSON sidecar (``<file>.verified.json``) keyed by the file's size and
modification time, so a 2.5 GB checkpoint is not re-hashed at every start.

When the download cannot happen (offline, firewall, server down) the one exception raised,
:class:`ModelDownloadError`, names the URL to fetch, the expected sha256 and size, and the exact
path to put the file at.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from napari_vfmseg.io.atomic import write_text_atomic

if TYPE_CHECKING:
    from napari_vfmseg.models.registry import ModelSpec

logger = logging.getLogger(__name__)

# (connect, read) seconds for each HTTP request: a dead network fails within the connect timeout.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)

_SIDECAR_SUFFIX = ".verified.json"


class ModelDownloadError(OSError):
    """A model's weights are missing and could not be downloaded; the message says what to do."""


class WeightsIntegrityError(ValueError):
    """A weights file on disk does not match the registry's size or sha256."""


def sha256_file(path: Union[str, Path], chunk_size: int = 1 << 22) -> str:
    """Hex sha256 digest of a file's bytes, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _stat_key(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_verified(path: Path, sha256: str) -> bool:
    """True when the sidecar says this exact file (same size and mtime) has this sha256."""
    try:
        record = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return False
    return record.get("sha256") == sha256 and {k: record.get(k) for k in ("size", "mtime_ns")} == _stat_key(path)


def _record_verified(path: Path, sha256: str) -> None:
    """Write the sidecar atomically; a read-only folder only costs a re-hash next time."""
    record = {"sha256": sha256, **_stat_key(path)}
    try:
        write_text_atomic(_sidecar(path), json.dumps(record), make_parents=False)
    except OSError as exc:  # pragma: no cover - depends on file-system permissions
        logger.warning("could not record the verified sha256 of %s: %s", path, exc)


def _manual_instructions(spec: "ModelSpec", path: Path) -> str:
    size = f"{spec.size_bytes} bytes" if spec.size_bytes else "size unknown"
    digest = f"sha256 {spec.sha256}" if spec.sha256 else "sha256 not published; checked by size only"
    return (
        f"Fetch {spec.url} by other means (browser, another machine) and put the file at {path} "
        f"(expected {digest}, {size})."
    )


def check_weights_file(spec: "ModelSpec", path: Path) -> None:
    """Check a present weights file against the spec: size always, sha256 once per file version.

    Raises :class:`WeightsIntegrityError` naming the file, what was expected and what to do.
    """
    actual_size = path.stat().st_size
    if spec.size_bytes is not None and actual_size != spec.size_bytes:
        raise WeightsIntegrityError(
            f"{path} has {actual_size} bytes but {spec.name} weights have {spec.size_bytes} bytes "
            f"(incomplete or different file): delete it and download again. "
            + _manual_instructions(spec, path)
        )
    if spec.sha256 is None or is_verified(path, spec.sha256):
        return
    logger.info("verifying sha256 of %s (once per file)", path)
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise WeightsIntegrityError(
            f"{path} has sha256 {actual} but {spec.name} weights have sha256 {spec.sha256}: "
            f"delete it and download again. " + _manual_instructions(spec, path)
        )
    _record_verified(path, spec.sha256)


def ensure_weights(
    spec: "ModelSpec",
    *,
    progress: bool = True,
    timeout: Union[float, tuple[float, float]] = DEFAULT_TIMEOUT,
    url: Optional[str] = None,
    allow_download: bool = True,
) -> Path:
    """Path of ``spec``'s weights file, downloading and verifying it first if it is missing.

    Weights shipped inside the package (``spec.package_file``) are never downloaded. ``url``
    replaces the spec's URL (a mirror). ``allow_download=False`` never touches the network.
    Raises :class:`ModelDownloadError` when the file is missing and cannot (or may not) be
    downloaded, :class:`WeightsIntegrityError` when a present file is wrong.
    """
    path = spec.local_path()
    if spec.package_file is not None:
        if not path.is_file():
            raise FileNotFoundError(
                f"the weights of {spec.name} should ship with napari-vfmseg at {path} but are "
                f"missing: reinstall napari-vfmseg"
            )
        check_weights_file(spec, path)
        return path
    if path.is_file():
        check_weights_file(spec, path)
        return path
    if not allow_download:
        raise ModelDownloadError(
            f"the {spec.name} weights are not at {path} and downloading is turned off. "
            + _manual_instructions(spec, path)
        )
    return _download(spec, path, url or spec.url, progress=progress, timeout=timeout)


def _download(
    spec: "ModelSpec",
    path: Path,
    url: Optional[str],
    *,
    progress: bool,
    timeout: Union[float, tuple[float, float]],
) -> Path:
    if not url:
        raise ModelDownloadError(f"{spec.name} has no download URL and no weights at {path}")
    import pooch

    known_hash = f"sha256:{spec.sha256}" if spec.sha256 else None
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pooch.retrieve(
            url,
            known_hash=known_hash,
            fname=path.name,
            path=path.parent,
            downloader=downloader,
            progressbar=progress,
        )
    except Exception as exc:  # network errors, HTTP errors, hash mismatch: one clear message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
        reason = reason if len(reason) <= 240 else reason[:237] + "..."
        raise ModelDownloadError(
            f"could not download the {spec.name} weights from {url} ({type(exc).__name__}: {reason}). "
            + _manual_instructions(spec, path)
        ) from exc
    actual_size = path.stat().st_size
    if spec.size_bytes is not None and actual_size != spec.size_bytes:
        path.unlink()
        raise ModelDownloadError(
            f"the file downloaded from {url} has {actual_size} bytes, expected {spec.size_bytes}; "
            f"it was removed. " + _manual_instructions(spec, path)
        )
    if spec.sha256:
        _record_verified(path, spec.sha256)  # pooch checked the digest before moving it in place
    return path
