"""Catalog adaptation: a light head on the frozen backbone, learnt contrastively from the catalog's own pictures.

`adapt_index` makes augmented views of every catalog picture (the ways queries differ from the
catalog: recoloured palettes, mirror images, crops and small rotations, another scale or
background, blur, pixel-art rendering), embeds them with the index's backbone, and trains an
`AdapterHead` so that each view lands nearest its own picture and, in a labeled catalog, the
pictures of its label (same label = positive; unlabeled catalogs use only the augmentations).
The adapted index holds the head's image of the stored vectors, a new calibration, and the head
as a safetensors file; `Index.backbone()` passes every query through the same head. Nothing but
the catalog's own pictures is seen: held-out or evaluation pictures never are.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .backbones import Backbone
from .backbones.adapted import Adapted, AdapterHead
from .calibration import calibrate
from .errors import BuildStopped, RecommenderError
from .images import load_image
from .index import BuildStats, Index, check_name, index_folder, write_index

DEFAULT_EPOCHS = 30
DEFAULT_VIEWS = 2
DEFAULT_RANK = 256
#: Views embedded at a time (the pictures of a batch are held in memory as PIL images).
_CHUNK = 64
Progress = Callable[[float, str], None]
#: Why the work must stop now (its client went away, its time ran out), or None to go on.
StopCheck = Callable[[], str | None]


def _check(should_stop: StopCheck | None) -> None:
    if should_stop is not None and (reason := should_stop()):
        raise BuildStopped(reason)


@dataclass(frozen=True)
class AdaptReport:
    """What `adapt_index` did: how many views it learnt from and how long each step took."""

    name: str
    source: str
    pictures: int
    views: int
    epochs: int
    rank: int
    loss_first: float
    loss_last: float
    embed_seconds: float
    train_seconds: float
    threshold: float

    def summary(self) -> str:
        return (
            f"adapted {self.source!r} -> {self.name!r}: {self.pictures} pictures x {self.views} views, "
            f"{self.epochs} epochs (loss {self.loss_first:.3f} -> {self.loss_last:.3f}); embedding the views "
            f"{self.embed_seconds:.0f} s, training {self.train_seconds:.0f} s; threshold {self.threshold:.3f}"
        )


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random view of a catalog picture, mimicking how a query differs from it (RGB in, RGB out)."""
    img = image.convert("RGB")
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    if rng.random() < 0.6:
        img = _recolour(img, rng)
    if rng.random() < 0.5:  # a pose-like change: part of the picture, slightly turned
        w, h = img.size
        f = rng.uniform(0.75, 1.0)
        cw, ch = max(1, int(w * f)), max(1, int(h * f))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.4:
        img = img.rotate(
            float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255,) * 3
        )
    if rng.random() < 0.3:  # smaller in its square: a margin around it
        pad = int(max(img.size) * rng.uniform(0.1, 0.5))
        img = ImageOps.expand(img, border=pad, fill=(255, 255, 255))
    if rng.random() < 0.2:
        img = _background(img, rng)
    if rng.random() < 0.25:  # rendered as pixel art: shrunk, then blown up without smoothing
        side = int(rng.integers(32, 72))
        small = img.copy()
        small.thumbnail((side, side), Image.Resampling.BILINEAR)
        img = small.resize(img.size, Image.Resampling.NEAREST)
    elif rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return img


def _recolour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A hue rotation (a shiny variant's new palette) or a swap of colour channels, background kept white."""
    if rng.random() < 0.7:
        hsv = np.asarray(img.convert("HSV"), dtype=np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(20, 236))) % 256
        return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    px = np.asarray(img)
    return Image.fromarray(np.ascontiguousarray(px[..., rng.permutation(3)]))


def _background(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Near-white background pixels replaced by a light colour."""
    px = np.asarray(img).copy()
    mask = (px > 245).all(axis=-1)
    px[mask] = rng.integers(150, 256, size=3)
    return Image.fromarray(px)


def embed_views(
    paths: list[Path],
    backbone: Backbone,
    *,
    views: int,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: StopCheck | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(M, D) vectors of `views` augmented views of each picture, and (M,) the picture each view is of.

    Pictures that cannot be read are left out (the plain index has skipped them already).
    `should_stop` is asked after each batch; a reason raises `BuildStopped`.
    """
    rng = np.random.default_rng(seed)
    vectors: list[np.ndarray] = []
    rows: list[int] = []
    pending: list[tuple[int, Image.Image]] = []
    for i, path in enumerate(paths):
        try:
            image = load_image(path, max_side=512)
        except RecommenderError:
            continue
        pending.extend((i, augment(image, rng)) for _ in range(views))
        if len(pending) >= _CHUNK or i == len(paths) - 1:
            vectors.append(backbone.embed([img for _, img in pending]))
            rows.extend(row for row, _ in pending)
            pending.clear()
            _check(should_stop)
            if progress:
                progress((i + 1) / len(paths), f"embedding augmented views: {i + 1}/{len(paths)} pictures")
    if pending:
        vectors.append(backbone.embed([img for _, img in pending]))
        rows.extend(row for row, _ in pending)
    if not vectors:
        raise RecommenderError("none of the catalog's pictures could be read, so there is nothing to adapt to")
    return np.concatenate(vectors), np.asarray(rows, dtype=np.int64)


def train_head(  # noqa: PLR0913 (keyword-only training options)
    anchors: np.ndarray,
    views: np.ndarray,
    view_rows: np.ndarray,
    codes: np.ndarray,
    *,
    epochs: int = DEFAULT_EPOCHS,
    rank: int = DEFAULT_RANK,
    temperature: float = 0.05,
    weight_decay: float = 1e-2,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: StopCheck | None = None,
) -> tuple[AdapterHead, list[float]]:
    """Learn the residual head from (N, D) catalog vectors and (M, D) views of them.

    Each view (and each catalog picture, leaving itself out) is a query against all N adapted
    catalog vectors; the positives are its own picture and, where `codes` (N,) >= 0, every picture
    of the same label: a supervised InfoNCE loss at `temperature`. Weight decay keeps the head
    near the identity it starts as. Returns the head and the mean loss of each epoch.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    x0 = torch.from_numpy(np.asarray(anchors, dtype=np.float32))  # (N, D)
    xv = torch.from_numpy(np.asarray(views, dtype=np.float32))  # (M, D)
    n, d = x0.shape
    codes_t = torch.from_numpy(np.asarray(codes, dtype=np.int64))
    # own picture, or same label: (N, N) positives among catalog pictures
    same = (codes_t[:, None] == codes_t[None, :]) & (codes_t[:, None] >= 0)
    same |= torch.eye(n, dtype=torch.bool)
    queries = torch.cat([xv, x0])  # (M + N, D)
    query_rows = torch.cat([torch.from_numpy(view_rows), torch.arange(n)])
    is_anchor = torch.cat([torch.zeros(len(xv), dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    r = min(rank, d)
    U = torch.nn.Parameter(torch.randn(d, r, generator=gen) / d**0.5)
    c = torch.nn.Parameter(torch.zeros(r))
    V = torch.nn.Parameter(torch.zeros(r, d))
    optim = torch.optim.AdamW([U, c, V], lr=1e-3, weight_decay=weight_decay)

    def head(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x + torch.nn.functional.gelu(x @ U + c, approximate="tanh") @ V, dim=1)

    losses: list[float] = []
    batch = 256
    for epoch in range(epochs):
        order = torch.randperm(len(queries), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch):
            pick = order[start : start + batch]
            keys = head(x0)  # (N, D): the catalog as the index will hold it
            logits = head(queries[pick]) @ keys.T / temperature  # (B, N)
            rows = query_rows[pick]
            positive = same[rows].clone()  # (B, N)
            own = torch.zeros_like(positive)
            own[torch.arange(len(pick)), rows] = True
            # a catalog picture queries the others: itself is neither positive nor in the denominator
            own &= is_anchor[pick][:, None]
            logits = logits.masked_fill(own, float("-inf"))
            positive &= ~own
            has = positive.any(dim=1)
            if not has.any():
                continue
            loss = (
                torch.logsumexp(logits[has], dim=1)
                - torch.logsumexp(logits[has].masked_fill(~positive[has], float("-inf")), dim=1)
            ).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += float(loss.detach()) * len(pick)
        losses.append(total / len(queries))
        _check(should_stop)
        if progress:
            progress((epoch + 1) / epochs, f"training the head: epoch {epoch + 1}/{epochs}, loss {losses[-1]:.3f}")
    with torch.no_grad():
        return AdapterHead(U.detach().numpy().copy(), c.detach().numpy().copy(), V.detach().numpy().copy()), losses


def adapt_index(  # keyword-only options of a public call
    name: str,
    *,
    out: str | None = None,
    epochs: int = DEFAULT_EPOCHS,
    views: int = DEFAULT_VIEWS,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    index_dir: str | Path | None = None,
    progress: Progress | None = None,
    should_stop: StopCheck | None = None,
) -> AdaptReport:
    """Adapt the index `name` to its own catalog and write the result as the index `out` (default `NAME-adapted`).

    The plain index is left as it is. Raises `RecommenderError` for an index that is adapted
    already (adapt the plain one again instead) or whose pictures cannot be read.
    """
    if epochs < 1 or views < 1 or rank < 1:
        raise RecommenderError(f"--epochs, views and rank must be at least 1, not {epochs}, {views}, {rank}")
    index = Index.load(name, index_dir=index_dir)
    if index.manifest.adapter is not None:
        raise RecommenderError(f"index {name!r} is adapted already; adapt the index it was made from instead")
    target = check_name(out or f"{index.name}-adapted")
    if target == index.name:
        raise RecommenderError("the adapted index needs a name of its own (--out); the plain one is kept")
    base = index.backbone()
    items = index.items
    started = time.perf_counter()
    view_vectors, view_rows = embed_views(
        [index.path_of(item) for item in items],
        base,
        views=views,
        seed=seed,
        progress=progress,
        should_stop=should_stop,
    )
    embedded = time.perf_counter()
    anchors = np.asarray(index.embeddings, dtype=np.float32)  # (N, D)
    head, losses = train_head(
        anchors,
        view_vectors,
        view_rows,
        index.label_codes,
        epochs=epochs,
        rank=rank,
        seed=seed,
        progress=progress,
        should_stop=should_stop,
    )
    trained = time.perf_counter()
    vectors = head.apply(anchors)
    calibration = calibrate(vectors, [item.label for item in items], prior=base.threshold_prior)
    adapted = Adapted(base, head, digest=hashlib.sha256(head.to_bytes()).hexdigest())
    notes = {"from": index.name, "epochs": epochs, "views": views, "seconds": round(trained - started, 1)}
    write_index(
        index_folder(target, index_dir),
        embeddings=vectors,
        items=items,
        backbone=adapted,
        catalog=index.manifest.catalog,
        dtype=index.manifest.dtype,
        stats=BuildStats(
            embedded=len(view_rows), seconds=trained - started, precision=base.precision, forward=adapted.forward
        ),
        calibration=calibration,
        adapted=notes,
    )
    return AdaptReport(
        name=target,
        source=index.name,
        pictures=len(items),
        views=views,
        epochs=epochs,
        rank=head.rank,
        loss_first=losses[0] if losses else float("nan"),
        loss_last=losses[-1] if losses else float("nan"),
        embed_seconds=embedded - started,
        train_seconds=trained - embedded,
        threshold=calibration.threshold,
    )
