"""Building and updating an index from a catalog: read it, embed what changed, calibrate, write atomically.

`BuildConfig` says how (where to write, in which precision, on which executor, with what bounds);
`build_index` runs `pipeline.embed_items` with the vectors of the previous version of the index
(pictures whose bytes did not change are not embedded again) and of an interrupted build
(`checkpoint`), and reports everything it skipped.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..backbones import Backbone, load_backbone
from ..calibration import calibrate
from ..catalog import Catalog, Item, Skip, quoted, read_catalog
from ..errors import CatalogError, RecommenderError
from ..index import BuildStats, CatalogInfo, Index, StoreConfig, index_folder, write_index
from .checkpoint import CHECKPOINT_SECONDS, Checkpoint
from .pipeline import Executor, LocalExecutor, ShouldStop, embed_items


@dataclass(frozen=True)
class BuildConfig:
    """How to build an index: everything but the source, its name and the backbone.

    Reading (when the source is a path): `limit` keeps the first N items; `image_column` and
    `label_column` name a CSV's columns. Writing: `index_dir`, `dtype` of the stored vectors,
    `store` (see `index.StoreConfig`; default `RECOMMENDER_STORE`, else local files), `domain`
    (what the items are, e.g. "Pokémon", for answers and web searches) and `fingerprint` (the
    source's identity, so that callers can tell when it changed). Running: the `executor`
    (`LocalExecutor` by default, `RayExecutor` for a cluster), `batch_size`, a `progress` bar,
    checkpoints every `checkpoint_seconds`, and `should_stop`, asked before each picture: its
    answer (why) stops the build with `BuildStopped`, nothing written (bounds for builds that
    strangers start). `dedupe` collapses pictures repeated under one label (each one skipped and
    reported); the same picture under two labels is always indexed twice, once per label.
    """

    limit: int | None = None
    image_column: str | None = None
    label_column: str | None = None
    index_dir: str | Path | None = None
    dtype: str = "float16"
    store: StoreConfig | str | None = None
    domain: str | None = None
    fingerprint: str | None = None
    executor: Executor | None = None
    batch_size: int | None = None
    progress: bool = True
    checkpoint_seconds: float = CHECKPOINT_SECONDS
    should_stop: ShouldStop | None = None
    dedupe: bool = True

    def replace(self, **changes: Any) -> BuildConfig:
        """This configuration with some fields changed; a name that is no field is a clear error."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"build_index() got unknown options {', '.join(unknown)}; the options are BuildConfig's "
                f"fields: {', '.join(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **changes)


@dataclass
class BuildReport:
    """What a build did: counts, timings and every item skipped with its reason (also in the index's folder)."""

    name: str
    folder: Path
    count: int
    embedded: int
    reused: int
    skipped: list[Skip] = field(default_factory=list)
    removed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    resumed: int = 0  # of `reused`: vectors an interrupted build had embedded
    store: str = "local"
    forward: str = ""  # which forward pass computed the vectors (`Backbone.forward`)
    copies: int = 0  # items whose picture is an earlier item's (another label's): embedded once
    labels: frozenset[str] = frozenset()  # the labels the index holds
    skipped_file: Path | None = None  # where every skip is listed, beside the index

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    @property
    def skipped_labels(self) -> list[str]:
        """The labels of which a picture was skipped, sorted."""
        return sorted({s.label for s in self.skipped if s.label is not None})

    @property
    def lost_labels(self) -> list[str]:
        """The labels skipped whole: every picture of theirs was left out, so the index cannot name them."""
        return [label for label in self.skipped_labels if label not in self.labels]

    def skipped_summary(self, *, names: int = 5) -> str:
        """How many pictures were skipped and how many labels that touches, e.g. `3 skipped (2 labels affected,
        1 of them left with no picture: “x”)`; the first `names` lost labels are named."""
        text = f"{len(self.skipped)} skipped"
        affected = self.skipped_labels
        if not affected:
            return text
        lost = self.lost_labels
        text += f" ({len(affected)} label{'s' if len(affected) != 1 else ''} affected"
        if lost:
            shown = ", ".join(quoted(label) for label in lost[:names]) + (", …" if len(lost) > names else "")
            text += f", {len(lost)} of them left with no picture: {shown}"
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data (`recommender index --json`): counts, timings, every skip and note."""
        return {
            "name": self.name,
            "folder": str(self.folder),
            "store": self.store,
            "count": self.count,
            "embedded": self.embedded,
            "reused": self.reused,
            "resumed": self.resumed,
            "removed": self.removed,
            "skipped": len(self.skipped),
            "skips": [{"where": s.where, "reason": s.reason, "label": s.label} for s in self.skipped],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "forward": self.forward,
            "notes": list(self.notes),
        }


def build_index(
    source: str | os.PathLike | Catalog,
    *,
    name: str,
    backbone: Backbone | None = None,
    model: str | None = None,
    reuse: Mapping[str, np.ndarray] | None = None,
    config: BuildConfig | None = None,
    **options: Any,
) -> BuildReport:
    """Index a catalog (folder or CSV) under `name`, re-using embeddings of unchanged pictures.

    `backbone` (or the name of one, `model`; default `RECOMMENDER_MODEL`) embeds the pictures;
    `config` says how to build, and `options` change single fields of it (`progress=False`).
    `reuse` maps content hashes to vectors already computed with exactly this backbone
    elsewhere (a hybrid assembled from its parts' indexes): they are taken as they are.

    Pictures that cannot be read are skipped and reported, never fatal; a catalog with nothing
    usable raises `CatalogError`. The index is written atomically: a crash leaves the previous
    one. An interrupted build is resumed by the next one (see `checkpoint`).
    """
    config = (config or BuildConfig()).replace(**options)
    folder = index_folder(name, config.index_dir)
    store = StoreConfig.parse(config.store if config.store is not None else settings.store())  # a bad one fails first
    catalog = source if isinstance(source, Catalog) else _read(source, config)
    backbone = backbone or load_backbone(model)
    executor = config.executor or LocalExecutor()
    notes: list[str] = []
    own = _previous_vectors(folder, backbone, config.dtype, notes)
    previous = {**(reuse or {}), **own}
    checkpoint = Checkpoint(folder, backbone, config.dtype, seconds=config.checkpoint_seconds)
    resumable = {h: v for h, v in checkpoint.load().items() if h not in previous}
    if resumable:
        notes.append(f"resuming an interrupted build: {len(resumable)} pictures it embedded are re-used")
    started = time.perf_counter()  # images/s counts reading and embedding, not loading the model
    try:
        embedded = embed_items(
            catalog.items,
            catalog.root,
            backbone,
            previous=previous | resumable,
            dedupe=config.dedupe,
            executor=executor,
            batch_size=config.batch_size,
            progress=config.progress,
            desc=f"indexing {name}",
            on_embedded=checkpoint.add,
            should_stop=config.should_stop,
        )
    finally:
        checkpoint.flush()  # interrupted or not: what was embedded survives until the index is committed
    items, skipped = embedded.items, catalog.skipped + embedded.skipped
    if not items:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise CatalogError(f"{catalog.source}: none of its {len(catalog.items)} pictures could be read{first}")
    removed = len(set(own) - {item.sha256 for item in items}) if own else 0
    seconds = time.perf_counter() - started
    resumed = sum(item.sha256 in resumable for item in items)
    counts = {"embedded": embedded.embedded, "reused": embedded.reused, "resumed": resumed, "removed": removed}
    stats = BuildStats(
        **counts,
        skipped=len(skipped),
        seconds=seconds,
        precision=backbone.precision,
        ray=executor.name == "ray",
        forward=backbone.forward,
    )
    # Calibrated on the stored precision, so that the threshold matches the scores searches will see.
    stored = embedded.vectors.astype(np.float16 if config.dtype == "float16" else np.float32)
    calibration = calibrate(stored, [item.label for item in items], prior=backbone.threshold_prior)
    manifest = write_index(
        folder,
        embeddings=embedded.vectors,
        items=items,
        backbone=backbone,
        catalog=_catalog_info(catalog, items, config),
        dtype=config.dtype,
        stats=stats,
        calibration=calibration,
        store=store,
        skipped=skipped,
    )
    checkpoint.clear()  # committed: a crash before this line only leaves shards that the next build re-uses
    return BuildReport(
        name=name,
        folder=folder,
        count=len(items),
        embedded=embedded.embedded,
        reused=embedded.reused,
        skipped=skipped,
        removed=removed,
        seconds=seconds,
        notes=notes,
        resumed=resumed,
        store=str(store),
        forward=backbone.forward,
        copies=embedded.copies,
        labels=frozenset(item.label for item in items if item.label is not None),
        skipped_file=folder / str(manifest.files.skipped),
    )


def _read(source: str | os.PathLike, config: BuildConfig) -> Catalog:
    return read_catalog(source, limit=config.limit, image_column=config.image_column, label_column=config.label_column)


def _catalog_info(catalog: Catalog, items: list[Item], config: BuildConfig) -> CatalogInfo:
    """What the manifest records of the catalog an index was built from (of the items kept)."""
    return CatalogInfo(
        source=catalog.location or str(Path(catalog.source).resolve()),
        root=str(catalog.root),
        kind=catalog.kind,
        labeled=any(item.label is not None for item in items),
        labels=len({item.label for item in items if item.label is not None}),
        columns=catalog.columns,
        limit=config.limit,
        domain=config.domain,
        fingerprint=config.fingerprint or catalog.fingerprint(),
    )


def _previous_vectors(folder: Path, backbone: Backbone, dtype: str, notes: list[str]) -> dict[str, np.ndarray]:
    """Embeddings of the existing index by content hash, when it was built the same way; else empty."""
    if not (folder / "manifest.json").exists():
        return {}
    try:
        old = Index.load(folder)
        old.check_backbone(backbone)
    except RecommenderError as exc:  # damaged, other backbone, or in a store that cannot be reached now
        notes.append(f"existing index not re-used, everything is embedded again: {exc}")
        return {}
    if old.manifest.dtype != dtype:
        notes.append(f"existing index is {old.manifest.dtype}, not {dtype}: everything is embedded again")
        return {}
    return {
        item.sha256: np.asarray(old.embeddings[i], dtype=np.float32) for i, item in enumerate(old.items) if item.sha256
    }
