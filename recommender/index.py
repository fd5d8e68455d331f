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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from .store import Filters, LocalStore, MilvusStore, Store, StoreConfig, drop_stale, open_store
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
        self.store = LocalStore(store, lambda: self.items) if isinstance(store, np.ndarray) else store
        self._positions: dict[str, int] | None = None
        self._backbones: dict[str | None, Backbone] = {}  # by device, loaded on first use
        self._backbone_lock = threading.Lock()

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
        manifest = _read_json(manifest_path, label)
        _check_manifest(manifest, label)
        files = manifest["files"]
        items_path = folder / files["items"]
        count, dim = manifest["count"], manifest["dim"]

        def read_items() -> list[Item]:
            _verify_hash(items_path, files.get("items_sha256"), label)
            return _decode_items(_read_json(items_path, label), count, label)

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
        return cls(folder, manifest, embeddings, items)

    # ----------------------------------------------------------------------------- facts

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.folder.name)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def root(self) -> Path:
        """The folder the items' paths are relative to."""
        return Path(self.manifest["catalog"]["root"])

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
        # normpath, not resolve(): the root is absolute already, and this runs for every match shown.
        return Path(os.path.normpath(os.path.join(self.root, item.path)))

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
        return np.asarray(self.store.vectors([self.position(item_id)])[0], dtype=np.float32)

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
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        previous = _previous_location(folder)
        tag = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        emb_name, items_name = f"embeddings-{tag}.safetensors", f"items-{tag}.json"
        # Rounded to the stored precision first, so that every store scores exactly the same vectors.
        data = np.ascontiguousarray(embeddings, dtype=np.float16 if dtype == "float16" else np.float32)
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
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((folder / MANIFEST).read_bytes())
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
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (head_len,) = struct.unpack("<Q", fh.read(8))
            if head_len > min(size - 8, 1 << 24):
                raise IndexLoadError(f"{bad} is truncated or not a safetensors file; {_rebuild_hint(label)}")
            header = json.loads(fh.read(head_len))
    except FileNotFoundError:
        raise IndexLoadError(f"{bad} is missing; {_rebuild_hint(label)}") from None
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        raise IndexLoadError(f"{bad} is truncated or not a safetensors file; {_rebuild_hint(label)}") from None
    entry = header.get(key) if isinstance(header, dict) else None
    if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES:
        raise IndexLoadError(f"{bad} holds no {key!r} tensor of float16/float32; {_rebuild_hint(label)}")
    dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
    start, end = (int(x) for x in entry.get("data_offsets", (0, 0)))
    if list(entry.get("shape", ())) != list(shape):
        raise IndexLoadError(f"{bad} holds shape {entry.get('shape')} but the manifest says {list(shape)}; "
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


def _decode_items(data: Any, count: int, label: str) -> list[Item]:
    try:
        ids, paths, labels, hashes = data["id"], data["path"], data["label"], data["sha256"]
        meta = data.get("metadata") or {}
        if not all(len(col) == count for col in (ids, paths, labels, hashes, *meta.values())):
            raise ValueError("column lengths differ from the manifest's count")
        columns = list(meta)
        return [
            Item(id=str(ids[i]), path=str(paths[i]), label=labels[i], sha256=hashes[i],
                 metadata={c: meta[c][i] for c in columns if meta[c][i] is not None})
            for i in range(count)
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexLoadError(f"index {label!r} has a malformed items file ({exc}); {_rebuild_hint(label)}") from None


def _read_json(path: Path, label: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise IndexLoadError(f"index {label!r} is corrupt: {path.name} is missing; {_rebuild_hint(label)}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise IndexLoadError(
            f"index {label!r} is corrupt: {path.name} is not valid JSON ({str(exc)[:80]}); {_rebuild_hint(label)}"
        ) from None


def _check_manifest(manifest: Any, label: str) -> None:
    if not isinstance(manifest, dict):
        raise IndexLoadError(f"index {label!r} has a malformed manifest; {_rebuild_hint(label)}")
    version = manifest.get("format_version")
    if version not in (_LOCAL_VERSION, FORMAT_VERSION):
        newer = isinstance(version, int) and version > FORMAT_VERSION
        why = "a newer version of recommender; upgrade it" if newer else "an older version of recommender"
        raise IndexMismatchError(
            f"index {label!r} has format version {version} (built by {why}), this library reads versions "
            f"{_LOCAL_VERSION}-{FORMAT_VERSION} (library {__version__}); {_rebuild_hint(label)}"
        )
    required = {"backbone": dict, "weights": str, "dim": int, "count": int, "catalog": dict, "files": dict}
    for key, kind in required.items():
        if not isinstance(manifest.get(key), kind):
            raise IndexLoadError(f"index {label!r} has a malformed manifest (bad {key!r}); {_rebuild_hint(label)}")
    spec = manifest["backbone"]
    if not isinstance(spec.get("model"), str) or not set(spec) <= _SPEC_KEYS:
        # The spec becomes load_backbone's keyword arguments: only the ones it takes, as data.
        raise IndexLoadError(f"index {label!r} has a malformed manifest (bad backbone {_describe_spec(spec)[:120]!r});"
                             f" {_rebuild_hint(label)}")
    store = manifest.get("store")
    if store is not None and not (isinstance(store, dict) and isinstance(store.get("kind"), str)):
        raise IndexLoadError(f"index {label!r} has a malformed manifest (bad 'store'); {_rebuild_hint(label)}")
    local = store is None or store["kind"] == "local"
    for key in ("embeddings", "items") if local else ("items",):
        name = manifest["files"].get(key)
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise IndexLoadError(f"index {label!r} has a malformed manifest (bad file {name!r}); "
                                 f"{_rebuild_hint(label)}")


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
