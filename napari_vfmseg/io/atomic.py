"""Atomic writes: the one way this project puts a file or folder in place.

Everything is written under a temporary name in the target's own folder (same file system) and
renamed into place with ``os.replace``, so a reader never sees a half-written file and a failed
write leaves nothing behind. Pure standard library: importing this loads no SimpleITK or torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, *, folder: bool = False, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit rename it onto ``path``.

    The caller writes the temporary path in any way it likes (``torch.save``, ``safetensors``,
    SimpleITK, a zarr group when ``folder=True``). The temporary keeps ``path``'s suffixes, so
    writers that pick a format by extension still work. On an exception it is removed and the
    exception propagates; ``path`` is then untouched. With ``folder=True`` an existing non-empty
    folder at ``path`` makes the rename fail (``OSError``); callers that may race decide what that means.
    """
    final = Path(path)
    if make_parents:
        final.parent.mkdir(parents=True, exist_ok=True)
    elif not final.parent.is_dir():
        raise FileNotFoundError(f"{final}: the folder {final.parent} does not exist")
    suffix = "".join(final.suffixes) if final.suffixes else ".tmp"
    if folder:
        temporary = Path(tempfile.mkdtemp(prefix=f".{final.stem}.", suffix=".tmp", dir=final.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=f".{final.stem}.tmp.", suffix=suffix, dir=final.parent)
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True, make_parents: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (flushed to disk first when ``fsync``). Returns the path."""
    with atomic_path(path, make_parents=make_parents) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            if fsync:
                os.fsync(stream.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False, make_parents: bool = True) -> Path:
    """Write ``text`` as UTF-8 (newlines kept as given) to ``path`` atomically. Returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync, make_parents=make_parents)
