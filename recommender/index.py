"""Built indexes on disk: the folder format, atomic writes, integrity checks on load, and search through a store.

An index is a folder `<index dir>/<name>/` holding

* `manifest.json`: format version, backbone spec and weights identity, dim, count, dtype, the
  catalog it came from, where the vectors live (`store`), and the names and sha256 of the data files;
* `embeddings-<id>.safetensors`: one `(count, dim)` float16/float32 tensor of unit rows, when the
  vectors are stored locally (the default); with `--store milvus...` they live in a Milvus
  collection named in the manifest instead (see `store`);
* `items-<id>.json`: the items, column by column (ids, relative paths, labels, hashes, metadata).

The manifest is the commit point. A build writes new data files (or a new collection) under fresh
names, then replaces the manifest with one atomic rename; a crash at any moment leaves either the
old manifest (whose data was never touched) or the new one. No pickle is involved anywhere.

An index folder may come from elsewhere (downloaded, hand-made), so loading trusts none of it: the
JSON files are bounded in size and nesting, every field is type-checked, item paths must be plain
relative paths under a catalog root that is an absolute folder (not the file system's root), a
picture reached through a link outside that root is refused when its path is handed out, and
vectors must be finite numbers (checked on load when the file is checksummed, else when searched).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .backbones import Backbone, load_backbone, normalise
from .calibration import calibrate
from .catalog import Item
from .errors import IndexLoadError, IndexMismatchError, IndexNotFoundError, RecommenderError
from .files import fsync_dir, write_atomic
from .ranking import LabelGroups
from .runtime import Runtime
from .store import Filters, LocalStore, MilvusStore, Store, StoreConfig, check_finite, drop_stale, open_store
from .version import __version__

#: The newest manifest format this library reads and writes. Version 1 has no `store` (the vectors
#: are local); version 2 adds it. Local indexes are still written as version 1, which every reader
#: of this format understands; indexes in Milvus as version 2, which older readers refuse plainly.
FORMAT_VERSION = 2
_LOCAL_VERSION = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DTYPES = {"F16": np.float16, "F32": np.float32}
# What a manifest's backbone spec may hold (the keyword arguments of load_backbone that describe an index).
_SPEC_KEYS = {"model", "weights", "pooling", "image_size", "fit"}
# Files up to this size are checked against their sha256 on every load; larger ones on `info --verify`.
_VERIFY_LIMIT = 64 << 20
# Item files larger than this are parsed on first use rather than when the index is opened.
_LAZY_ITEMS = 8 << 20
#: The most bytes a manifest and an items file may hold (about 10M items), and how deep a manifest may nest.
MANIFEST_MAX_BYTES = 16 << 20
ITEMS_MAX_BYTES = 2 << 30
_MAX_DEPTH = 16
# Our safetensors header is about 200 bytes: one tensor and a little metadata.
_HEADER_MAX = 1 << 16
_MAX_DIM = 1 << 16


@dataclass(frozen=True)
class Match:
    """One search result: rank (1 = best), cosine score, the item and the absolute path of its picture."""

    rank: int
    score: float
    item: Item
    path: Path

    @property
    def id(self) -> str:
        return self.item.id

    @property
    def label(self) -> str | None:
        return self.item.label

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "id": self.item.id,
            "label": self.item.label,
            "score": round(self.score, 6),
            "path": str(self.path),
            "metadata": dict(self.item.metadata),
        }


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise RecommenderError(
            f"bad index name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def index_folder(name: str, index_dir: str | Path | None = None) -> Path:
    return settings.index_dir(index_dir) / check_name(name)


def list_indexes(index_dir: str | Path | None = None) -> list[str]:
    """Names of the folders in the index folder that hold a manifest."""
    root = settings.index_dir(index_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


class Index:
    """A loaded index: its manifest, items and the store of its vectors; searched with `search`."""

    def __init__(self, folder: Path, manifest: dict[str, Any], store: Store | np.ndarray,
                 items: list[Item] | Callable[[], list[Item]]) -> None:
        self.folder = folder
        self.manifest = manifest
        # Items, or a function that reads them: a big index's items are only parsed when first needed.
        self._items: list[Item] | None = items if isinstance(items, list) else None
        self._read_items = None if isinstance(items, list) else items
        self._items_lock = threading.Lock()
        # An array is the local store's memory-mapped (N, D) unit rows.
        self.store = LocalStore(store, lambda: self.items, label=folder.name) if isinstance(store, np.ndarray) \
            else store
        self._positions: dict[str, int] | None = None
        self._backbones: dict[str | None, Backbone] = {}  # by device, loaded on first use
        self._backbone_lock = threading.Lock()
        # Real (links followed) folders of the items' pictures already checked to lie under the root.
        self._checked_dirs: set[str] = set()

    @property
    def items(self) -> list[Item]:
        """The items, row by row (read from disk on first use for indexes with large item files)."""
        if self._items is None:
            with self._items_lock:
                if self._items is None:
                    assert self._read_items is not None
                    self._items = self._read_items()
        return self._items

    @property
    def embeddings(self) -> np.ndarray:
        """(N, D) stored unit rows: memory-mapped when local; fetched once into memory from other stores."""
        return self.store.vectors()

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, name: str | Path, *, index_dir: str | Path | None = None, verify: bool | None = None) -> Index:
        """Open the index called `name` (or the folder, when given a `Path`), checking format, shapes and checksums.

        Raises `IndexNotFoundError`, `IndexLoadError` (corrupt or truncated) or
        `IndexMismatchError` (another format version), each saying how to rebuild.
        """
        folder = name if isinstance(name, Path) else index_folder(name, index_dir)  # a Path is a folder
        label = folder.name
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            if folder.is_dir():
                raise IndexLoadError(f"index {label!r} is incomplete (no {MANIFEST}); {_rebuild_hint(label)}")
            known = list_indexes(folder.parent)
            listing = f"; available: {', '.join(known)}" if known else ""
            raise IndexNotFoundError(
                f"no index named {label!r} in {folder.parent}{listing}; build one with "
                f"`python -m recommender index SOURCE --name {label}`"
            )
        manifest = _read_json(manifest_path, label, limit=MANIFEST_MAX_BYTES)
        _check_manifest(manifest, label)
        files = manifest["files"]
        items_path = folder / files["items"]
        count, dim = manifest["count"], manifest["dim"]

        def read_items() -> list[Item]:
            _verify_hash(items_path, files.get("items_sha256"), label)
            return _decode_items(_read_json(items_path, label, limit=ITEMS_MAX_BYTES), count, label)

        # Small item files are read and checked now; large ones (beyond ~100k items; a million items
        # take seconds to parse) when first needed, so that opening an index stays well under a second.
        lazy = items_path.exists() and items_path.stat().st_size > _LAZY_ITEMS
        items: list[Item] | Callable[[], list[Item]] = read_items if lazy else read_items()
        location = manifest.get("store") or {"kind": "local"}
        if location.get("kind") != "local":
            return cls(folder, manifest, open_store(location, folder=folder, count=count, dim=dim, label=label), items)
        emb_path = folder / files["embeddings"]
        check = verify if verify is not None else emb_path.exists() and emb_path.stat().st_size <= _VERIFY_LIMIT
        if check:
            _verify_hash(emb_path, files.get("embeddings_sha256"), label)
        embeddings = _open_safetensors(emb_path, "embeddings", (count, dim), label)
        if check:  # read whole for the checksum already: finding a NaN costs little more
            check_finite(embeddings, label)
        return cls(folder, manifest, embeddings, items)

    # ----------------------------------------------------------------------------- facts

    @property
    def name(self) -> str:
        # The folder's name, never the manifest's: an index cannot pass itself off as another one.
        return self.folder.name

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def root(self) -> Path:
        """The folder the items' paths are relative to (absolute, not the file system's root: checked on load)."""
        return Path(self.manifest["catalog"]["root"])

    @cached_property
    def _real_root(self) -> str:
        return os.path.realpath(self.manifest["catalog"]["root"])

    @property
    def labeled(self) -> bool:
        return bool(self.manifest["catalog"].get("labeled"))

    @cached_property
    def labels(self) -> LabelGroups:
        """The items grouped by label (see `ranking.LabelGroups`)."""
        return LabelGroups.of([item.label for item in self.items])

    @property
    def label_names(self) -> list[str]:
        """The distinct labels, sorted (empty for an unlabeled index)."""
        return self.labels.names

    @property
    def label_codes(self) -> np.ndarray:
        """(N,) int: each item's position in `label_names`, or -1 when it has no label."""
        return self.labels.codes

    def label_scores(self, scores: np.ndarray) -> np.ndarray:
        """(Q, L) best item score per label, from (Q, N) item scores; columns follow `label_names`."""
        return self.labels.best(scores)

    @cached_property
    def calibration(self) -> dict[str, Any]:
        """How this index decides that a picture is in the catalog (see `calibration.calibrate`).

        Indexes written before calibration existed get it derived once, in memory (the manifest is
        left as it was read).
        """
        return self.manifest.get("calibration") or calibrate(self.embeddings, [i.label for i in self.items])

    @property
    def domain(self) -> str | None:
        """What the catalog's items are, for messages and web searches (e.g. "Pokémon"), if known."""
        return self.manifest["catalog"].get("domain")

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    @property
    def version(self) -> str:
        """This build of the index: the stamp of its data files, new at every write (caches key on it).

        Taken from the items file, which every store writes (a Milvus index has no embeddings file).
        """
        return self.manifest["files"]["items"].removeprefix("items-").removesuffix(".json")

    def derived_file(self, kind: str, suffix: str) -> Path:
        """Where to cache something computed from this version of the index (e.g. its 2-D map).

        The name carries the version, so a rebuild makes it stale, and the next write of the index
        removes it.
        """
        return self.folder / f"derived-{kind}-{self.version}{suffix}"

    def path_of(self, item: Item) -> Path:
        """The picture of an item, refused (`IndexLoadError`) when a link takes it outside the catalog root.

        Item paths are plain relative paths (checked on load), so only links can lead elsewhere:
        the real folder of each picture is checked once, and the picture itself when it is a link.
        """
        path = os.path.join(self.manifest["catalog"]["root"], item.path)
        folder = os.path.dirname(path)
        if folder not in self._checked_dirs:
            if not _inside(os.path.realpath(folder), self._real_root):
                raise self._outside(item)
            self._checked_dirs.add(folder)
        if os.path.islink(path) and not _inside(os.path.realpath(path), self._real_root):
            raise self._outside(item)
        return Path(os.path.normpath(path))

    def _outside(self, item: Item) -> IndexLoadError:
        return IndexLoadError(f"index {self.name!r}: the picture of item {item.id[:80]!r} is a link to a file outside "
                              f"its catalog folder, which is refused; remove the link or {_rebuild_hint(self.name)}")

    def position(self, item_id: str) -> int:
        """The row of the item with this id, or a clear error."""
        if self._positions is None:
            self._positions = {item.id: i for i, item in enumerate(self.items)}
        try:
            return self._positions[item_id]
        except KeyError:
            raise RecommenderError(f"no item with id {item_id!r} in index {self.name!r}") from None

    def vector(self, item_id: str) -> np.ndarray:
        """(D,) float32 embedding of an item."""
        row = self.position(item_id)
        vector = np.asarray(self.store.vectors([row])[0], dtype=np.float32)
        check_finite(vector[None, :], self.name, first_row=row)
        return vector

    # ----------------------------------------------------------------------------- backbone

    def backbone(self, *, device: str | None = None, runtime: Runtime | None = None) -> Backbone:
        """The backbone this index was built with, checked to have the same weights.

        Taken from `runtime`'s pool when given (shared by every index built the same way), else
        loaded once for this `Index` object and device.
        """
        spec = dict(self.manifest["backbone"])
        if runtime is not None:
            backbone = runtime.backbone(spec, device=device)
        else:
            with self._backbone_lock:
                if device not in self._backbones:
                    self._backbones[device] = load_backbone(**spec, device=device)
                backbone = self._backbones[device]
        self.check_backbone(backbone)
        return backbone

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise `IndexMismatchError` unless `backbone` embeds exactly as the one that built this index."""
        mine = self.manifest["backbone"]
        if backbone.spec != mine:
            raise IndexMismatchError(
                f"index {self.name!r} was built with {_describe_spec(mine)}, not {_describe_spec(backbone.spec)}; "
                f"search it with the same backbone or {_rebuild_hint(self.name, backbone.spec)}"
            )
        if backbone.identity != self.manifest["weights"]:
            raise IndexMismatchError(
                f"index {self.name!r} was built with other weights for {backbone.name} "
                f"({self.manifest['weights']}, now {backbone.identity}); {_rebuild_hint(self.name, backbone.spec)}"
            )
        if backbone.dim != self.dim:
            raise IndexMismatchError(f"index {self.name!r} holds {self.dim}-d vectors but {backbone.name} gives "
                                     f"{backbone.dim}-d; {_rebuild_hint(self.name, backbone.spec)}")

    # ----------------------------------------------------------------------------- search

    def filters(self, where: Mapping[str, str | Sequence[str]] | None) -> Filters | None:
        """`key=value` filters checked against this index's columns (values of one key are OR-ed, keys AND-ed).

        Keys are `label`, `id` or metadata columns; values compare case-insensitively.
        """
        if not where:
            return None
        keys = {"label", "id"} | {k for item in self.items[:1000] for k in item.metadata}
        return Filters.of(where, keys, self.name)

    def mask(self, where: Mapping[str, str | Sequence[str]] | None) -> np.ndarray | None:
        """Boolean (N,) mask of the items matching every `key=value` filter (see `filters`)."""
        filters = self.filters(where)
        return None if filters is None else filters.mask(self.items)

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))  # (Q, D)
        if q.shape[1] != self.dim:
            raise IndexMismatchError(
                f"query vectors are {q.shape[1]}-d but index {self.name!r} holds {self.dim}-d vectors; "
                "embed queries with the backbone the index was built with"
            )
        if not np.isfinite(q).all():  # NaN would score nothing and return no match, silently
            raise RecommenderError(f"a query vector is not a number (NaN or infinite), so index {self.name!r} "
                                   "cannot be searched with it; the backbone gave no usable vector")
        return q

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) cosine scores of (Q, D) (or (D,)) query vectors against every item.

        Exact with the local store; an ANN store scores the `store.SCORE_CANDIDATES` nearest items
        and gives the others -inf, which ranks labels the same way unless the catalog is larger.
        """
        return self.store.scores(self._queries(queries))

    def search(
        self,
        query: np.ndarray,
        *,
        k: int = 10,
        where: Mapping[str, str | Sequence[str]] | None = None,
        exclude: Sequence[str] = (),
    ) -> list[Match]:
        """The k items most similar to one query vector, best first; `where` filters, `exclude` drops ids."""
        return self.search_many(np.atleast_2d(query), k=k, where=where, exclude=exclude)[0]

    def search_many(
        self,
        queries: np.ndarray,
        *,
        k: int = 10,
        where: Mapping[str, str | Sequence[str]] | None = None,
        exclude: Sequence[str] = (),
    ) -> list[list[Match]]:
        """`search` for each row of a (Q, D) array of query vectors."""
        if k < 1:
            raise RecommenderError(f"k must be at least 1, not {k}")
        q = self._queries(queries)
        found = self.store.search(q, k, where=self.filters(where), exclude=[self.position(i) for i in exclude])
        return [
            [Match(rank=r, score=float(s), item=self.items[i], path=self.path_of(self.items[i]))
             for r, (i, s) in enumerate(zip(rows.tolist(), scores), start=1)]
            for rows, scores in found
        ]

    def ann_recall(self, queries: np.ndarray, k: int = 10) -> float:
        """Recall@k of this index's search against exact search (1.0 for the exact local store)."""
        return self.store.recall(self._queries(queries), k)

    def __repr__(self) -> str:
        return (f"<Index {self.name} {len(self)} items, {self.dim}-d, {self.manifest['backbone']['model']}, "
                f"{self.store.kind} store>")


# --------------------------------------------------------------------------------- writing


def write_index(
    folder: Path,
    *,
    embeddings: np.ndarray,
    items: Sequence[Item],
    backbone: Backbone,
    catalog: Mapping[str, Any],
    dtype: str = "float16",
    stats: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
    store: StoreConfig | str | None = None,
) -> dict[str, Any]:
    """Write an index atomically (see the module docstring) and return its manifest.

    `store` says where the vectors go (default: `RECOMMENDER_STORE`, else local files).
    """
    if dtype not in ("float16", "float32"):
        raise RecommenderError(f"dtype must be float16 or float32, not {dtype!r}")
    assert embeddings.shape == (len(items), backbone.dim), (embeddings.shape, len(items), backbone.dim)
    config = StoreConfig.parse(store if store is not None else settings.store())
    # Rounded to the stored precision first, so that every store scores exactly the same vectors.
    data = np.ascontiguousarray(embeddings, dtype=np.float16 if dtype == "float16" else np.float32)
    bad = np.flatnonzero(~np.isfinite(data).all(axis=1)) if data.size else np.zeros(0, dtype=np.int64)
    if len(bad):  # an index of NaN vectors would match nothing: refuse it before anything is written
        named = ", ".join(items[int(i)].path for i in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise RecommenderError(
            f"{backbone.name} gave vectors that are not numbers (NaN or infinite) for {len(bad)} of {len(items)} "
            f"pictures ({named}); nothing was written: check the model's weights, or leave those pictures out")
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        previous = _previous_location(folder)
        tag = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        emb_name, items_name = f"embeddings-{tag}.safetensors", f"items-{tag}.json"
        files: dict[str, Any] = {}
        if config.kind == "local":
            location: dict[str, Any] = {"kind": "local"}
            files = {"embeddings": emb_name,
                     "embeddings_sha256": write_atomic(folder / emb_name, _safetensors_bytes("embeddings", data))}
        else:
            location = MilvusStore.write(config, folder=folder, tag=tag, vectors=data, items=items)
        items_sha = write_atomic(folder / items_name, json.dumps(_encode_items(items), ensure_ascii=False).encode())
        manifest = {
            "format_version": _LOCAL_VERSION if config.kind == "local" else FORMAT_VERSION,
            "library_version": __version__,
            "name": folder.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "backbone": backbone.spec,
            "backbone_name": backbone.name,
            "weights": backbone.identity,
            "dim": backbone.dim,
            "count": len(items),
            "dtype": dtype,
            "catalog": dict(catalog),
            "store": location,
            "files": {**files, "items": items_name, "items_sha256": items_sha},
            "stats": dict(stats or {}),
            "calibration": dict(calibration or {}),
        }
        write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
        fsync_dir(folder)
        _remove_stale(folder, keep={MANIFEST, emb_name, items_name, ".lock"})
        drop_stale(folder, location, previous)
    return manifest


def _previous_location(folder: Path) -> dict[str, Any] | None:
    """Where the committed version of this index keeps its vectors, if it can be told (to clean up after)."""
    with contextlib.suppress(RecommenderError):
        manifest = _read_json(folder / MANIFEST, folder.name, limit=MANIFEST_MAX_BYTES)
        if isinstance(manifest, dict) and isinstance(manifest.get("store"), dict):
            return manifest["store"]
    return None


def _remove_stale(folder: Path, keep: set[str]) -> None:
    # Files of earlier versions and temporaries of crashed builds; a concurrent build holds the lock.
    for path in folder.iterdir():
        if path.is_file() and path.name not in keep and (
            path.name.startswith(("embeddings-", "items-", "derived-")) or path.name.endswith(".tmp")
        ):
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One writer per index folder at a time (advisory lock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------- formats


def _safetensors_bytes(key: str, array: np.ndarray) -> bytes:
    """A safetensors file holding one tensor (the format is a JSON header then raw little-endian data)."""
    dtype = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}[array.dtype]
    raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header = {key: {"dtype": dtype, "shape": list(array.shape), "data_offsets": [0, len(raw)]},
              "__metadata__": {"format": "recommender-index", "version": str(FORMAT_VERSION)}}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # keep the data 8-byte aligned
    return struct.pack("<Q", len(head)) + head + raw


def _open_safetensors(path: Path, key: str, shape: tuple[int, int], label: str) -> np.ndarray:
    """Memory-map one tensor of a safetensors file after checking the header against the file's size."""
    bad = f"index {label!r} is corrupt: {path.name}"
    not_ours = f"{bad} is truncated or not a safetensors file; {_rebuild_hint(label)}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (head_len,) = struct.unpack("<Q", fh.read(8))
            if head_len > min(size - 8, _HEADER_MAX):
                raise IndexLoadError(not_ours)
            header = json.loads(fh.read(head_len))
    except FileNotFoundError:
        raise IndexLoadError(f"{bad} is missing; {_rebuild_hint(label)}") from None
    except (OSError, struct.error, ValueError, UnicodeDecodeError, RecursionError):
        raise IndexLoadError(not_ours) from None
    entry = header.get(key) if isinstance(header, dict) else None
    if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES:
        raise IndexLoadError(f"{bad} holds no {key!r} tensor of float16/float32; {_rebuild_hint(label)}")
    dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) and x >= 0 for x in offsets)):
        raise IndexLoadError(f"{bad} has a malformed header (data_offsets); {_rebuild_hint(label)}")
    start, end = offsets
    if entry.get("shape") != list(shape):
        raise IndexLoadError(f"{bad} holds shape {str(entry.get('shape'))[:40]} but the manifest says {list(shape)}; "
                             f"{_rebuild_hint(label)}")
    if end - start != shape[0] * shape[1] * dtype.itemsize or 8 + head_len + end != size:
        raise IndexLoadError(f"{bad} is truncated ({size} bytes, expected {8 + head_len + end}); "
                             f"{_rebuild_hint(label)}")
    if shape[0] == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=8 + head_len + start, shape=shape)


def _encode_items(items: Sequence[Item]) -> dict[str, Any]:
    columns = sorted({k for item in items for k in item.metadata})
    return {
        "id": [i.id for i in items],
        "path": [i.path for i in items],
        "label": [i.label for i in items],
        "sha256": [i.sha256 for i in items],
        "metadata": {c: [i.metadata.get(c) for i in items] for c in columns},
    }


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _plain_relative(path: str) -> bool:
    """True for a path like `a/b.png`: relative, '/'-separated, no '', '.' or '..' part, no backslash or NUL."""
    return (bool(path) and "\\" not in path and "\0" not in path and not re.match(r"^[A-Za-z]:", path)
            and not any(part in ("", ".", "..") for part in path.split("/")))


def _first_not_plain(paths: list[str]) -> int | None:
    """Position of the first path that is not `_plain_relative`, or None: a few substring scans over all of them."""
    joined = "\0".join(paths)
    if not paths or joined.count("\0") != len(paths) - 1 or "\\" in joined or ":" in joined:
        slow = True  # a NUL, a backslash or a possible drive: look at each path
    else:
        parts = f"/{joined.replace(chr(0), '/')}/"  # every part between slashes, paths included
        slow = "//" in parts or "/./" in parts or "/../" in parts
    return next((i for i, path in enumerate(paths) if not _plain_relative(path)), None) if slow else None


def _decode_items(data: Any, count: int, label: str) -> list[Item]:
    def malformed(why: str) -> IndexLoadError:
        return IndexLoadError(f"index {label!r} has a malformed items file ({why}); {_rebuild_hint(label)}")

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
            f"relative path inside its catalog folder (absolute, '..', or empty); {_rebuild_hint(label)}")
    names = list(meta)
    return [
        Item(id=ids[i], path=paths[i], label=labels[i], sha256=hashes[i],
             metadata={c: meta[c][i] for c in names if meta[c][i] is not None})
        for i in range(count)
    ]


def _read_json(path: Path, label: str, *, limit: int) -> Any:
    """Parse a JSON file of an index, refusing one larger than `limit` bytes or nested beyond reason."""
    corrupt = f"index {label!r} is corrupt: {path.name}"
    try:
        size = path.stat().st_size
        if size > limit:
            raise IndexLoadError(f"{corrupt} is {size / 1e6:,.1f} MB, more than the {limit / 1e6:,.1f} MB it may be; "
                                 f"{_rebuild_hint(label)}")
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise IndexLoadError(f"{corrupt} is missing; {_rebuild_hint(label)}") from None
    except RecursionError:
        raise IndexLoadError(f"{corrupt} is nested too deeply to be an index file; {_rebuild_hint(label)}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IndexLoadError(f"{corrupt} is not valid JSON ({str(exc)[:80]}); {_rebuild_hint(label)}") from None


def _depth(value: Any, limit: int) -> bool:
    """True when JSON `value` nests no deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_manifest(manifest: Any, label: str) -> None:
    def malformed(what: str) -> IndexLoadError:
        return IndexLoadError(f"index {label!r} has a malformed manifest ({what}); {_rebuild_hint(label)}")

    if not isinstance(manifest, dict):
        raise IndexLoadError(f"index {label!r} has a malformed manifest; {_rebuild_hint(label)}")
    version = manifest.get("format_version")
    if version not in (_LOCAL_VERSION, FORMAT_VERSION) or isinstance(version, bool):
        newer = isinstance(version, int) and version > FORMAT_VERSION
        why = "a newer version of recommender; upgrade it" if newer else "an older version of recommender"
        raise IndexMismatchError(
            f"index {label!r} has format version {str(version)[:20]} (built by {why}), this library reads versions "
            f"{_LOCAL_VERSION}-{FORMAT_VERSION} (library {__version__}); {_rebuild_hint(label)}"
        )
    if not _depth(manifest, _MAX_DEPTH):
        raise malformed("nested too deeply")
    required = {"backbone": dict, "weights": str, "dim": int, "count": int, "catalog": dict, "files": dict}
    for key, kind in required.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise malformed(f"bad {key!r}")
    if not (0 < manifest["dim"] <= _MAX_DIM and 0 <= manifest["count"] < 1 << 40):
        raise malformed("bad 'dim' or 'count'")
    for key in ("stats", "calibration"):
        if not isinstance(manifest.get(key) or {}, dict):
            raise malformed(f"bad {key!r}")
    threshold = (manifest.get("calibration") or {}).get("threshold", 0.0)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise malformed("bad calibration threshold")
    spec = manifest["backbone"]
    if not isinstance(spec.get("model"), str) or not set(spec) <= _SPEC_KEYS:
        # The spec becomes load_backbone's keyword arguments: only the ones it takes, as data.
        raise malformed(f"bad backbone {_describe_spec(spec)[:120]!r}")
    _check_root(manifest["catalog"].get("root"), label)
    store = manifest.get("store")
    if store is not None and not (isinstance(store, dict) and isinstance(store.get("kind"), str)):
        raise malformed("bad 'store'")
    local = store is None or store["kind"] == "local"
    for key in ("embeddings", "items") if local else ("items",):
        name = manifest["files"].get(key)
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise malformed(f"bad file {str(name)[:80]!r}")
    for key in ("embeddings_sha256", "items_sha256"):
        digest = manifest["files"].get(key)
        if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
            raise malformed(f"bad {key!r}")


def _check_root(root: Any, label: str) -> None:
    """The catalog root must be an absolute folder other than the file system's root (links followed)."""
    if not isinstance(root, str) or "\0" in root or not os.path.isabs(root):
        raise IndexLoadError(f"index {label!r} is refused: its catalog root {str(root)[:120]!r} is not an absolute "
                             f"folder; {_rebuild_hint(label)}")
    for path in (Path(os.path.normpath(root)), Path(os.path.realpath(root))):
        if path == path.parent:
            raise IndexLoadError(f"index {label!r} is refused: its catalog root is {root[:120]!r}, the file "
                                 f"system's root; an index may only name pictures in its catalog's folder; "
                                 f"{_rebuild_hint(label)}")


def _inside(path: str, root: str) -> bool:
    """True when real path `path` is `root` or lies under it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _verify_hash(path: Path, expected: str | None, label: str) -> None:
    if not expected:
        return
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise IndexLoadError(f"index {label!r} is corrupt: {path.name} is missing; {_rebuild_hint(label)}") from None
    if digest.hexdigest() != expected:
        raise IndexLoadError(
            f"index {label!r} is corrupt: {path.name} does not match its checksum (truncated or changed); "
            f"{_rebuild_hint(label)}"
        )


def _describe_spec(spec: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.items())


def _rebuild_hint(name: str, spec: Mapping[str, Any] | None = None) -> str:
    model = f" --model {spec['model']}" if spec else ""
    return f"rebuild it with `python -m recommender index SOURCE --name {name}{model}`"
