"""A built index opened for searching: its manifest, items and vector store, checked on load.

An index folder may come from elsewhere (downloaded, hand-made), so loading trusts none of it:
the manifest is parsed and checked (`manifest`), the data files are bounded and checksummed
(`format`), item paths must be plain relative paths under the catalog root, a picture reached
through a link outside that root is refused when its path is handed out, and vectors must be
finite numbers (checked on load when the file is checksummed, else when searched).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..backbones import Backbone, load_backbone, normalise
from ..backbones.adapted import Adapted, AdapterHead
from ..calibration import Calibration, calibrate
from ..catalog import Item, Skip
from ..errors import IndexLoadError, IndexMismatchError, IndexNotFoundError, ModelError, RecommenderError
from ..ranking import LabelGroups
from ..runtime import Runtime
from .format import ITEMS_MAX_BYTES, decode_items, decode_skips, open_safetensors, read_json, verify_hash
from .manifest import MANIFEST, MANIFEST_MAX_BYTES, Manifest, rebuild_hint
from .store import Filters, LocalStore, Store, check_finite
from .store.milvus import open_store

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
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

    def __init__(
        self, folder: Path, manifest: Manifest, store: Store | np.ndarray, items: list[Item] | Callable[[], list[Item]]
    ) -> None:
        self.folder = folder
        self.manifest = manifest
        # Items, or a function that reads them: a big index's items are only parsed when first needed.
        self._items: list[Item] | None = items if isinstance(items, list) else None
        self._read_items = None if isinstance(items, list) else items
        self._items_lock = threading.Lock()
        # An array is the local store's memory-mapped (N, D) unit rows.
        self.store = (
            LocalStore(store, lambda: self.items, label=folder.name) if isinstance(store, np.ndarray) else store
        )
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
    def load(
        cls,
        name: str | Path,
        *,
        index_dir: str | Path | None = None,
        verify: bool | None = None,
        runtime: Runtime | None = None,
    ) -> Index:
        """Open the index called `name` (or the folder, when given a `Path`), checking format, shapes and checksums.

        Raises `IndexNotFoundError`, `IndexLoadError` (corrupt or truncated) or
        `IndexMismatchError` (another format version), each saying how to rebuild. A Milvus
        store's client is kept in `runtime` (default: the process's).
        """
        folder = name if isinstance(name, Path) else index_folder(name, index_dir)  # a Path is a folder
        label = folder.name
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            if folder.is_dir():
                raise IndexLoadError(f"index {label!r} is incomplete (no {MANIFEST}); {rebuild_hint(label)}")
            known = list_indexes(folder.parent)
            listing = f"; available: {', '.join(known)}" if known else ""
            raise IndexNotFoundError(
                f"no index named {label!r} in {folder.parent}{listing}; build one with "
                f"`python -m recommender index SOURCE --name {label}`"
            )
        manifest = Manifest.from_json(read_json(manifest_path, label, limit=MANIFEST_MAX_BYTES), label)
        files = manifest.files
        items_path = folder / files.items
        count, dim = manifest.count, manifest.dim

        def read_items() -> list[Item]:
            verify_hash(items_path, files.items_sha256, label)
            return decode_items(read_json(items_path, label, limit=ITEMS_MAX_BYTES), count, label)

        # Small item files are read and checked now; large ones (beyond ~100k items; a million items
        # take seconds to parse) when first needed, so that opening an index stays well under a second.
        lazy = items_path.exists() and items_path.stat().st_size > _LAZY_ITEMS
        items: list[Item] | Callable[[], list[Item]] = read_items if lazy else read_items()
        if not manifest.store.local:
            store = open_store(manifest.store, folder=folder, count=count, dim=dim, label=label, runtime=runtime)
            return cls(folder, manifest, store, items)
        emb_path = folder / str(files.embeddings)
        check = verify if verify is not None else emb_path.exists() and emb_path.stat().st_size <= _VERIFY_LIMIT
        if check:
            verify_hash(emb_path, files.embeddings_sha256, label)
        embeddings = open_safetensors(emb_path, "embeddings", (count, dim), label)
        if check:  # read whole for the checksum already: finding a NaN costs little more
            check_finite(embeddings, label)
        return cls(folder, manifest, embeddings, items)

    @cached_property
    def adapter(self) -> AdapterHead | None:
        """The catalog adaptation's head every query passes through (`recommender.adapt`), or None.

        Read on first use and always checked against the manifest's sha256 (it is small).
        """
        info = self.manifest.adapter
        if info is None:
            return None
        path = self.folder / info.file
        verify_hash(path, info.sha256, self.name)
        try:
            return AdapterHead.from_bytes(path.read_bytes(), dim=self.dim, label=f"index {self.name!r}")
        except ModelError as exc:
            raise IndexLoadError(f"{exc}; {rebuild_hint(self.name)}") from None

    # ----------------------------------------------------------------------------- facts

    @property
    def name(self) -> str:
        # The folder's name, never the manifest's: an index cannot pass itself off as another one.
        return self.folder.name

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def __len__(self) -> int:
        return len(self.items)

    @property
    def root(self) -> Path:
        """The folder the items' paths are relative to (absolute, not the file system's root: checked on load)."""
        return Path(self.manifest.catalog.root)

    @cached_property
    def _real_root(self) -> str:
        return os.path.realpath(self.manifest.catalog.root)

    @property
    def labeled(self) -> bool:
        return self.manifest.catalog.labeled

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
    def calibration(self) -> Calibration:
        """How this index decides that a picture is in the catalog (see `calibration.calibrate`).

        Indexes written before calibration existed get it derived once, in memory (the manifest is
        left as it was read).
        """
        return self.manifest.calibration or calibrate(self.embeddings, [i.label for i in self.items])

    @property
    def domain(self) -> str | None:
        """What the catalog's items are, for messages and web searches (e.g. "Pokémon"), if known."""
        return self.manifest.catalog.domain

    @cached_property
    def skipped(self) -> list[Skip]:
        """Every picture the build of this version left out, with why (read when first asked; none recorded
        by indexes written before the list was kept)."""
        name = self.manifest.files.skipped
        if name is None:
            return []
        return decode_skips(read_json(self.folder / name, self.name, limit=ITEMS_MAX_BYTES), self.name)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    @property
    def version(self) -> str:
        """This build of the index: the stamp of its data files, new at every write (caches key on it).

        Taken from the items file, which every store writes (a Milvus index has no embeddings file).
        """
        return self.manifest.version

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
        path = os.path.join(self.manifest.catalog.root, item.path)
        folder = os.path.dirname(path)
        if folder not in self._checked_dirs:
            if not _inside(os.path.realpath(folder), self._real_root):
                raise self._outside(item)
            self._checked_dirs.add(folder)
        if os.path.islink(path) and not _inside(os.path.realpath(path), self._real_root):
            raise self._outside(item)
        return Path(os.path.normpath(path))

    def _outside(self, item: Item) -> IndexLoadError:
        return IndexLoadError(
            f"index {self.name!r}: the picture of item {item.id[:80]!r} is a link to a file outside "
            f"its catalog folder, which is refused; remove the link or {rebuild_hint(self.name)}"
        )

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
        spec, pins = self.manifest.backbone, self.manifest.revisions
        try:
            if runtime is not None:
                backbone = runtime.backbone(spec, device=device, revision=pins)
            else:
                with self._backbone_lock:
                    if device not in self._backbones:
                        self._backbones[device] = load_backbone(**spec.as_kwargs(), device=device, revision=pins)
                    backbone = self._backbones[device]
        except ModelError as exc:
            if not pins:
                raise
            # The weights the index was built with, at their commit: fetched when missing, or said why not.
            at = ", ".join(f"{repo} at revision {rev}" for repo, rev in pins.items())
            raise ModelError(f"index {self.name!r} was built with {at}: {exc}") from None
        head = self.adapter
        if head is not None:  # queries pass through the head the catalog's vectors went through
            backbone = Adapted(backbone, head, digest=self.manifest.adapter.sha256)  # type: ignore[union-attr]
        self.check_backbone(backbone)
        return backbone

    def built_with(self, backbone: Backbone) -> bool:
        """Whether `backbone` embeds as the one that built this index (same spec, same weights)."""
        return self.manifest.backbone == backbone.spec and self.manifest.weights == backbone.identity

    def same_vectors_as(self, other: Index) -> bool:
        """Whether two indexes were built the same way, so that their vectors can be compared."""
        return self.manifest.backbone == other.manifest.backbone and self.manifest.weights == other.manifest.weights

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise `IndexMismatchError` unless `backbone` embeds exactly as the one that built this index."""
        mine = self.manifest.backbone
        if backbone.spec != mine:
            raise IndexMismatchError(
                f"index {self.name!r} was built with {mine.describe()}, not {backbone.spec.describe()}; "
                f"search it with the same backbone or {rebuild_hint(self.name, backbone.spec)}"
            )
        pinned, now = self.manifest.revisions or {}, backbone.revisions or {}
        moved = {repo: rev for repo, rev in pinned.items() if now.get(repo, rev) != rev}
        if backbone.identity != self.manifest.weights and moved:
            repo, rev = next(iter(moved.items()))
            raise IndexMismatchError(
                f"index {self.name!r} was built with {repo} at revision {rev}, not {now[repo]}; load that "
                f"revision (`--revision {rev}`, or let the index load its own backbone) or "
                f"{rebuild_hint(self.name, backbone.spec)}"
            )
        if backbone.identity != self.manifest.weights:
            raise IndexMismatchError(
                f"index {self.name!r} was built with other weights for {backbone.name} "
                f"({self.manifest.weights}, now {backbone.identity}); {rebuild_hint(self.name, backbone.spec)}"
            )
        if backbone.dim != self.dim:
            raise IndexMismatchError(
                f"index {self.name!r} holds {self.dim}-d vectors but {backbone.name} gives "
                f"{backbone.dim}-d; {rebuild_hint(self.name, backbone.spec)}"
            )

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
            raise RecommenderError(
                f"a query vector is not a number (NaN or infinite), so index {self.name!r} "
                "cannot be searched with it; the backbone gave no usable vector"
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
            [
                Match(rank=r, score=float(s), item=self.items[i], path=self.path_of(self.items[i]))
                for r, (i, s) in enumerate(zip(rows.tolist(), scores), start=1)
            ]
            for rows, scores in found
        ]

    def ann_recall(self, queries: np.ndarray, k: int = 10) -> float:
        """Recall@k of this index's search against exact search (1.0 for the exact local store)."""
        return self.store.recall(self._queries(queries), k)

    def __repr__(self) -> str:
        return (
            f"<Index {self.name} {len(self)} items, {self.dim}-d, {self.manifest.backbone.model}, "
            f"{self.store.kind} store>"
        )


def _inside(path: str, root: str) -> bool:
    """True when real path `path` is `root` or lies under it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
