"""Where two pictures match: per-patch overlays of a query and a catalog item, and mutually closest patches."""

from __future__ import annotations

import functools
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .. import settings
from ..backbones import Backbone
from ..catalog import Item
from ..errors import ModelError, RecommenderError
from ..files import save_png, write_cache
from ..images import DECODE_MAX_SIDE, ImageSource, fit_square, load_image, placement
from ..index import Index, Match
from ..runtime import ByteLRU, Runtime, default_runtime
from .matrix import tick_label

# Patches with at least this share of object set the overlay's scale.
_ON_OBJECT = 0.25
# Under the overlay the picture keeps this much of its colour, so that the heat's colours read clearly.
_KEEP_COLOUR = 0.35
# Pair lines and dots: a qualitative palette, so that each pair can be followed across (no grey, no yellow).
_PAIR_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
)
# A plain background: pixels within this of its colour (per channel, 0-255), a colour at least this light.
_BACKGROUND_TOLERANCE = 24
_LIGHT = 200
# The largest model input any backbone accepts, for `detail`'s enlarged pictures.
_MAX_INPUT = 1036


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
        return save_png(self.image, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no pictures): the item, scores and the pairs in picture pixels."""
        return {
            "rank": self.rank,
            "id": self.item.id if self.item else None,
            "label": self.item.label if self.item else None,
            "score": None if self.score is None else round(self.score, 6),
            "peak": round(self.peak, 6),
            "pairs": [
                {
                    "query_xy": [round(v, 1) for v in p.query_xy],
                    "match_xy": [round(v, 1) for v in p.match_xy],
                    "similarity": round(p.similarity, 4),
                }
                for p in self.pairs
            ],
        }


def explain(  # noqa: PLR0913  # keyword-only options of a public call
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
    runtime: Runtime | None = None,
    out: str | os.PathLike | None = None,
) -> Explanation:
    """Overlays showing which regions of `query` and of a catalog `item` (an Item, a Match or an id) match.

    Per patch of each picture: its best cosine match among the other picture's patches, minus its
    best match in a plain picture of the background colour, so that two white backgrounds do not
    count as a match. Patch features of catalog items are computed on demand and cached in memory and
    (unless `disk_cache=False`) as .npy files in the cache folder; the query's are cached in memory.
    `pairs` mutually nearest patch pairs are drawn as lines; `size` is the height of each panel.
    `detail` runs the model on pictures that many times larger for a finer grid (features for the
    overlays only; the search is unchanged): by default the backbone's `explain_detail`, 2 for the CNN,
    whose 7 x 7 grid is too coarse to tell parts apart (about 3x the time), and 1 for DINOv2 (16 x 16
    patches at 224 px). Features and finer backbones are kept in `runtime` (default: the process's).
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
    runtime = runtime or default_runtime()
    if backbone is None:
        backbone = index.backbone(runtime=runtime)
    else:
        index.check_backbone(backbone)
    spatial = backbone.spatial_part
    if spatial is None:
        raise ModelError(
            f"{backbone.name} has no spatial features, so it cannot show where two pictures match; "
            "use an index built with a DINOv2 or CNN backbone (e.g. --model efficientnet-lite0)"
        )
    part = _finer(spatial, detail, runtime)
    cache = runtime.patches

    query_img = load_image(query, max_side=DECODE_MAX_SIDE)
    match_img = load_image(index.path_of(item), name=item.path, max_side=DECODE_MAX_SIDE)
    # Names of the two pictures for the caches: the query by its pixels, the item by its file's sha256.
    q_id = ("pixels", _pixels_key(query_img))
    m_id = ("item", index.name, _item_key(index, item))
    fq, fm, ref = _features(part, index, item, query_img, match_img, q_id, m_id, cache, disk_cache=disk_cache)

    q_view, m_view = _View.of(query_img, part), _View.of(match_img, part)
    q_valid, m_valid = q_view.valid(fq.shape[:2]), m_view.valid(fm.shape[:2])  # (Hq, Wq), (Hm, Wm) bool
    # (Hq, Wq), (Hm, Wm) share of each patch that shows the object; all ones unless the background is plain
    q_fg = _foreground_share(query_img, q_id, q_view, fq.shape[:2], part, cache) if mask_background else None
    m_fg = _foreground_share(match_img, m_id, m_view, fm.shape[:2], part, cache) if mask_background else None
    q_share = _object_share(q_valid, q_fg).ravel()  # (Pq,) in [0, 1]: 0 on padding and plain background
    m_share = _object_share(m_valid, m_fg).ravel()  # (Pm,)

    matched = _Matched.of(fq, fm, ref, q_valid, m_valid, q_share, m_share)
    q_map, m_map, peak, sim = matched.q_map, matched.m_map, matched.peak, matched.sim
    found = _mutual_pairs(sim, matched.base_q, matched.base_m, q_share, m_share, pairs)
    pair_list = [
        PatchPair(
            query_xy=q_view.patch_centre(i, fq.shape[:2]),
            match_xy=m_view.patch_centre(j, fm.shape[:2]),
            similarity=float(sim[i, j]),
        )
        for i, j in found
    ]

    lut = _colour_table(cmap)
    q_panel, q_heat = _overlay(
        query_img, q_map, q_view, size, lut, alpha, cache, mask=q_id if mask_background else None
    )
    m_panel, m_heat = _overlay(
        match_img, m_map, m_view, size, lut, alpha, cache, mask=m_id if mask_background else None
    )
    title = f"#{rank} " if rank else ""
    title += tick_label(item, 40) + (f"   cosine {score:.3f}" if score is not None else "")
    image = _compose(
        q_panel, m_panel, pair_list, query_img.size, match_img.size, lut, "query", title, Path(part.name).name
    )  # a model folder's path would crowd the legend
    result = Explanation(
        image=image,
        query_overlay=q_panel,
        match_overlay=m_panel,
        query_map=q_map,
        match_map=m_map,
        query_heat=q_heat,
        match_heat=m_heat,
        peak=peak,
        pairs=pair_list,
        item=item,
        rank=rank,
        score=score,
    )
    if out is not None:
        result.save(out)
    return result


@dataclass(frozen=True)
class _Matched:
    """How well each patch of either picture is matched in the other, beyond a plain background."""

    sim: np.ndarray  # (Pq, Pm) patch-to-patch cosines, -inf on padding
    base_q: np.ndarray  # (Pq,) how well a plain background explains each query patch
    base_m: np.ndarray  # (Pm,)
    q_map: np.ndarray  # (Hq, Wq) float32 in [0, 1]: gain over background, on the shared scale
    m_map: np.ndarray  # (Hm, Wm)
    peak: float  # the gain that 1 stands for: the best on the objects

    @classmethod
    def of(
        cls,
        fq: np.ndarray,
        fm: np.ndarray,
        ref: np.ndarray,
        q_valid: np.ndarray,
        m_valid: np.ndarray,
        q_share: np.ndarray,
        m_share: np.ndarray,
    ) -> _Matched:
        a = fq.reshape(-1, fq.shape[-1])  # (Pq, C) unit rows
        b = fm.reshape(-1, fm.shape[-1])  # (Pm, C)
        sim = np.clip(a @ b.T, -1.0, 1.0)  # (Pq, Pm) patch-to-patch cosines (float16 storage can overshoot 1)
        sim[~q_valid.ravel(), :] = -np.inf  # padding is not part of either picture
        sim[:, ~m_valid.ravel()] = -np.inf
        best_q, best_m = sim.max(axis=1), sim.max(axis=0)  # (Pq,), (Pm,)
        base_q = (a @ ref.T).max(axis=1)  # (Pq,)
        base_m = (b @ ref.T).max(axis=1)  # (Pm,)
        gain_q = np.where(q_valid.ravel(), np.clip(best_q - base_q, 0.0, None), 0.0)
        gain_m = np.where(m_valid.ravel(), np.clip(best_m - base_m, 0.0, None), 0.0)
        # The scale is set on the objects, so that a stray background patch cannot wash the overlays out.
        peak = float(
            max(gain_q[q_share >= _ON_OBJECT].max(initial=0.0), gain_m[m_share >= _ON_OBJECT].max(initial=0.0))
        )
        scale = peak if peak > 1e-6 else 1.0
        q_map = np.clip(gain_q / scale, 0.0, 1.0).reshape(fq.shape[:2]).astype(np.float32)
        m_map = np.clip(gain_m / scale, 0.0, 1.0).reshape(fm.shape[:2]).astype(np.float32)
        return cls(sim, base_q, base_m, q_map, m_map, peak)


def _finer(part: Backbone, detail: int | None, runtime: Runtime) -> Backbone:
    """`part` run on `detail` times larger pictures (the same weights), for finer overlays."""
    detail = part.explain_detail if detail is None else detail
    while detail > 1 and part.image_size * detail > _MAX_INPUT:
        detail -= 1
    if detail == 1:
        return part
    size = part.image_size * detail  # still a multiple of the patch size (14) or the CNN's stride (32)
    # Built from the spec, so that the weights (hence the identity) are the index's own.
    return runtime.backbone(part.spec.replace(image_size=size), device=part.device, revision=part.revisions)


# ------------------------------------------------------------------------------- features and caches


def _part_key(part: Backbone) -> str:
    """What the patch features depend on: the weights and the input geometry (and precision, when set)."""
    return f"{part.identity}|{part.image_size}|{part.fit}|{part.precision}"


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


def _features(
    part: Backbone,
    index: Index,
    item: Item,
    query: Image.Image,
    match: Image.Image,
    q_id: tuple[str, ...],
    m_id: tuple[str, ...],
    cache: ByteLRU,
    *,
    disk_cache: bool,
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
    found = {name: cache.get(key) for name, key in keys.items()}
    disk_path = _disk_path(index, item, pkey) if disk_cache else None
    if found["item"] is None and disk_path is not None:
        found["item"] = _read_npy(disk_path)
        if found["item"] is not None:
            cache.put(keys["item"], found["item"])
    missing = [name for name, value in found.items() if value is None]
    if missing:
        side = part.image_size
        pictures = {"query": query, "item": match} | {c: Image.new("RGB", (side, side), c) for c in colours}
        grids = part.patch_features([pictures[name] for name in missing])  # (n, H, W, C) unit rows
        for name, grid in zip(missing, grids):
            found[name] = grid.astype(np.float16)
            cache.put(keys[name], found[name])
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
    buffer = io.BytesIO()
    np.save(buffer, grid, allow_pickle=False)
    write_cache(path, buffer.getvalue())  # readers see the old file or the whole new one


def _mutual_pairs(
    sim: np.ndarray, base_q: np.ndarray, base_m: np.ndarray, share_q: np.ndarray, share_m: np.ndarray, count: int
) -> list[tuple[int, int]]:
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


def _foreground_share(
    image: Image.Image, image_id: tuple[str, ...], view: _View, grid: tuple[int, int], part: Backbone, cache: ByteLRU
) -> np.ndarray | None:
    """(H, W) share of each patch of the model's input that shows the object, or None (no plain background)."""
    fit = part.fit

    def compute() -> np.ndarray | None:
        objects = _foreground(fit_square(image, view.side, fit=fit))  # on what the model saw, S x S
        if objects is None:
            return None
        share = Image.fromarray(objects.astype(np.uint8) * 255).resize(grid[::-1], Image.Resampling.BOX)
        return np.asarray(share, dtype=np.float32) / 255.0

    return cache.get_or_compute((*image_id, "share", view.side, fit, grid), compute)


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
        where = placement(w, h, s, part.fit)  # as `fit_square` places the picture
        (nw, nh), (ox, oy) = where.resized, where.offset
        if part.fit == "crop":  # the square cuts the centre out of the resized picture
            fx, fy = w / nw, h / nh
            return cls((-ox * fx, -oy * fy, (s - ox) * fx, (s - oy) * fy), (0.0, 0.0, float(s), float(s)), s)
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


def _overlay(
    image: Image.Image,
    grid_map: np.ndarray,
    view: _View,
    height: int,
    lut: np.ndarray,
    alpha: float,
    cache: ByteLRU,
    *,
    mask: tuple[str, ...] | None,
) -> tuple[Image.Image, np.ndarray]:
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

        cut = cache.get_or_compute((*mask, "mask", w, h, view.source), soft_mask)
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


def _compose(
    q_panel: Image.Image,
    m_panel: Image.Image,
    pairs: list[PatchPair],
    q_size: tuple[int, int],
    m_size: tuple[int, int],
    lut: np.ndarray,
    q_title: str,
    m_title: str,
    backbone_name: str,
) -> Image.Image:
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
