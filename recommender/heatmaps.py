"""Heatmaps: the catalog's cosine-similarity matrix, and where in two pictures a match lies."""

from __future__ import annotations

import difflib
import functools
import hashlib
import io
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from . import settings
from .backbones import Backbone, EfficientNetLite0, Hybrid, load_backbone, normalise
from .catalog import Item
from .errors import ModelError, RecommenderError
from .images import DECODE_MAX_SIDE, ImageSource, load_image
from .index import Index, Match
from .recommend import embed_query

#: Items in a catalog heatmap when no limit is given, and the most it will draw.
DEFAULT_LIMIT = 40
MAX_LIMIT = 300
#: Items per look-alike group when an unlabeled (or many-labeled) catalog is summarised.
GROUP_SIZE = 5
# Tick labels are dropped beyond this many rows (they would overlap); the data still carries them.
_MAX_TICKS = 120
# Optimal leaf ordering costs O(M^3): worth it for figures people read, skipped for huge ones.
_MAX_OPTIMAL_ORDER = 150
# Rows per chunk when the PCA scans a memory-mapped catalog, so a large float16 index is never copied whole.
_CHUNK_ROWS = 1 << 16
# Rows sampled per label to find its most typical items (the ones nearest the label's mean).
_TYPICAL_SAMPLE = 512
# Candidate pool for choosing spread-out anchors in a large catalog.
_ANCHOR_POOL = 5000
# Patches with at least this share of object set the overlay's scale.
_ON_OBJECT = 0.25
# Under the overlay the picture keeps this much of its colour, so that the heat's colours read clearly.
_KEEP_COLOUR = 0.35
# Pair lines and dots: a qualitative palette, so that each pair can be followed across (no grey, no yellow).
_PAIR_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                 (227, 119, 194), (23, 190, 207))
# A plain background: pixels within this of its colour (per channel, 0-255), a colour at least this light.
_BACKGROUND_TOLERANCE = 24
_LIGHT = 200


# =============================================================================== small caches


class _LRU:
    """A thread-safe least-recently-used cache of numpy arrays with a budget in bytes (Gradio calls from threads)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any, *, nbytes: int | None = None) -> None:
        size = nbytes if nbytes is not None else int(getattr(value, "nbytes", 1024))
        with self._lock:
            if key in self._data:
                self._bytes -= self._sizes.pop(key)
                del self._data[key]
            self._data[key] = value
            self._sizes[key] = size
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._data) > 1:
                old, _ = self._data.popitem(last=False)
                self._bytes -= self._sizes.pop(old)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self._bytes = 0


# Patch features are kept as float16: half the memory, and overlays do not need more precision.
_FEATURES = _LRU(96 << 20)
_PCA_CACHE = _LRU(64 << 20)


def _cached(key: Hashable, compute: Callable[[], np.ndarray | None]) -> np.ndarray | None:
    """`compute()` once per key in the in-memory cache; a None answer is remembered too."""
    value = _FEATURES.get(key)
    if value is None:
        value = compute()
        value = np.zeros(0, dtype=np.float32) if value is None else value  # the LRU cannot hold None
        _FEATURES.put(key, value)
    return None if value.size == 0 else value


def clear_caches() -> None:
    """Forget every in-memory patch feature and PCA (the on-disk cache stays)."""
    _FEATURES.clear()
    _PCA_CACHE.clear()


# =============================================================================== catalog similarity matrix


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
        return _save_png(image, path)


def parse_features(features: int | str | None) -> int | None:
    """`None`/`"all"` -> None (the raw embeddings); `5`/`"5"` -> 5 principal components; else an error."""
    if features is None or (isinstance(features, str) and features.strip().lower() in ("", "all")):
        return None
    try:
        k = int(features)
    except (TypeError, ValueError):
        raise RecommenderError(f"features must be a positive number of principal components or 'all', "
                               f"not {features!r}") from None
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
    names = [_tick(index.items[r]) for r in rows]
    item_ids: list[str | None] = [index.items[r].id for r in rows]
    if query_vec is not None:
        vectors = np.concatenate([query_vec[None, :], vectors])
        names.insert(0, "query")
        item_ids.insert(0, None)

    explained = None
    if k is not None:
        pca = principal_components(index)
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


def catalog_heatmap(
    index: Index,
    *,
    features: int | str | None = None,
    labels: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    query: ImageSource | np.ndarray | None = None,
    limit: int = DEFAULT_LIMIT,
    cluster: bool = True,
    backbone: Backbone | None = None,
    title: str | None = None,
    out: str | os.PathLike | None = None,
) -> SimilarityMatrix:
    """`similarity_matrix` drawn as a heatmap with labels and a colour bar: the result's `image`.

    `out` also writes the PNG there. Options are those of `similarity_matrix`.
    """
    sim = similarity_matrix(index, features=features, labels=labels, ids=ids, query=query, limit=limit,
                            cluster=cluster, backbone=backbone)
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


def draw_similarity(sim: SimilarityMatrix, *, title: str | None = None,
                    out: str | os.PathLike | None = None) -> Image.Image:
    """Draw a `SimilarityMatrix` as a heatmap (matplotlib, no display needed); returns RGB, writes `out`."""
    from matplotlib.figure import Figure  # Figure without pyplot: no global state, safe in app threads

    m = len(sim.matrix)
    side = float(np.clip(3.0 + 0.17 * m, 5.5, 16.0))  # inches: room for M rows of labels
    fig = Figure(figsize=(side + 1.3, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    # Colours span what is there, up to 1 (the diagonal), so that typical 0.3-0.9 cosines are not washed out.
    low = float(np.floor(sim.matrix.min() * 20) / 20) if m else 0.0
    im = ax.imshow(sim.matrix, cmap="viridis", vmin=min(low, 0.95), vmax=1.0, interpolation="nearest")
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
        _write_bytes(buf.getvalue(), out)  # the PNG as drawn: no second encoding
    return Image.open(buf).convert("RGB")


def _colour_ticks(ax: Any, labels: list[str]) -> None:
    """Colour tick labels by label, so that a block of one label reads as one colour (when labels repeat)."""
    distinct = list(dict.fromkeys(labels))
    if len(distinct) == len(labels) or len(distinct) > 20:
        return
    from matplotlib import colormaps

    palette = colormaps["tab20" if len(distinct) > 10 else "tab10"]
    colour = {name: palette(i % palette.N) for i, name in enumerate(distinct)}
    for tick in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        tick.set_color(colour.get(tick.get_text(), "black"))


def _tick(item: Item, width: int = 24) -> str:
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


def _select(index: Index, *, labels: Sequence[str] | None, ids: Sequence[str] | None, query: np.ndarray | None,
            limit: int) -> np.ndarray:
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
        raise RecommenderError(f"unknown label(s) {', '.join(map(repr, unknown))} in index {index.name!r}{hint} "
                               f"(labels: {sample})")
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


# ------------------------------------------------------------------------------- PCA


@dataclass(frozen=True)
class PrincipalComponents:
    """The catalog's principal axes (the heatmap's `features=K` and the 2-D map both use them)."""

    mean: np.ndarray  # (D,) float32 catalog mean
    components: np.ndarray  # (R, D) float32 principal axes, by decreasing variance
    variance: np.ndarray  # (R,) float64 variance along each axis


def principal_components(index: Index) -> PrincipalComponents:
    """PCA of the whole catalog's embeddings, computed once per index version and cached."""
    key = (str(index.folder.resolve()), index.manifest["files"]["embeddings"])
    cached = _PCA_CACHE.get(key)
    if cached is not None:
        return cached
    n, d = index.embeddings.shape
    if n < 2:
        raise RecommenderError(f"index {index.name!r} has {n} item: principal components need at least 2")
    if n <= d:
        # Fewer items than dimensions: the SVD of the centred (N, D) matrix is the cheaper route.
        x = np.asarray(index.embeddings, dtype=np.float64)
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)  # vt: (min(N, D), D)
        variance, axes = s**2 / n, vt
    else:
        # Many items: accumulate the (D, D) second moment chunk by chunk, then diagonalise it.
        total = np.zeros(d, dtype=np.float64)
        gram = np.zeros((d, d), dtype=np.float64)
        for start in range(0, n, _CHUNK_ROWS):
            block = np.asarray(index.embeddings[start : start + _CHUNK_ROWS], dtype=np.float64)  # (B, D)
            total += block.sum(axis=0)
            gram += block.T @ block
        mean = total / n
        values, vectors = np.linalg.eigh(gram / n - np.outer(mean, mean))  # ascending
        variance, axes = values[::-1], vectors[:, ::-1].T
    keep = variance > max(float(variance.max()), 1e-30) * 1e-9  # drop axes with no variance at all
    if not keep.any():
        raise RecommenderError(f"index {index.name!r}: all embeddings are identical, nothing to decompose")
    pca = PrincipalComponents(mean=mean.astype(np.float32),
                              components=np.ascontiguousarray(axes[keep], dtype=np.float32), variance=variance[keep])
    _PCA_CACHE.put(key, pca, nbytes=pca.components.nbytes)
    return pca


# =============================================================================== patch correspondence


@dataclass(frozen=True)
class PatchPair:
    """Two mutually nearest patches: centres in each original picture's pixels, and their cosine."""

    query_xy: tuple[float, float]
    match_xy: tuple[float, float]
    similarity: float


@dataclass(frozen=True)
class Explanation:
    """Where a query and a catalog item match.

    `image` is query | match side by side with overlays, lines and a legend; `query_overlay` and
    `match_overlay` are the two panels alone. The maps say, per patch of the model's input, how
    much better that patch is matched somewhere in the other picture than by a plain background, on
    a shared scale where 1 stands for a cosine margin of `peak` (the best margin on the objects).
    The heats are what the panels show: the maps upsampled onto each picture (padding cut away)
    and, with `mask_background`, cut to the object.
    """

    image: Image.Image = field(repr=False)
    query_overlay: Image.Image = field(repr=False)
    match_overlay: Image.Image = field(repr=False)
    query_map: np.ndarray = field(repr=False)  # (Hq, Wq) float32 in [0, 1], per patch of the query
    match_map: np.ndarray = field(repr=False)  # (Hm, Wm) float32 in [0, 1], per patch of the item
    query_heat: np.ndarray = field(repr=False)  # (h, w) float32 in [0, 1]: query_map upsampled onto its panel
    match_heat: np.ndarray = field(repr=False)  # (h, w) float32 in [0, 1], the same for the item's panel
    peak: float = 0.0
    pairs: list[PatchPair] = field(default_factory=list, repr=False)
    item: Item | None = None
    rank: int | None = None
    score: float | None = None

    def save(self, path: str | os.PathLike) -> Path:
        return _save_png(self.image, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no pictures): the item, scores and the pairs in picture pixels."""
        return {
            "rank": self.rank,
            "id": self.item.id if self.item else None,
            "label": self.item.label if self.item else None,
            "score": None if self.score is None else round(self.score, 6),
            "peak": round(self.peak, 6),
            "pairs": [{"query_xy": [round(v, 1) for v in p.query_xy], "match_xy": [round(v, 1) for v in p.match_xy],
                       "similarity": round(p.similarity, 4)} for p in self.pairs],
        }


def has_spatial_features(backbone: Backbone) -> bool:
    """Whether `explain` works with this backbone (DINOv2 and the CNN do; the colour histogram does not)."""
    try:
        _spatial_part(backbone)
    except ModelError:
        return False
    return True


def explain(
    query: ImageSource,
    item: Item | Match | str,
    index: Index,
    *,
    backbone: Backbone | None = None,
    pairs: int = 8,
    size: int = 320,
    alpha: float = 0.6,
    cmap: str = "turbo",
    detail: int | None = None,
    mask_background: bool = True,
    disk_cache: bool = True,
    out: str | os.PathLike | None = None,
) -> Explanation:
    """Overlays showing which regions of `query` and of a catalog `item` (an Item, a Match or an id) match.

    Per patch of each picture: its best cosine match among the other picture's patches, minus its
    best match in a plain picture of the background colour, so that two white backgrounds do not
    count as a match. Patch features of catalog items are computed on demand and cached in memory and
    (unless `disk_cache=False`) as .npy files in the cache folder; the query's are cached in memory.
    `pairs` mutually nearest patch pairs are drawn as lines; `size` is the height of each panel.
    `detail` runs the model on pictures that many times larger for a finer grid (features for the
    overlays only; the search is unchanged): by default 2 for the CNN, whose 7 x 7 grid is too coarse
    to tell parts apart (about 3x the time), and 1 for DINOv2 (16 x 16 patches at 224 px).
    With `mask_background`, a picture on a plain light background (sprites, product shots) has
    that background found pixel by pixel (the light colour connected to the border) and left
    uncoloured, which also sharpens the coarse grid of the CNN (7 x 7) to the object's outline.
    Raises `ModelError` when the index's backbone has no spatial features (the colour histogram).
    """
    if pairs < 0 or size < 32 or not 0.0 <= alpha <= 1.0 or (detail is not None and not 1 <= detail <= 4):
        raise RecommenderError("explain needs pairs >= 0, size >= 32, alpha between 0 and 1 and detail 1 to 4")
    rank = score = None
    if isinstance(item, Match):
        rank, score, item = item.rank, item.score, item.item
    elif isinstance(item, str):
        item = index.items[index.position(item)]
    if backbone is None:
        backbone = index.backbone()
    else:
        index.check_backbone(backbone)
    part = _finer(_spatial_part(backbone), detail)

    query_img = load_image(query, max_side=DECODE_MAX_SIDE)
    match_img = load_image(index.path_of(item), name=item.path, max_side=DECODE_MAX_SIDE)
    # Names of the two pictures for the caches: the query by its pixels, the item by its file's sha256.
    q_id = ("pixels", _pixels_key(query_img))
    m_id = ("item", index.name, _item_key(index, item))
    fq, fm, ref = _features(part, index, item, query_img, match_img, q_id, m_id, disk_cache=disk_cache)

    q_view, m_view = _View.of(query_img, part), _View.of(match_img, part)
    q_valid, m_valid = q_view.valid(fq.shape[:2]), m_view.valid(fm.shape[:2])  # (Hq, Wq), (Hm, Wm) bool
    # (Hq, Wq), (Hm, Wm) share of each patch that shows the object; all ones unless the background is plain
    q_fg = _foreground_share(query_img, q_id, q_view, fq.shape[:2], part) if mask_background else None
    m_fg = _foreground_share(match_img, m_id, m_view, fm.shape[:2], part) if mask_background else None
    q_share = _object_share(q_valid, q_fg).ravel()  # (Pq,) in [0, 1]: 0 on padding and plain background
    m_share = _object_share(m_valid, m_fg).ravel()  # (Pm,)

    a = fq.reshape(-1, fq.shape[-1])  # (Pq, C) unit rows
    b = fm.reshape(-1, fm.shape[-1])  # (Pm, C)
    sim = np.clip(a @ b.T, -1.0, 1.0)  # (Pq, Pm) patch-to-patch cosines (float16 storage can overshoot 1)
    sim[~q_valid.ravel(), :] = -np.inf  # padding is not part of either picture
    sim[:, ~m_valid.ravel()] = -np.inf
    best_q, best_m = sim.max(axis=1), sim.max(axis=0)  # (Pq,), (Pm,)
    base_q = (a @ ref.T).max(axis=1)  # (Pq,) how well a plain background explains each patch
    base_m = (b @ ref.T).max(axis=1)  # (Pm,)
    gain_q = np.where(q_valid.ravel(), np.clip(best_q - base_q, 0.0, None), 0.0)
    gain_m = np.where(m_valid.ravel(), np.clip(best_m - base_m, 0.0, None), 0.0)
    # The scale is set on the objects, so that a stray background patch cannot wash the overlays out.
    peak = float(max(gain_q[q_share >= _ON_OBJECT].max(initial=0.0), gain_m[m_share >= _ON_OBJECT].max(initial=0.0)))
    scale = peak if peak > 1e-6 else 1.0
    q_map = np.clip(gain_q / scale, 0.0, 1.0).reshape(fq.shape[:2]).astype(np.float32)
    m_map = np.clip(gain_m / scale, 0.0, 1.0).reshape(fm.shape[:2]).astype(np.float32)

    found = _mutual_pairs(sim, base_q, base_m, q_share, m_share, pairs)
    pair_list = [
        PatchPair(query_xy=q_view.patch_centre(i, fq.shape[:2]), match_xy=m_view.patch_centre(j, fm.shape[:2]),
                  similarity=float(sim[i, j]))
        for i, j in found
    ]

    lut = _colour_table(cmap)
    q_panel, q_heat = _overlay(query_img, q_map, q_view, size, lut, alpha, mask=q_id if mask_background else None)
    m_panel, m_heat = _overlay(match_img, m_map, m_view, size, lut, alpha, mask=m_id if mask_background else None)
    title = f"#{rank} " if rank else ""
    title += _tick(item, 40) + (f"   cosine {score:.3f}" if score is not None else "")
    image = _compose(q_panel, m_panel, pair_list, query_img.size, match_img.size, lut, "query", title,
                     Path(part.name).name)  # a model folder's path would crowd the legend
    result = Explanation(image=image, query_overlay=q_panel, match_overlay=m_panel, query_map=q_map, match_map=m_map,
                         query_heat=q_heat, match_heat=m_heat, peak=peak, pairs=pair_list, item=item, rank=rank,
                         score=score)
    if out is not None:
        result.save(out)
    return result


def _spatial_part(backbone: Backbone) -> Backbone:
    """The backbone (or the part of a hybrid) whose patch features the overlays use."""
    candidates = backbone.parts if isinstance(backbone, Hybrid) else [backbone]
    for part in candidates:
        if type(part).patch_features is not Backbone.patch_features and hasattr(part, "fit"):
            return part
    raise ModelError(
        f"{backbone.name} has no spatial features, so it cannot show where two pictures match; "
        "use an index built with a DINOv2 or CNN backbone (e.g. --model efficientnet-lite0)"
    )


_FINER: dict[tuple[str, int, str], Backbone] = {}
_FINER_LOCK = threading.Lock()


def _finer(part: Backbone, detail: int | None) -> Backbone:
    """`part` run on `detail` times larger pictures (the same weights), for finer overlays."""
    if detail is None:
        detail = 2 if isinstance(part, EfficientNetLite0) else 1
    while detail > 1 and part.image_size * detail > 1036:  # the largest input size backbones accept
        detail -= 1
    if detail == 1:
        return part
    size = part.image_size * detail  # still a multiple of the patch size (14) or the CNN's stride (32)
    device = getattr(part, "device", None)
    key = (part.identity, size, str(device))
    with _FINER_LOCK:
        if key not in _FINER:
            # Built from the spec, so that the weights (hence the identity) are the index's own.
            _FINER[key] = load_backbone(**{**part.spec, "image_size": size}, device=device)
        return _FINER[key]


# ------------------------------------------------------------------------------- features and caches


def _part_key(part: Backbone) -> str:
    """What the patch features depend on: the weights and the input geometry (and precision, when set)."""
    return f"{part.identity}|{part.image_size}|{getattr(part, 'fit', '')}|{getattr(part, 'precision', '')}"


def _pixels_key(image: Image.Image) -> str:
    return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()


def _background_colour(image: Image.Image) -> tuple[int, int, int]:
    """The commonest colour of the picture's outer ring, rounded to steps of 16 (its background, usually)."""
    px = np.asarray(image, dtype=np.uint8)
    ring = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]]).astype(np.int32) // 16  # (R, 3) in 0..15
    codes = (ring[:, 0] * 16 + ring[:, 1]) * 16 + ring[:, 2]  # (R,) one number per rounded colour
    top = int(np.bincount(codes, minlength=4096).argmax())
    colour = (np.array([top // 256, top // 16 % 16, top % 16]) * 16 + 8).tolist()
    return tuple(c if c < 248 else 255 for c in colour)  # type: ignore[return-value]


def _features(part: Backbone, index: Index, item: Item, query: Image.Image, match: Image.Image,
              q_id: tuple[str, ...], m_id: tuple[str, ...], *, disk_cache: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Hq, Wq, C) query, (Hm, Wm, C) item and (R, C) plain-background patch features, float32.

    Whatever is not cached is computed in one model call.
    """
    pkey = _part_key(part)
    colours = dict.fromkeys([(255, 255, 255), _background_colour(query), _background_colour(match)])
    keys = {
        "query": (*q_id, pkey),
        "item": (*m_id, pkey),
        **{c: ("plain", pkey, c) for c in colours},
    }
    found = {name: _FEATURES.get(key) for name, key in keys.items()}
    disk_path = _disk_path(index, item, pkey) if disk_cache else None
    if found["item"] is None and disk_path is not None:
        found["item"] = _read_npy(disk_path)
        if found["item"] is not None:
            _FEATURES.put(keys["item"], found["item"])
    missing = [name for name, value in found.items() if value is None]
    if missing:
        side = part.image_size
        pictures = {"query": query, "item": match} | {c: Image.new("RGB", (side, side), c) for c in colours}
        grids = part.patch_features([pictures[name] for name in missing])  # (n, H, W, C) unit rows
        for name, grid in zip(missing, grids):
            found[name] = grid.astype(np.float16)
            _FEATURES.put(keys[name], found[name])
        if "item" in missing and disk_path is not None:
            _write_npy(disk_path, found["item"])
    ref = np.concatenate([found[c].reshape(-1, found[c].shape[-1]) for c in colours])  # (R, C)
    return (found["query"].astype(np.float32), found["item"].astype(np.float32), ref.astype(np.float32))


def _item_key(index: Index, item: Item) -> str:
    if item.sha256:
        return item.sha256
    path = index.path_of(item)
    stat = path.stat()
    return hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()


def _disk_path(index: Index, item: Item, part_key: str) -> Path:
    """cache/patches/<index>/<sha256 of item and backbone>.npy: content-addressed, so never stale."""
    digest = hashlib.sha256(f"{_item_key(index, item)}|{part_key}".encode()).hexdigest()[:40]
    return settings.cache_dir() / "patches" / index.name / f"{digest}.npy"


def _read_npy(path: Path) -> np.ndarray | None:
    try:
        grid = np.load(path, allow_pickle=False)  # plain arrays only: a cache file can never run code
    except (OSError, ValueError):
        return None
    if grid.ndim != 3 or grid.dtype != np.float16:
        return None
    return grid


def _write_npy(path: Path, grid: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(3)}.tmp.npy")
        np.save(tmp, grid, allow_pickle=False)
        os.replace(tmp, path)  # readers see the old file or the whole new one
    except OSError:
        pass  # a read-only cache folder only costs recomputing next time


def _mutual_pairs(sim: np.ndarray, base_q: np.ndarray, base_m: np.ndarray, share_q: np.ndarray,
                  share_m: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Up to `count` (query patch, item patch) pairs that are each other's nearest, on the objects first.

    `share_*` (P,) say how much of each patch shows the object; pairs need half of each patch on it.
    """
    if count == 0 or not np.isfinite(sim).any():
        return []
    forward = sim.argmax(axis=1)  # (Pq,) each query patch's nearest item patch
    backward = sim.argmax(axis=0)  # (Pm,) each item patch's nearest query patch
    rows = np.flatnonzero((backward[forward] == np.arange(len(forward))) & np.isfinite(sim.max(axis=1)))
    cols = forward[rows]
    # Rank by how much better the pair matches than plain background does: background pairs rank last.
    margin = sim[rows, cols] - np.maximum(base_q[rows], base_m[cols])
    keep = (margin > 0) & (share_q[rows] >= 0.5) & (share_m[cols] >= 0.5)
    rows, cols, margin = rows[keep], cols[keep], margin[keep]
    top = np.argsort(-margin, kind="stable")[:count]
    return [(int(rows[t]), int(cols[t])) for t in top]


# ------------------------------------------------------------------------------- plain backgrounds


def _foreground(image: Image.Image) -> np.ndarray | None:
    """(h, w) bool: True off a plain light background; None when the picture has no such background.

    The background is the light colour that fills most of the picture's outer ring, where it is
    connected to the border (so that white inside an object, an eye or a label, stays object).
    """
    colour = np.array(_background_colour(image), dtype=np.int16)
    px = np.asarray(image, dtype=np.int16)  # (h, w, 3)
    near = np.abs(px - colour).max(axis=-1) <= _BACKGROUND_TOLERANCE  # (h, w)
    ring = np.concatenate([near[0], near[-1], near[:, 0], near[:, -1]])
    if colour.min() < _LIGHT or ring.mean() < 0.5:
        return None  # a photo's scenery, or an object filling the frame: no background to remove
    from scipy import ndimage

    regions, _ = ndimage.label(near)  # (h, w) int: connected areas of background colour
    touching = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    return ~np.isin(regions, touching[touching > 0])


def _foreground_share(image: Image.Image, image_id: tuple[str, ...], view: _View, grid: tuple[int, int],
                      part: Backbone) -> np.ndarray | None:
    """(H, W) share of each patch of the model's input that shows the object, or None (no plain background)."""
    from .images import fit_square

    fit = getattr(part, "fit", "pad")

    def compute() -> np.ndarray | None:
        objects = _foreground(fit_square(image, view.side, fit=fit))  # on what the model saw, S x S
        if objects is None:
            return None
        share = Image.fromarray(objects.astype(np.uint8) * 255).resize(grid[::-1], Image.Resampling.BOX)
        return np.asarray(share, dtype=np.float32) / 255.0

    return _cached((*image_id, "share", view.side, fit, grid), compute)


def _object_share(valid: np.ndarray, share: np.ndarray | None) -> np.ndarray:
    """(H, W) in [0, 1]: how much of each patch shows the picture's object (0 on padding; 1 without a mask)."""
    return valid.astype(np.float32) * (share if share is not None else 1.0)


# ------------------------------------------------------------------------------- geometry and drawing


@dataclass(frozen=True)
class _View:
    """How a picture sits in the model's square input: the part of the picture the model saw, and where.

    `source` is that part in the picture's own pixels (x0, y0, x1, y1); `square` is where it lies in the
    model's S x S input. With `pad`, the whole picture on a white square; with `crop`, the centre square.
    """

    source: tuple[float, float, float, float]
    square: tuple[float, float, float, float]
    side: int

    @classmethod
    def of(cls, image: Image.Image, part: Backbone) -> _View:
        w, h = image.size
        s = part.image_size
        if getattr(part, "fit", "pad") == "crop":
            # Mirrors images.fit_square(fit="crop"): scale the short side to S, cut the centre.
            nw, nh = max(s, round(w * s / min(w, h))), max(s, round(h * s / min(w, h)))
            left, top = (nw - s) // 2, (nh - s) // 2
            fx, fy = w / nw, h / nh
            return cls((left * fx, top * fy, (left + s) * fx, (top + s) * fy), (0.0, 0.0, float(s), float(s)), s)
        # Mirrors images.fit_square(fit="pad"): scale the long side to S, centre on white.
        nw, nh = max(1, round(w * s / max(w, h))), max(1, round(h * s / max(w, h)))
        ox, oy = (s - nw) // 2, (s - nh) // 2
        return cls((0.0, 0.0, float(w), float(h)), (float(ox), float(oy), float(ox + nw), float(oy + nh)), s)

    def valid(self, grid: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: patches that cover some of the picture (not only padding)."""
        gh, gw = grid
        x0, y0, x1, y1 = self.square
        cols = np.arange(gw) * self.side / gw  # left edge of each patch column
        rows = np.arange(gh) * self.side / gh
        in_x = (cols + self.side / gw > x0) & (cols < x1)
        in_y = (rows + self.side / gh > y0) & (rows < y1)
        return in_y[:, None] & in_x[None, :]

    def patch_centre(self, flat: int, grid: tuple[int, int]) -> tuple[float, float]:
        """Centre of patch `flat` (row-major) in the picture's own pixels."""
        gh, gw = grid
        r, c = divmod(flat, gw)
        u, v = (c + 0.5) * self.side / gw, (r + 0.5) * self.side / gh  # in the S x S input
        x0, y0, x1, y1 = self.square
        sx0, sy0, sx1, sy1 = self.source
        return (sx0 + (u - x0) / (x1 - x0) * (sx1 - sx0), sy0 + (v - y0) / (y1 - y0) * (sy1 - sy0))

    def panel_size(self, height: int) -> tuple[int, int]:
        sx0, sy0, sx1, sy1 = self.source
        aspect = (sx1 - sx0) / (sy1 - sy0)
        h = height if aspect <= 2.0 else max(16, round(2.0 * height / aspect))  # very wide: cap the width
        return max(16, round(h * aspect)), h


def _overlay(image: Image.Image, grid_map: np.ndarray, view: _View, height: int, lut: np.ndarray,
             alpha: float, *, mask: tuple[str, ...] | None) -> tuple[Image.Image, np.ndarray]:
    """The picture at panel size with the map upsampled smoothly onto it; returns (panel, (h, w) heat).

    With `mask` (the picture's cache name), the heat is cut to the object where the picture has a
    plain light background.
    """
    w, h = view.panel_size(height)
    src_w = view.source[2] - view.source[0]
    # Pixel art (sprites) stays crisp when enlarged a lot; photos are resampled smoothly.
    resample = Image.Resampling.NEAREST if w >= 3 * src_w else Image.Resampling.LANCZOS
    picture = image.resize((w, h), resample, box=view.source)
    gh, gw = grid_map.shape
    # The map covers the S x S input; `box` picks the picture's part of it, in patch units, so the
    # padding is cut away exactly and the overlay lines up with the picture.
    x0, y0, x1, y1 = view.square
    box = (x0 * gw / view.side, y0 * gh / view.side, x1 * gw / view.side, y1 * gh / view.side)
    heat_img = Image.fromarray(grid_map.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BICUBIC, box=box)
    heat = np.clip(np.asarray(heat_img, dtype=np.float32), 0.0, 1.0)  # (h, w); bicubic may overshoot
    if mask is not None:

        def soft_mask() -> np.ndarray | None:
            objects = _foreground(picture)  # (h, w) bool, or None when the background is not plain
            if objects is None:
                return None
            # A slightly blurred mask gives the overlay soft, anti-aliased edges on the outline.
            soft = Image.fromarray(objects.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1.2))
            return np.asarray(soft, dtype=np.float32) / 255.0  # (h, w) in [0, 1]

        cut = _cached((*mask, "mask", w, h, view.source), soft_mask)
        if cut is not None:
            heat = heat * cut
    level = np.round(heat * 255).astype(np.uint8)  # (h, w)
    colours = Image.fromarray(lut[level])  # (h, w, 3) colour-mapped heat
    # The picture mostly in grey under the heat: its shapes stay readable, the heat's colours stay unmixed.
    picture = Image.blend(picture.convert("L").convert("RGB"), picture, _KEEP_COLOUR)
    # Opacity ramps up from 0.1 to 0.6 of the peak: faint evidence stays transparent, the picture shows through.
    ramp = np.clip((heat - 0.1) / 0.5, 0.0, 1.0)  # (h, w)
    weight = Image.fromarray(np.round(ramp * alpha * 255).astype(np.uint8), mode="L")
    return Image.composite(colours, picture, weight), heat


@functools.lru_cache(maxsize=8)
def _colour_table(cmap: str) -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colour map."""
    from matplotlib import colormaps

    try:
        table = colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3]
    except KeyError:
        raise RecommenderError(f"unknown colour map {cmap!r} (try inferno, viridis, magma, turbo)") from None
    return np.round(table * 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _compose(q_panel: Image.Image, m_panel: Image.Image, pairs: list[PatchPair], q_size: tuple[int, int],
             m_size: tuple[int, int], lut: np.ndarray, q_title: str, m_title: str, backbone_name: str) -> Image.Image:
    """query | match side by side, titles above, mutual pairs as lines, a legend below."""
    gap, top, bottom, margin = 24, 26, 44, 8
    width = margin * 2 + q_panel.width + gap + m_panel.width
    width = max(width, 440)  # room for the legend
    height = top + max(q_panel.height, m_panel.height) + bottom
    canvas = Image.new("RGB", (width, height), "white")
    qx, mx = margin, margin + q_panel.width + gap
    canvas.paste(q_panel, (qx, top))
    canvas.paste(m_panel, (mx, top))
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(11)
    draw.text((qx, 5), q_title, fill="black", font=font)
    draw.text((mx, 5), m_title, fill="black", font=font)

    def to_canvas(xy: tuple[float, float], size: tuple[int, int], panel: Image.Image, x: int) -> tuple[float, float]:
        return (x + xy[0] * panel.width / size[0], top + xy[1] * panel.height / size[1])

    for n, p in enumerate(pairs):
        colour = _PAIR_COLOURS[n % len(_PAIR_COLOURS)]
        a = to_canvas(p.query_xy, q_size, q_panel, qx)
        b = to_canvas(p.match_xy, m_size, m_panel, mx)
        draw.line([a, b], fill=(255, 255, 255), width=4)  # a white halo keeps lines visible on any picture
        draw.line([a, b], fill=colour, width=2)
        for x, y in (a, b):
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour, outline="white", width=1)

    # Legend: colour bar from "weak" to "strong", and what the lines are.
    y = top + max(q_panel.height, m_panel.height) + 8
    bar = np.repeat(lut[None, :, :], 10, axis=0)  # (10, 256, 3)
    canvas.paste(Image.fromarray(bar).resize((120, 10)), (margin + 44, y + 3))
    draw.text((margin, y), "weak", fill="black", font=small)
    draw.text((margin + 170, y), "strong match (beyond plain background)", fill="black", font=small)
    note = f"lines: mutually closest patches · {backbone_name}" if pairs else f"{backbone_name} patch features"
    draw.text((margin, y + 18), note, fill=(80, 80, 80), font=small)
    return canvas


def _save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return _write_bytes(buf.getvalue(), path)


def _write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    target = Path(path)
    if not target.parent.is_dir():
        raise RecommenderError(f"cannot write {target}: folder {target.parent} does not exist")
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise RecommenderError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
