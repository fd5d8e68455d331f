"""The manifest, typed: what an index holds and how it was made, parsed and checked in one place.

`Manifest.from_json` is the only reader of `manifest.json` and `Manifest.to_json` its only writer;
the JSON is the one earlier versions wrote (old indexes load as they are). An index folder may
come from elsewhere, so nothing in it is trusted: every field is type-checked, the nesting is
bounded, and the catalog root must be an absolute folder other than the file system's root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backbones import BackboneSpec, HubRevision
from ..calibration import Calibration
from ..errors import IndexLoadError, IndexMismatchError, RecommenderError
from ..version import __version__
from .store import StoreLocation

#: The newest manifest format this library reads and writes. Version 1 has no `store` (the vectors
#: are local); version 2 adds it. Local indexes are still written as version 1, which every reader
#: of this format understands; indexes in Milvus as version 2, which older readers refuse plainly.
FORMAT_VERSION = 2
LOCAL_VERSION = 1
MANIFEST = "manifest.json"
#: The most bytes a manifest may hold, and how deep it may nest.
MANIFEST_MAX_BYTES = 16 << 20
_MAX_DEPTH = 16
_MAX_DIM = 1 << 16
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def rebuild_hint(name: str, spec: BackboneSpec | None = None) -> str:
    """The way out of a bad index, for the end of every error about one."""
    model = f" --model {spec.model}" if spec else ""
    return f"rebuild it with `python -m recommender index SOURCE --name {name}{model}`"


@dataclass(frozen=True)
class CatalogInfo:
    """The catalog an index was built from: where its pictures are, what kind it is, and its identity."""

    root: str  # the absolute folder item paths are relative to
    source: str = ""
    kind: str = ""  # folders, flat or csv
    labeled: bool = False
    labels: int = 0
    columns: Mapping[str, str | None] = field(default_factory=dict)
    limit: int | None = None
    domain: str | None = None  # what the items are ("Pokémon"), for answers and web searches
    fingerprint: str | None = None  # the source's identity when built (see `catalog.Catalog.fingerprint`)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "root": self.root,
            "kind": self.kind,
            "labeled": self.labeled,
            "labels": self.labels,
            "columns": dict(self.columns),
            "limit": self.limit,
            "domain": self.domain,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], label: str) -> CatalogInfo:
        root = data.get("root")
        _check_root(root, label)
        text = {key: data.get(key) for key in ("domain", "fingerprint")}
        columns = data.get("columns") or {}
        limit = data.get("limit")
        if not (
            all(v is None or isinstance(v, str) for v in text.values())
            and isinstance(columns, dict)
            and all(isinstance(v, (str, type(None))) for v in columns.values())
            and (limit is None or _is_int(limit))
            and _is_int(data.get("labels", 0))
        ):
            raise ValueError("bad 'catalog'")
        return cls(
            root=str(root),
            source=str(data.get("source", "")),
            kind=str(data.get("kind", "")),
            labeled=bool(data.get("labeled")),
            labels=int(data.get("labels", 0)),
            columns=dict(columns),
            limit=limit,
            **text,
        )


@dataclass(frozen=True)
class DataFiles:
    """The index's data files beside the manifest, with their sha256 (the embeddings only in the local store).

    `skipped` names the list of the pictures the build left out, with why (indexes written before
    it was kept have none).
    """

    items: str
    items_sha256: str | None = None
    embeddings: str | None = None
    embeddings_sha256: str | None = None
    skipped: str | None = None

    @property
    def stamp(self) -> str:
        """The build's stamp in the file names: new at every write of the index."""
        return self.items.removeprefix("items-").removesuffix(".json")

    def to_json(self) -> dict[str, Any]:
        local = {"embeddings": self.embeddings, "embeddings_sha256": self.embeddings_sha256} if self.embeddings else {}
        skipped = {"skipped": self.skipped} if self.skipped else {}
        return {**local, "items": self.items, "items_sha256": self.items_sha256, **skipped}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, local: bool) -> DataFiles:
        keys = ("embeddings", "items") if local else ("items",)
        for key in (*keys, "skipped") if data.get("skipped") is not None else keys:
            name = data.get(key)
            if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"bad file {str(name)[:80]!r}")
        for key in ("embeddings_sha256", "items_sha256"):
            digest = data.get(key)
            if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
                raise ValueError(f"bad {key!r}")
        return cls(
            items=data["items"],
            items_sha256=data.get("items_sha256"),
            embeddings=data.get("embeddings") if local else None,
            embeddings_sha256=data.get("embeddings_sha256") if local else None,
            skipped=data.get("skipped"),
        )


@dataclass(frozen=True)
class BuildStats:
    """What the build that wrote this index did (for `info`, and for timing in `evaluate`)."""

    embedded: int = 0
    reused: int = 0
    resumed: int = 0
    skipped: int = 0
    removed: int = 0
    seconds: float = 0.0
    precision: str = "fp32"
    ray: bool = False
    forward: str | None = None  # which forward pass computed the vectors (e.g. lean-bf16)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "embedded": self.embedded,
            "reused": self.reused,
            "resumed": self.resumed,
            "skipped": self.skipped,
            "removed": self.removed,
            "seconds": round(self.seconds, 3),
            "precision": self.precision,
            "ray": self.ray,
        }
        if self.forward is not None:
            out["forward"] = self.forward
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildStats:
        counts = {key: data.get(key, 0) for key in ("embedded", "reused", "resumed", "skipped", "removed")}
        seconds = data.get("seconds", 0.0)
        if not all(_is_int(v) for v in counts.values()) or not isinstance(seconds, (int, float)):
            raise ValueError("bad 'stats'")
        forward = data.get("forward")
        return cls(
            **counts,
            seconds=float(seconds),
            precision=str(data.get("precision", "fp32")),
            ray=bool(data.get("ray")),
            forward=forward if isinstance(forward, str) else None,
        )


@dataclass(frozen=True)
class AdapterInfo:
    """A catalog adaptation's head beside the index (`recommender.adapt`): its file, hash, and how it was learnt."""

    file: str
    sha256: str
    rank: int
    trained: Mapping[str, str | int | float] = field(default_factory=dict)  # base index, epochs, views, seconds

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "rank": self.rank, "trained": dict(self.trained)}

    @classmethod
    def from_json(cls, data: Any) -> AdapterInfo:
        if not isinstance(data, dict):
            raise ValueError("bad 'adapter'")
        name, digest, rank, trained = data.get("file"), data.get("sha256"), data.get("rank"), data.get("trained") or {}
        if not isinstance(name, str) or not name.startswith("adapter-") or "/" in name or "\\" in name:
            raise ValueError("bad adapter file")
        if not (isinstance(digest, str) and _SHA256.match(digest)) or not (_is_int(rank) and 0 < rank <= _MAX_DIM):
            raise ValueError("bad adapter hash or rank")
        if not isinstance(trained, dict) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in trained.values()
        ):
            raise ValueError("bad adapter notes")
        return cls(file=name, sha256=digest, rank=rank, trained={str(k): v for k, v in trained.items()})


@dataclass(frozen=True)
class Manifest:
    """An index's manifest (see the module docstring); `from_json` checks everything, `to_json` writes it."""

    backbone: BackboneSpec
    weights: str  # the identity (a hash) of the backbone's weights
    dim: int
    count: int
    catalog: CatalogInfo
    files: DataFiles
    store: StoreLocation = field(default_factory=StoreLocation)
    dtype: str = "float16"
    backbone_name: str = ""
    name: str = ""
    created: str = ""
    library_version: str = __version__
    stats: BuildStats = field(default_factory=BuildStats)
    calibration: Calibration | None = None
    #: The hub repository and commit of each part's weights (none for local folders and shipped weights).
    hub: tuple[HubRevision, ...] = ()

    @property
    def revisions(self) -> dict[str, str] | None:
        """`{repo: commit}` of the weights, as `load_backbone(revision=...)` takes it; None when nothing is pinned."""
        return {pin.repo: pin.revision for pin in self.hub} or None

    adapter: AdapterInfo | None = None  # a catalog adaptation's head (absent from plain and older indexes)

    @property
    def format_version(self) -> int:
        return LOCAL_VERSION if self.store.local else FORMAT_VERSION

    @property
    def version(self) -> str:
        """This build of the index (caches derived from it key on it; every store has an items file)."""
        return self.files.stamp

    def replace(self, **changes: Any) -> Manifest:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "library_version": self.library_version,
            "name": self.name,
            "created": self.created,
            "backbone": self.backbone.to_json(),
            "backbone_name": self.backbone_name,
            "weights": self.weights,
            **({"hub": [pin.to_json() for pin in self.hub]} if self.hub else {}),
            "dim": self.dim,
            "count": self.count,
            "dtype": self.dtype,
            "catalog": self.catalog.to_json(),
            "store": self.store.to_json(),
            "files": self.files.to_json(),
            "stats": self.stats.to_json(),
            "calibration": self.calibration.to_json() if self.calibration else {},
            **({"adapter": self.adapter.to_json()} if self.adapter else {}),
        }

    @classmethod
    def from_json(cls, data: Any, label: str) -> Manifest:
        """Parse and check a manifest read from disk: `IndexLoadError` (or `IndexMismatchError` for another
        format version) saying what is wrong and how to rebuild."""
        _check_version(data, label)
        try:
            return _parse(data, label)
        except ValueError as exc:
            raise IndexLoadError(f"index {label!r} has a malformed manifest ({exc}); {rebuild_hint(label)}") from None


def _check_version(data: Any, label: str) -> None:
    if not isinstance(data, dict):
        raise IndexLoadError(f"index {label!r} has a malformed manifest; {rebuild_hint(label)}")
    version = data.get("format_version")
    if version not in (LOCAL_VERSION, FORMAT_VERSION) or isinstance(version, bool):
        newer = isinstance(version, int) and version > FORMAT_VERSION
        why = "a newer version of recommender; upgrade it" if newer else "an older version of recommender"
        raise IndexMismatchError(
            f"index {label!r} has format version {str(version)[:20]} (built by {why}), this library reads versions "
            f"{LOCAL_VERSION}-{FORMAT_VERSION} (library {__version__}); {rebuild_hint(label)}"
        )


def _parse(data: dict[str, Any], label: str) -> Manifest:
    if not _depth(data, _MAX_DEPTH):
        raise ValueError("nested too deeply")
    required = {"backbone": dict, "weights": str, "dim": int, "count": int, "catalog": dict, "files": dict}
    for key, kind in required.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise ValueError(f"bad {key!r}")
    if not (0 < data["dim"] <= _MAX_DIM and 0 <= data["count"] < 1 << 40):
        raise ValueError("bad 'dim' or 'count'")
    for key in ("stats", "calibration"):
        if not isinstance(data.get(key) or {}, dict):
            raise ValueError(f"bad {key!r}")
    try:
        backbone = BackboneSpec.from_json(data["backbone"])
    except ValueError:
        # The spec becomes load_backbone's keyword arguments: only the ones it takes, as data.
        raise ValueError(f"bad backbone {str(data['backbone'])[:120]!r}") from None
    try:
        store = StoreLocation.from_json(data.get("store"))
    except ValueError:
        raise ValueError("bad 'store'") from None
    calibration = Calibration.from_json(data["calibration"]) if data.get("calibration") else None
    pins = data.get("hub", [])  # absent in manifests written before revisions were pinned
    if not isinstance(pins, list) or len(pins) > 64:
        raise ValueError("bad 'hub'")
    try:
        hub = tuple(HubRevision.from_json(pin) for pin in pins)
    except (ValueError, RecommenderError):
        raise ValueError("bad 'hub'") from None
    adapter = AdapterInfo.from_json(data["adapter"]) if data.get("adapter") is not None else None
    return Manifest(
        backbone=backbone,
        weights=data["weights"],
        dim=data["dim"],
        count=data["count"],
        catalog=CatalogInfo.from_json(data["catalog"], label),
        files=DataFiles.from_json(data["files"], local=store.local),
        store=store,
        dtype=data["dtype"] if data.get("dtype") in ("float16", "float32") else "float16",
        backbone_name=str(data.get("backbone_name") or backbone.model),
        name=label,
        created=str(data.get("created", "")),
        library_version=str(data.get("library_version", "")),
        stats=BuildStats.from_json(data.get("stats") or {}),
        calibration=calibration,
        hub=hub,
        adapter=adapter,
    )


def _check_root(root: Any, label: str) -> None:
    """The catalog root must be an absolute folder other than the file system's root (links followed)."""
    if not isinstance(root, str) or "\0" in root or not os.path.isabs(root):
        raise IndexLoadError(
            f"index {label!r} is refused: its catalog root {str(root)[:120]!r} is not an absolute "
            f"folder; {rebuild_hint(label)}"
        )
    for path in (Path(os.path.normpath(root)), Path(os.path.realpath(root))):
        if path == path.parent:
            raise IndexLoadError(
                f"index {label!r} is refused: its catalog root is {root[:120]!r}, the file "
                f"system's root; an index may only name pictures in its catalog's folder; "
                f"{rebuild_hint(label)}"
            )


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
