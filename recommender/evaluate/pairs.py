"""Protocol 3, the look-alike challenge: each left picture's true right one among 19 random foils (top-k of 20)."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones import normalise
from ..catalog import Catalog, Item, Skip
from ..errors import CatalogError, ImageError
from ..images import read_bytes
from .metrics import pair_ranks, rounded
from .sheet import SheetRow
from .vectors import Vectors

#: The look-alike challenge: the true right picture among 19 random foils.
PAIR_FOILS = 19


@dataclass(frozen=True)
class PairResult:
    """One left picture: the rank of its true right among the candidates, and the best foil."""

    left: Path
    right: Path
    rank: int
    score: float
    foil: Path
    foil_score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "left": str(self.left),
            "right": str(self.right),
            "rank": self.rank,
            "score": round(self.score, 4),
            "foil": str(self.foil),
            "foil_score": round(self.foil_score, 4),
        }


@dataclass
class PairsEvaluation:
    """Top-1 and top-2 accuracy of finding each left picture's right one among itself and random foils."""

    source: str
    results: list[PairResult]
    candidates: int
    seed: int
    skipped: list[Skip] = field(default_factory=list)
    ms_per_image: float | None = None
    index_mb: float | None = None

    def top(self, k: int) -> float:
        return float(np.mean([r.rank <= k for r in self.results])) if self.results else 0.0

    def to_dict(self, *, worst: int = 0) -> dict[str, Any]:
        """The accuracies, counts and skips as JSON; `worst` adds the `worst` pairs."""
        return {
            "protocol": "pairs",
            "source": self.source,
            "pairs": len(self.results),
            "candidates": self.candidates,
            "seed": self.seed,
            "top-1": round(self.top(1), 4),
            "top-2": round(self.top(2), 4),
            "chance_top-1": round(1 / self.candidates, 4),
            "chance_top-2": round(min(1.0, 2 / self.candidates), 4),
            "skipped": [str(s) for s in self.skipped],
            "ms_per_image": rounded(self.ms_per_image, 2),
            "index_mb": rounded(self.index_mb, 3),
            **({"worst": [r.to_dict() for r in self.worst(worst)]} if worst else {}),
        }

    def worst(self, n: int = 10) -> list[PairResult]:
        """The pairs whose true right ranked lowest, then by how far the best foil beat it."""
        return sorted(self.results, key=lambda r: (-r.rank, r.score - r.foil_score))[:n]

    def sheet_rows(self, n: int, title: str) -> list[SheetRow]:
        return [
            SheetRow(
                title,
                ((r.left, "left"), (r.foil, f"foil {r.foil_score:.2f}"), (r.right, f"rank {r.rank}, {r.score:.2f}")),
            )
            for r in self.worst(n)
        ]


@dataclass(frozen=True)
class Pairs:
    """A pairs CSV read: the pictures as an unlabeled catalog, and the pairs as content hashes."""

    catalog: Catalog
    pairs: list[tuple[str, str]]  # (left sha256, right sha256)
    paths: dict[str, str]  # sha256 -> a path relative to the catalog root


def read_pairs(source: str | Path, *, left_column: str = "left", right_column: str = "right") -> Pairs:
    """A CSV with one left/right pair of picture paths (relative to the CSV) a row; bad rows are skipped."""

    path = Path(source).expanduser()
    if not path.is_file():
        raise CatalogError(f"{path}: no such CSV file")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if left_column not in header or right_column not in header:
        raise CatalogError(
            f"{path}: a pairs CSV needs the columns {left_column!r} and {right_column!r} (one "
            f"picture pair a row); found: {', '.join(header) or 'nothing'}"
        )
    li, ri = header.index(left_column), header.index(right_column)
    root = path.resolve().parent
    skipped: list[Skip] = []
    hashes: dict[str, str] = {}  # relative path -> sha256
    pairs = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path.name} row {number}"
        if len(row) <= max(li, ri):
            skipped.append(Skip(where, "too few fields"))
            continue
        shas = []
        for cell in (row[li].strip(), row[ri].strip()):
            if cell not in hashes:
                try:
                    hashes[cell] = hashlib.sha256(read_bytes(root / cell, name=cell)).hexdigest()
                except ImageError as exc:
                    hashes[cell] = ""
                    skipped.append(Skip(where, str(exc)))
            shas.append(hashes[cell])
        if all(shas):
            pairs.append((shas[0], shas[1]))
    if len({right for _, right in pairs}) < 2:
        raise CatalogError(f"{path}: fewer than two usable pairs with different right pictures; nothing to rank")
    paths = {sha: rel for rel, sha in reversed(hashes.items()) if sha}  # the first path of each picture
    items = [Item(id=rel, path=rel) for sha, rel in paths.items()]
    return Pairs(Catalog(source=path, root=root, kind="csv", items=items, skipped=skipped), pairs, paths)


def evaluate_pairs(pairs: Pairs, vectors: Vectors, *, seed: int = 0, foils: int = PAIR_FOILS) -> PairsEvaluation:
    """For each left picture, rank its true right among `foils` right pictures of other pairs drawn at random.

    Foils are drawn per pair with a seeded generator, without repeats and never the true right
    picture itself (by content), so that a run is reproducible and every candidate is different.
    """
    row_of = {item.sha256: i for i, item in enumerate(vectors.items)}
    usable = [(left, right) for left, right in pairs.pairs if left in row_of and right in row_of]
    rights = list(dict.fromkeys(right for _, right in usable))
    if len(rights) < 2:
        raise CatalogError(f"{pairs.catalog.source}: fewer than two pairs could be embedded; nothing to rank")
    n_foils = min(foils, len(rights) - 1)
    rng = np.random.default_rng(seed)
    position = {sha: i for i, sha in enumerate(rights)}
    left_vecs = vectors.block(np.array([row_of[left] for left, _ in usable]))  # (P, D)
    right_vecs = vectors.block(np.array([row_of[sha] for sha in rights]))  # (U, D)
    scores = normalise(left_vecs) @ normalise(right_vecs).T  # (P, U)
    results = []
    for p, (left, right) in enumerate(usable):
        own = position[right]
        drawn = rng.choice(len(rights) - 1, size=n_foils, replace=False)
        drawn = drawn + (drawn >= own)  # skip the true right picture
        foil_scores = scores[p, drawn]
        rank = int(pair_ranks(scores[p, [own]], foil_scores[None, :])[0])
        best = int(drawn[np.argmax(foil_scores)])
        results.append(
            PairResult(
                left=vectors.path(row_of[left]),
                right=vectors.path(row_of[right]),
                rank=rank,
                score=float(scores[p, own]),
                foil=vectors.path(row_of[rights[best]]),
                foil_score=float(scores[p, best]),
            )
        )
    missing = len(pairs.pairs) - len(usable)
    unread = [s for s in vectors.skipped if s not in pairs.catalog.skipped]  # pictures that could not be embedded
    skipped = (
        pairs.catalog.skipped
        + unread
        + (
            [Skip(str(pairs.catalog.source), f"{missing} pairs with a picture that could not be embedded")]
            if missing
            else []
        )
    )
    ms = 1000 * vectors.seconds / len(vectors.items) if vectors.seconds else None
    return PairsEvaluation(
        source=str(pairs.catalog.source),
        results=results,
        candidates=n_foils + 1,
        seed=seed,
        skipped=skipped,
        ms_per_image=ms,
        index_mb=vectors.index.size_bytes / 1e6 if vectors.index is not None else None,
    )
