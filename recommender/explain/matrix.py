"""The catalog's cosine-similarity matrix: which items to show, ordered so look-alikes form blocks, drawn."""

from __future__ import annotations

import difflib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..backbones import Backbone, normalise
from ..catalog import Item
from ..errors import RecommenderError
from ..files import save_png, write_output
from ..images import ImageSource
from ..index import Index
from ..recommend import embed_query
from ..runtime import Runtime
from .pca import principal_components

#: Items in a catalog heatmap when no limit is given, and the most it will draw.
DEFAULT_LIMIT = 40
MAX_LIMIT = 300
#: Items per look-alike group when an unlabeled (or many-labeled) catalog is summarised.
GROUP_SIZE = 5
# Tick labels are dropped beyond this many rows (they would overlap); the data still carries them.
_MAX_TICKS = 120
# Optimal leaf ordering costs O(M^3): worth it for figures people read, skipped for huge ones.
_MAX_OPTIMAL_ORDER = 150
# Rows sampled per label to find its most typical items (the ones nearest the label's mean).
_TYPICAL_SAMPLE = 512
# Candidate pool for choosing spread-out anchors in a large catalog.
_ANCHOR_POOL = 5000


@dataclass(frozen=True)
class SimilarityMatrix:
    """The cosine similarities of a set of catalog items, in display (clustered) order.

    `image` is the drawn heatmap when one was drawn (`catalog_heatmap`), else None.
    """

    matrix: np.ndarray = field(repr=False)  # (M, M) float32 cosine similarities, rows and columns in display order
    labels: list[str]  # (M,) tick labels in display order: item label, else its id; "query" for the query
    ids: list[str | None]  # (M,) item ids in display order; None for the query
    order: np.ndarray = field(repr=False)  # (M,) int: display position -> position in the selection before clustering
    features: int | None  # principal components used, None for the raw embeddings
    explained: float | None  # fraction of the catalog's variance those components hold
    dim: int  # dimensions of the raw embeddings
    index_name: str
    image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def description(self) -> str:
        """What the similarities were computed on, in words (used as the figure's subtitle)."""
        if self.features is None:
            return f"all {self.dim} dimensions"
        share = f", {self.explained:.0%} of the variance" if self.explained is not None else ""
        plural = "s" if self.features != 1 else ""
        return f"first {self.features} principal component{plural}{share}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: labels, ids and the matrix as nested lists (rounded), for an app or a file."""
        return {
            "index": self.index_name,
            "features": self.features if self.features is not None else "all",
            "explained_variance": None if self.explained is None else round(self.explained, 4),
            "labels": list(self.labels),
            "ids": list(self.ids),
            "matrix": np.round(self.matrix, 4).tolist(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the heatmap as a PNG (drawing it first if needed)."""
        image = self.image or draw_similarity(self)
        return save_png(image, path)


def parse_features(features: int | str | None) -> int | None:
    """`None`/`"all"` -> None (the raw embeddings); `5`/`"5"` -> 5 principal components; else an error."""
    if features is None or (isinstance(features, str) and features.strip().lower() in ("", "all")):
        return None
    try:
        k = int(features)
    except (TypeError, ValueError):
        raise RecommenderError(
            f"features must be a positive number of principal components or 'all', not {features!r}"
        ) from None
    if k < 1:
        raise RecommenderError(f"features must be at least 1 (or 'all'), not {k}")
    return k


def similarity_matrix(
    index: Index,
    *,
    features: int | str | None = None,
    labels: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    query: ImageSource | np.ndarray | None = None,
    limit: int = DEFAULT_LIMIT,
    cluster: bool = True,
    backbone: Backbone | None = None,
    runtime: Runtime | None = None,
) -> SimilarityMatrix:
    """Cosine similarities of a representative set of items of `index`, ordered so look-alikes form blocks.

    Which items: `ids` if given; else, with a `query` (a picture or a (D,) vector), the query itself
    and its nearest items; else items of `labels` (all labels by default) taken in turn, most typical
    first, when there are at most `limit` labels; else spread-out groups of look-alikes. At most
    `limit` items. `features=K` computes cosines on the first K principal components of the whole
    catalog's embeddings (with K=1 every cosine is +1 or -1: a single axis only tells sides apart);
    `None` or "all" uses the embeddings themselves. `cluster` orders rows by average-linkage
    hierarchical clustering of cosine distance.
    """
    k = parse_features(features)
    if not 1 <= limit <= MAX_LIMIT:
        raise RecommenderError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    if len(index) == 0:
        raise RecommenderError(f"index {index.name!r} is empty")
    query_vec = _query_vector(query, index, backbone) if query is not None else None
    rows = _select(index, labels=labels, ids=ids, query=query_vec, limit=limit - (query_vec is not None))
    vectors = np.asarray(index.embeddings[np.sort(rows)], dtype=np.float32)  # (M, D), memmaps want sorted reads
    vectors = vectors[np.argsort(np.argsort(rows))]  # back to selection order
    names = [tick_label(index.items[r]) for r in rows]
    # A label shown more than once (a sprite and an artwork) is told apart by its view, where the catalog has one.
    repeated = {name for name in names if names.count(name) > 1}
    names = [
        f"{name}{VIEW_SEPARATOR}{view}" if name in repeated and (view := index.items[r].metadata.get("view")) else name
        for name, r in zip(names, rows, strict=True)
    ]
    item_ids: list[str | None] = [index.items[r].id for r in rows]
    if query_vec is not None:
        vectors = np.concatenate([query_vec[None, :], vectors])
        names.insert(0, "query")
        item_ids.insert(0, None)

    explained = None
    if k is not None:
        pca = principal_components(index, runtime=runtime)
        k = min(k, len(pca.variance))
        # (M, K): centred projections on the first K principal axes
        vectors = (vectors - pca.mean) @ pca.components[:k].T
        explained = float(pca.variance[:k].sum() / pca.variance.sum())
    unit = normalise(vectors)
    matrix = np.clip(unit @ unit.T, -1.0, 1.0).astype(np.float32)  # (M, M)

    order = cluster_order(matrix) if cluster else np.arange(len(matrix))
    return SimilarityMatrix(
        matrix=matrix[np.ix_(order, order)],
        labels=[names[i] for i in order],
        ids=[item_ids[i] for i in order],
        order=order,
        features=k,
        explained=explained,
        dim=index.dim,
        index_name=index.name,
    )


def catalog_heatmap(  # noqa: PLR0913  # keyword-only options of a public call
    index: Index,
    *,
    features: int | str | None = None,
    labels: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    query: ImageSource | np.ndarray | None = None,
    limit: int = DEFAULT_LIMIT,
    cluster: bool = True,
    backbone: Backbone | None = None,
    runtime: Runtime | None = None,
    title: str | None = None,
    out: str | os.PathLike | None = None,
) -> SimilarityMatrix:
    """`similarity_matrix` drawn as a heatmap with labels and a colour bar: the result's `image`.

    `out` also writes the PNG there. Options are those of `similarity_matrix`.
    """
    sim = similarity_matrix(
        index,
        features=features,
        labels=labels,
        ids=ids,
        query=query,
        limit=limit,
        cluster=cluster,
        backbone=backbone,
        runtime=runtime,
    )
    image = draw_similarity(sim, title=title, out=out)
    return replace(sim, image=image)


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """(M,) permutation that puts similar rows of an (M, M) cosine matrix next to each other."""
    m = len(matrix)
    if m < 3:
        return np.arange(m)
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    distance = np.clip(1.0 - (matrix + matrix.T) / 2.0, 0.0, 2.0).astype(np.float64)  # (M, M), symmetric
    np.fill_diagonal(distance, 0.0)
    condensed = squareform(distance, checks=False)  # (M (M-1) / 2,)
    tree = linkage(condensed, method="average")
    if m <= _MAX_OPTIMAL_ORDER:
        # Among the 2^(M-1) orders a tree allows, the one where neighbours are most alike: cleaner blocks.
        tree = optimal_leaf_ordering(tree, condensed)
    return leaves_list(tree).astype(np.int64)


def draw_similarity(
    sim: SimilarityMatrix, *, title: str | None = None, out: str | os.PathLike | None = None
) -> Image.Image:
    """Draw a `SimilarityMatrix` as a heatmap (matplotlib, no display needed); returns RGB, writes `out`."""
    from matplotlib.figure import Figure  # Figure without pyplot: no global state, safe in app threads

    m = len(sim.matrix)
    side = float(np.clip(3.0 + 0.17 * m, 5.5, 16.0))  # inches: room for M rows of labels
    fig = Figure(figsize=(side + 1.3, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    # One scale for every feature setting (with 1 feature cosines are +1 or -1): red alike, white
    # unrelated, blue opposite; the colour of a cosine never changes with what else is on the map.
    im = ax.imshow(sim.matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label("cosine similarity")
    if m <= _MAX_TICKS:
        size = float(np.clip(260 / max(m, 1), 4.5, 10))
        ticks = np.arange(m)
        ax.set_xticks(ticks, labels=sim.labels, rotation=90, fontsize=size)
        ax.set_yticks(ticks, labels=sim.labels, fontsize=size)
        _colour_ticks(ax, sim.labels)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{m} items (too many to label)")
    heading = title or f"{sim.index_name}: cosine similarity of {m} items"
    ax.set_title(f"{heading}\n{sim.description}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    if out is not None:
        write_output(buf.getvalue(), out)  # the PNG as drawn: no second encoding
    return Image.open(buf).convert("RGB")


def _colour_ticks(ax: Any, labels: list[str]) -> None:
    """Colour tick labels by label, so that a block of one label reads as one colour (when labels repeat)."""
    groups = [label.split(VIEW_SEPARATOR)[0] for label in labels]  # a label's views share its colour
    distinct = list(dict.fromkeys(groups))
    if len(distinct) == len(labels) or len(distinct) > 20:
        return
    from matplotlib import colormaps

    palette = colormaps["tab20" if len(distinct) > 10 else "tab10"]
    colour = {name: palette(i % palette.N) for i, name in enumerate(distinct)}
    for tick in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        tick.set_color(colour.get(tick.get_text().split(VIEW_SEPARATOR)[0], "black"))


#: Between a label and its view in tick labels (`Pikachu · sprite`).
VIEW_SEPARATOR = " · "


def tick_label(item: Item, width: int = 24) -> str:
    """An item's label (else its id), shortened with an ellipsis to `width` characters."""
    text = item.label if item.label is not None else item.id
    return text if len(text) <= width else text[: width - 1] + "…"


def _query_vector(query: ImageSource | np.ndarray, index: Index, backbone: Backbone | None) -> np.ndarray:
    """(D,) unit vector of a query given as a vector or a picture (embedded with the index's backbone)."""
    if isinstance(query, np.ndarray):
        vec = np.asarray(query, dtype=np.float32).reshape(-1)
        if vec.shape[0] != index.dim:
            raise RecommenderError(f"query vector is {vec.shape[0]}-d but index {index.name!r} holds {index.dim}-d")
        return normalise(vec)
    return embed_query(query, index, backbone=backbone)


# ------------------------------------------------------------------------------- choosing items


def _select(
    index: Index, *, labels: Sequence[str] | None, ids: Sequence[str] | None, query: np.ndarray | None, limit: int
) -> np.ndarray:
    """(M,) rows of the index to show, M <= limit (see `similarity_matrix` for the rules)."""
    if ids:
        rows = np.array([index.position(i) for i in dict.fromkeys(ids)], dtype=np.int64)
        if len(rows) > limit:
            raise RecommenderError(f"{len(rows)} ids given but the limit is {limit}; raise the limit or name fewer")
        return rows
    wanted = _resolve_labels(index, labels) if labels else None
    if query is not None:
        if limit < 1:
            return np.zeros(0, dtype=np.int64)
        where = {"label": wanted} if wanted else None
        return np.array([index.position(m.id) for m in index.search(query, k=limit, where=where)], dtype=np.int64)
    by_label = _rows_by_label(index)
    if wanted is not None:
        return _round_robin(index, {name: by_label[name] for name in wanted}, limit)
    if by_label and len(by_label) <= limit:
        return _round_robin(index, by_label, limit)
    return _groups(index, limit)


def _rows_by_label(index: Index) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for row, item in enumerate(index.items):
        if item.label is not None:
            groups.setdefault(item.label, []).append(row)
    return {name: np.array(rows, dtype=np.int64) for name, rows in groups.items()}


def _resolve_labels(index: Index, labels: Sequence[str]) -> list[str]:
    """The index's spelling of each wanted label (case-insensitive), or an error naming the unknown ones."""
    known = sorted({item.label for item in index.items if item.label is not None})
    if not known:
        raise RecommenderError(f"index {index.name!r} has no labels; leave out --labels (or pick items by id)")
    folded = {name.casefold(): name for name in known}
    chosen, unknown = [], []
    for name in labels:
        name = name.strip()
        if not name:
            continue
        if name.casefold() in folded:
            chosen.append(folded[name.casefold()])
        else:
            unknown.append(name)
    if unknown:
        hints = [h for u in unknown for h in difflib.get_close_matches(u, known, n=2)]
        hint = f"; did you mean {', '.join(dict.fromkeys(hints))}?" if hints else ""
        sample = ", ".join(known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
        raise RecommenderError(
            f"unknown label(s) {', '.join(map(repr, unknown))} in index {index.name!r}{hint} (labels: {sample})"
        )
    if not chosen:
        raise RecommenderError("no labels given")
    return list(dict.fromkeys(chosen))


def _round_robin(index: Index, groups: dict[str, np.ndarray], limit: int) -> np.ndarray:
    """One item of each label in turn, most typical first (nearest its label's mean), up to `limit`."""
    rng = np.random.default_rng(0)
    ranked = []
    for rows in groups.values():
        sample = rows if len(rows) <= _TYPICAL_SAMPLE else np.sort(rng.choice(rows, _TYPICAL_SAMPLE, replace=False))
        vectors = np.asarray(index.embeddings[sample], dtype=np.float32)  # (n, D) unit rows
        centre = normalise(vectors.mean(axis=0))
        ranked.append(sample[np.argsort(-(vectors @ centre), kind="stable")])
    picked: list[int] = []
    for turn in range(max(len(r) for r in ranked)):
        for rows in ranked:
            if turn < len(rows) and len(picked) < limit:
                picked.append(int(rows[turn]))
    return np.array(picked, dtype=np.int64)


def _groups(index: Index, limit: int) -> np.ndarray:
    """Spread-out anchors (farthest-point sampling) each with its nearest look-alikes: blocks show, variety too."""
    n = len(index)
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    pool = np.arange(n) if n <= _ANCHOR_POOL else np.sort(rng.choice(n, _ANCHOR_POOL, replace=False))
    vectors = np.asarray(index.embeddings[pool], dtype=np.float32)  # (P, D) unit rows
    # Start from the most typical item, then keep adding the one least like any chosen so far.
    first = int(np.argmax(vectors @ normalise(vectors.mean(axis=0))))
    closest = vectors @ vectors[first]  # (P,) best similarity to a chosen anchor
    anchors = [first]
    picked: dict[int, None] = {}
    wanted_groups = max(1, -(-limit // GROUP_SIZE))
    while len(picked) < limit:
        if len(anchors) > wanted_groups * 4 or len(anchors) >= len(pool):
            break
        anchor = anchors[-1]
        for match in index.search(vectors[anchor], k=GROUP_SIZE):
            if len(picked) < limit:
                picked.setdefault(index.position(match.id), None)
        nxt = int(np.argmin(closest))
        closest = np.maximum(closest, vectors @ vectors[nxt])
        anchors.append(nxt)
    return np.array(list(picked), dtype=np.int64)
