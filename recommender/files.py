"""Writing files safely: atomic replacement (index, checkpoints, caches) and the pictures a user asks for."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
from pathlib import Path

from PIL import Image

from .errors import RecommenderError


def write_atomic(path: Path, data: bytes) -> str:
    """Write to a temporary name, flush to disk, then rename over `path`; returns the sha256.

    Readers see the old file or the whole new one, never a part; a crash leaves at most a
    `.tmp` file that the next index write removes.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return hashlib.sha256(data).hexdigest()


def write_cache(path: Path, data: bytes) -> None:
    """`write_atomic` for a cache entry: a read-only or full cache folder only costs recomputing it next time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)


def fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (a no-op where the platform cannot)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_output(data: bytes, path: str | os.PathLike) -> Path:
    """Write a file the user named (a PNG, a map), with a clear error when its folder is missing or read-only."""
    target = Path(path)
    if not target.parent.is_dir():
        raise RecommenderError(f"cannot write {target}: folder {target.parent} does not exist")
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise RecommenderError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """`write_output` of a picture as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_output(buffer.getvalue(), path)
