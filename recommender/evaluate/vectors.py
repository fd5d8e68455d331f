"""Pictures with their unit vectors (an index's, or embedded now): the two sides of every protocol."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..backbones import Backbone, normalise
from ..build import embed_items
from ..catalog import Catalog, Item, Skip
from ..errors import CatalogError
from ..index import Index
from ..ranking import LabelGroups


@dataclass
class Vectors:
    """Pictures with their unit vectors: an index's, or embedded now. Both sides of every protocol are these."""

    name: str
    items: list[Item]
    vectors: np.ndarray  # (N, D), float16 when memory-mapped from an index
    root: Path
    skipped: list[Skip] = field(default_factory=list)
    seconds: float = 0.0  # spent reading and embedding now (0 when the vectors came from an index)
    index: Index | None = None

    @classmethod
    def of_index(cls, index: Index, name: str | None = None) -> Vectors:
        """An index's pictures; `skipped` holds what its build left out, with why."""
        return cls(
            name=name or index.name,
            items=index.items,
            vectors=index.embeddings,
            root=index.root,
            skipped=list(index.skipped),
            index=index,
        )

    def path(self, row: int) -> Path:
        return (self.root / self.items[row].path).resolve()

    @property
    def labeled(self) -> bool:
        return any(item.label is not None for item in self.items)

    @cached_property
    def labels(self) -> LabelGroups:
        """The pictures grouped by label (the index's own groups when they come from one)."""
        return self.index.labels if self.index is not None else LabelGroups.of([i.label for i in self.items])

    def block(self, rows: np.ndarray) -> np.ndarray:
        """(b, D) float32 vectors of these rows."""
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, N) cosine scores of (Q, D) query vectors against every picture."""
        if self.index is not None:
            return self.index.scores(queries)
        return normalise(queries) @ np.asarray(self.vectors, dtype=np.float32).T


def embed_catalog(catalog: Catalog, backbone: Backbone, *, name: str | None = None, progress: bool = True) -> Vectors:
    """Read and embed every picture of a catalog now (nothing cached); unreadable ones are skipped."""
    started = time.perf_counter()
    embedded = embed_items(
        catalog.items, catalog.root, backbone, progress=progress, desc=f"embedding {name or catalog.source}"
    )
    if not embedded.items:
        first = f" ({embedded.skipped[0]})" if embedded.skipped else ""
        raise CatalogError(f"{catalog.source}: none of its pictures could be read{first}")
    return Vectors(
        name=name or source_name(catalog.source),
        items=embedded.items,
        vectors=embedded.vectors,
        root=catalog.root,
        skipped=catalog.skipped + embedded.skipped,
        seconds=time.perf_counter() - started,
    )


def source_name(source: str | Path) -> str:
    """How a set of pictures is called in reports: its folder's or file's name."""
    return Path(source).name or str(source)
