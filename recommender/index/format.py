"""The index's data files: one safetensors tensor of vectors, the items and skips as JSON columns, checksums.

No pickle anywhere: loading an index never runs code. Every reader is bounded (sizes, header
lengths, nesting) and says which file is wrong and how to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import Item, Skip
from ..errors import IndexLoadError
from .manifest import FORMAT_VERSION, rebuild_hint

#: The most bytes an items file may hold (about 10M items).
ITEMS_MAX_BYTES = 2 << 30
_DTYPES = {"F16": np.float16, "F32": np.float32}
# Our safetensors header is about 200 bytes: one tensor and a little metadata.
_HEADER_MAX = 1 << 16


def safetensors_bytes(key: str, array: np.ndarray) -> bytes:
    """A safetensors file holding one tensor (the format is a JSON header then raw little-endian data)."""
    dtype = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}[array.dtype]
    raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header = {
        key: {"dtype": dtype, "shape": list(array.shape), "data_offsets": [0, len(raw)]},
        "__metadata__": {"format": "recommender-index", "version": str(FORMAT_VERSION)},
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # keep the data 8-byte aligned
    return struct.pack("<Q", len(head)) + head + raw


def open_safetensors(path: Path, key: str, shape: tuple[int, int], label: str) -> np.ndarray:
    """Memory-map one tensor of a safetensors file after checking the header against the file's size."""
    bad = f"index {label!r} is corrupt: {path.name}"
    not_ours = f"{bad} is truncated or not a safetensors file; {rebuild_hint(label)}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (head_len,) = struct.unpack("<Q", fh.read(8))
            if head_len > min(size - 8, _HEADER_MAX):
                raise IndexLoadError(not_ours)
            header = json.loads(fh.read(head_len))
    except FileNotFoundError:
        raise IndexLoadError(f"{bad} is missing; {rebuild_hint(label)}") from None
    except (OSError, struct.error, ValueError, UnicodeDecodeError, RecursionError):
        raise IndexLoadError(not_ours) from None
    entry = header.get(key) if isinstance(header, dict) else None
    if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES:
        raise IndexLoadError(f"{bad} holds no {key!r} tensor of float16/float32; {rebuild_hint(label)}")
    dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) and x >= 0 for x in offsets)):
        raise IndexLoadError(f"{bad} has a malformed header (data_offsets); {rebuild_hint(label)}")
    start, end = offsets
    if entry.get("shape") != list(shape):
        raise IndexLoadError(
            f"{bad} holds shape {str(entry.get('shape'))[:40]} but the manifest says {list(shape)}; "
            f"{rebuild_hint(label)}"
        )
    if end - start != shape[0] * shape[1] * dtype.itemsize or 8 + head_len + end != size:
        raise IndexLoadError(f"{bad} is truncated ({size} bytes, expected {8 + head_len + end}); {rebuild_hint(label)}")
    if shape[0] == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + head_len + start, shape=shape)


def encode_items(items: Sequence[Item]) -> dict[str, Any]:
    columns = sorted({k for item in items for k in item.metadata})
    return {
        "id": [i.id for i in items],
        "path": [i.path for i in items],
        "label": [i.label for i in items],
        "sha256": [i.sha256 for i in items],
        "metadata": {c: [i.metadata.get(c) for i in items] for c in columns},
    }


def encode_skips(skips: Sequence[Skip]) -> dict[str, Any]:
    """The skipped pictures of a build as columns, like the items: where, why, and the label."""
    return {"where": [s.where for s in skips], "reason": [s.reason for s in skips], "label": [s.label for s in skips]}


def decode_skips(data: Any, label: str) -> list[Skip]:
    """The skipped pictures read back from an index folder, every cell checked to be a string (or null)."""
    columns = [data.get(key) for key in ("where", "reason", "label")] if isinstance(data, dict) else []
    if (
        len(columns) != 3
        or not all(isinstance(col, list) and len(col) == len(columns[0]) for col in columns)
        or not set(map(type, columns[0])) | set(map(type, columns[1])) <= {str}
        or not set(map(type, columns[2])) <= {str, type(None)}
    ):
        raise IndexLoadError(f"index {label!r} has a malformed list of skipped pictures; {rebuild_hint(label)}")
    return [Skip(where, reason, tag) for where, reason, tag in zip(*columns)]


def _plain_relative(path: str) -> bool:
    """True for a path like `a/b.png`: relative, '/'-separated, no '', '.' or '..' part, no backslash or NUL."""
    return (
        bool(path)
        and "\\" not in path
        and "\0" not in path
        and not re.match(r"^[A-Za-z]:", path)
        and not any(part in ("", ".", "..") for part in path.split("/"))
    )


def _first_not_plain(paths: list[str]) -> int | None:
    """Position of the first path that is not `_plain_relative`, or None: a few substring scans over all of them."""
    joined = "\0".join(paths)
    if not paths or joined.count("\0") != len(paths) - 1 or "\\" in joined or ":" in joined:
        slow = True  # a NUL, a backslash or a possible drive: look at each path
    else:
        parts = f"/{joined.replace(chr(0), '/')}/"  # every part between slashes, paths included
        slow = "//" in parts or "/./" in parts or "/../" in parts
    return next((i for i, path in enumerate(paths) if not _plain_relative(path)), None) if slow else None


def decode_items(data: Any, count: int, label: str) -> list[Item]:
    def malformed(why: str) -> IndexLoadError:
        return IndexLoadError(f"index {label!r} has a malformed items file ({why}); {rebuild_hint(label)}")

    if not isinstance(data, dict):
        raise malformed("not an object of columns")
    meta = data.get("metadata") or {}
    columns = [data.get(key) for key in ("id", "path", "label", "sha256")]
    if not isinstance(meta, dict) or not all(isinstance(col, list) for col in (*columns, *meta.values())):
        raise malformed("columns must be lists")
    ids, paths, labels, hashes = columns
    if not all(len(col) == count for col in (*columns, *meta.values())):
        raise malformed("column lengths differ from the manifest's count")
    # Every cell is a string (or null where allowed): nothing nested, nothing that a later step could choke on.
    if not set(map(type, ids)) | set(map(type, paths)) <= {str}:
        raise malformed("an id or path that is not a string")
    if not set().union(*(map(type, col) for col in (labels, hashes, *meta.values()))) <= {str, type(None)}:
        raise malformed("a label, hash or metadata value that is not a string")
    bad = _first_not_plain(paths)
    if bad is not None:
        raise IndexLoadError(
            f"index {label!r} is refused: item {bad} has the path {paths[bad][:80]!r}, which is not a plain "
            f"relative path inside its catalog folder (absolute, '..', or empty); {rebuild_hint(label)}"
        )
    names = list(meta)
    return [
        Item(
            id=ids[i],
            path=paths[i],
            label=labels[i],
            sha256=hashes[i],
            metadata={c: meta[c][i] for c in names if meta[c][i] is not None},
        )
        for i in range(count)
    ]


def read_json(path: Path, label: str, *, limit: int) -> Any:
    """Parse a JSON file of an index, refusing one larger than `limit` bytes or nested beyond reason."""
    corrupt = f"index {label!r} is corrupt: {path.name}"
    try:
        size = path.stat().st_size
        if size > limit:
            raise IndexLoadError(
                f"{corrupt} is {size / 1e6:,.1f} MB, more than the {limit / 1e6:,.1f} MB it may be; "
                f"{rebuild_hint(label)}"
            )
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise IndexLoadError(f"{corrupt} is missing; {rebuild_hint(label)}") from None
    except RecursionError:
        raise IndexLoadError(f"{corrupt} is nested too deeply to be an index file; {rebuild_hint(label)}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IndexLoadError(f"{corrupt} is not valid JSON ({str(exc)[:80]}); {rebuild_hint(label)}") from None


def verify_hash(path: Path, expected: str | None, label: str) -> None:
    if not expected:
        return
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise IndexLoadError(f"index {label!r} is corrupt: {path.name} is missing; {rebuild_hint(label)}") from None
    if digest.hexdigest() != expected:
        raise IndexLoadError(
            f"index {label!r} is corrupt: {path.name} does not match its checksum (truncated or changed); "
            f"{rebuild_hint(label)}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
