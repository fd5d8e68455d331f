"""Building and updating an index from a catalog: read, hash, decode, embed in batches, write atomically.

Kept apart from `index` (the storage format) because this is the long-running pipeline with its
own concerns: reading pictures in parallel with the model, progress, incremental re-use of
unchanged pictures, resuming an interrupted build (`checkpoint`), running on Ray (`distributed`),
and a report of everything skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import settings
from .backbones import Backbone, load_backbone
from .calibration import calibrate
from .catalog import Catalog, Item, Skip, read_catalog
from .checkpoint import CHECKPOINT_SECONDS, Checkpoint
from .errors import BuildStopped, CatalogError, ImageError, RecommenderError
from .images import DECODE_MAX_SIDE, Fit, load_image, read_bytes
from .index import BuildStats, CatalogInfo, Index, StoreConfig, index_folder, write_index

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BuildReport:
    """What a build did: counts, timings and every item skipped with its reason."""

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

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Read:
    """One catalog item after reading: its hash, and either prepared pixels or the reason it failed."""

    item: Item
    prepared: Any = None
    error: str | None = None


def build_index(
    source: str | os.PathLike | Catalog,
    *,
    name: str,
    backbone: Backbone | None = None,
    model: str | None = None,
    weights: Sequence[float] | str | None = None,
    pooling: str = "cls",
    image_size: int = 224,
    fit: str = "pad",
    limit: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    index_dir: str | Path | None = None,
    dtype: str = "float16",
    domain: str | None = None,
    fingerprint: str | None = None,
    reuse: Mapping[str, np.ndarray] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    store: StoreConfig | str | None = None,
    ray: bool | str = False,
    actors: int | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    should_stop: Callable[[], str | None] | None = None,
    threads: int | None = None,
) -> BuildReport:
    """Index a catalog (folder or CSV) under `name`, re-using embeddings of unchanged pictures.

    Pictures that cannot be read are skipped and reported, never fatal; a catalog with nothing
    usable raises `CatalogError`. The index is written atomically: a crash leaves the previous one.
    An interrupted build is resumed by the next one: what it embedded is checkpointed at least
    every `checkpoint_seconds` (see `checkpoint`). `domain` names what the items are (e.g.
    "Pokémon") for answers and web searches; `fingerprint` records the identity of the source, so
    that callers can tell when it changed. `reuse` maps content hashes to vectors already computed
    with exactly this backbone elsewhere (e.g. a hybrid assembled from its parts' indexes); they
    are taken as they are, not embedded again. `store` says where the vectors go (see
    `store.StoreConfig`; default `RECOMMENDER_STORE`, else local files). `ray` embeds on Ray Data:
    True for a local Ray (or the cluster in RAY_ADDRESS), or a cluster's address; `actors` model
    replicas there.

    Bounds for builds that strangers start (the app's uploads): `should_stop` is asked before each
    picture (so at least between batches); when it answers, its answer (why) is raised as
    `BuildStopped`, nothing is written and the checkpoint is kept. `threads` caps the torch threads
    this build embeds with (in the calling thread only, restored after), so that other work in the
    process keeps some CPU; pass `workers` too for the reading threads.
    """
    folder = index_folder(name, index_dir)
    config = StoreConfig.parse(store if store is not None else settings.store())  # a bad --store fails first
    catalog = source if isinstance(source, Catalog) else read_catalog(
        source, limit=limit, image_column=image_column, label_column=label_column)
    if backbone is None:
        backbone = load_backbone(model, weights=weights, pooling=pooling, image_size=image_size, fit=fit)
    notes: list[str] = []
    own = _previous_vectors(folder, backbone, dtype, notes)
    previous = {**(reuse or {}), **own}
    checkpoint = Checkpoint(folder, backbone, dtype, seconds=checkpoint_seconds)
    resumable = {h: v for h, v in checkpoint.load().items() if h not in previous}
    if resumable:
        notes.append(f"resuming an interrupted build: {len(resumable)} pictures it embedded are re-used")
    started = time.perf_counter()  # images/s counts reading and embedding, not loading the model
    options = dict(previous=previous | resumable, dedupe=True, batch_size=batch_size, progress=progress,
                   desc=f"indexing {name}", on_embedded=checkpoint.add)
    try:
        if ray and should_stop is not None:
            raise RecommenderError("a build on Ray cannot be bounded by should_stop; build locally")
        if ray:
            from .distributed import embed_items_ray

            embedded = embed_items_ray(catalog.items, catalog.root, backbone, address=ray if isinstance(ray, str)
                                       else None, actors=actors, **options)
        else:
            with torch_threads(threads):
                embedded = embed_items(catalog.items, catalog.root, backbone, workers=workers,
                                       should_stop=should_stop, **options)
    finally:
        checkpoint.flush()  # interrupted or not: what was embedded survives until the index is committed
    items, skipped = embedded.items, catalog.skipped + embedded.skipped
    if not items:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise CatalogError(f"{catalog.source}: none of its {len(catalog.items)} pictures could be read{first}")
    matrix = embedded.vectors  # (N, D)
    removed = len(set(own) - {item.sha256 for item in items}) if own else 0
    seconds = time.perf_counter() - started
    catalog_info = CatalogInfo(
        source=str(Path(catalog.source).resolve()), root=str(catalog.root), kind=catalog.kind,
        labeled=any(item.label is not None for item in items),
        labels=len({item.label for item in items if item.label is not None}), columns=catalog.columns, limit=limit,
        domain=domain, fingerprint=fingerprint)
    resumed = sum(item.sha256 in resumable for item in items)
    stats = BuildStats(embedded=embedded.embedded, reused=embedded.reused, resumed=resumed, skipped=len(skipped),
                       removed=removed, seconds=seconds, precision=backbone.precision, ray=bool(ray),
                       forward=backbone.forward)
    # Calibrated on the stored precision, so that the threshold matches the scores searches will see.
    stored = matrix.astype(np.float16 if dtype == "float16" else np.float32)
    calibration = calibrate(stored, [item.label for item in items])
    write_index(folder, embeddings=matrix, items=items, backbone=backbone, catalog=catalog_info, dtype=dtype,
                stats=stats, calibration=calibration, store=config)
    checkpoint.clear()  # committed: a crash before this line only leaves shards that the next build re-uses
    return BuildReport(name=name, folder=folder, count=len(items), embedded=embedded.embedded, reused=embedded.reused,
                       skipped=skipped, removed=removed, seconds=seconds, notes=notes, resumed=resumed,
                       store=str(config))


@dataclass
class Embedded:
    """Items that could be read (with their content hashes), their (N, D) vectors, and the ones skipped."""

    items: list[Item]
    vectors: np.ndarray
    skipped: list[Skip]
    embedded: int
    reused: int


def embed_items(
    items: Sequence[Item],
    root: Path,
    backbone: Backbone,
    *,
    previous: dict[str, np.ndarray] | None = None,
    dedupe: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "embedding",
    on_embedded: Callable[[list[str], np.ndarray], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
) -> Embedded:
    """Read, hash, decode and embed catalog pictures in batches; unreadable ones are skipped with a reason.

    Pictures are read and prepared in worker threads while the model embeds the previous batch.
    `previous` maps content hashes to vectors that need no embedding again; `dedupe` skips
    pictures whose bytes repeat an earlier item's; `on_embedded` receives the content hashes and
    (B, D) vectors of each batch embedded (a checkpoint). `should_stop` is asked before each
    picture; what it answers (why to stop) is raised as `BuildStopped`.
    """
    previous = previous or {}
    reads = _map_ordered(lambda item: _read(item, root, backbone.prepare, previous, backbone.decode_size), items,
                         workers=workers or min(8, (os.cpu_count() or 2) * 2))
    kept: list[Item] = []
    vectors: list[np.ndarray] = []
    pending: list[tuple[int, Any, str]] = []  # (position in `vectors`, prepared pixels, content hash)
    skipped: list[Skip] = []
    seen: dict[str, str] = {}
    counts = {"embedded": 0, "reused": 0}
    size = batch_size or backbone.batch_size

    def flush() -> None:
        if pending:
            out = backbone.embed_prepared([p for _, p, _ in pending])  # (B, D)
            for (slot, _, _), vec in zip(pending, out):
                vectors[slot] = vec
            counts["embedded"] += len(pending)
            if on_embedded is not None:
                on_embedded([h for _, _, h in pending], out)
            pending.clear()

    bar = _progress(len(items), desc, enabled=progress)
    try:
        for read in reads:
            if should_stop is not None and (reason := should_stop()):
                raise BuildStopped(reason)
            bar.update(1)
            item = read.item
            if read.error:
                skipped.append(Skip(item.path, read.error))
                continue
            assert item.sha256 is not None
            if dedupe and item.sha256 in seen:
                skipped.append(Skip(item.path, f"same picture as {seen[item.sha256]}"))
                continue
            seen.setdefault(item.sha256, item.path)
            kept.append(item)
            if read.prepared is None:
                vectors.append(previous[item.sha256])
                counts["reused"] += 1
                continue
            vectors.append(np.empty(0, dtype=np.float32))  # filled by flush()
            pending.append((len(vectors) - 1, read.prepared, item.sha256))
            if len(pending) >= size:
                flush()
        flush()
    finally:
        bar.close()
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, backbone.dim), np.float32)
    return Embedded(items=kept, vectors=matrix, skipped=skipped, **counts)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with at most `count` torch threads in this thread, then restore the number before.

    OpenMP keeps the number per thread: a build capped in a server's worker thread leaves the
    searches in the other threads their full count.
    """
    if not count:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(count, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    return {item.sha256: np.asarray(old.embeddings[i], dtype=np.float32)
            for i, item in enumerate(old.items) if item.sha256}


def _read(item: Item, root: Path, prepare: Callable[[Any], Any], previous: Container[str],
          fit_to: tuple[int, Fit] | None) -> _Read:
    """Hash the file and, unless an unchanged copy is already embedded, decode (no larger than
    `fit_to` needs) and `prepare` it."""
    path = root / item.path
    try:
        data = read_bytes(path, name=item.path)
        digest = hashlib.sha256(data).hexdigest()
        hashed = replace(item, sha256=digest)
        if digest in previous:
            return _Read(hashed)
        image = load_image(data, name=item.path, max_side=DECODE_MAX_SIDE, fit_to=fit_to)
        return _Read(hashed, prepared=prepare(image))
    except ImageError as exc:
        reason = str(exc).removeprefix(f"{item.path}: ")
        return _Read(item, error=reason)
    except RecommenderError as exc:
        return _Read(item, error=str(exc))


def _map_ordered(fn: Callable[[T], R], values: Sequence[T], *, workers: int) -> Iterator[R]:
    """`map` on a thread pool, results in input order, at most a few batches ahead of the consumer."""
    if workers <= 1:
        yield from map(fn, values)
        return
    ahead = workers * 4
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recommender-read") as pool:
        futures = [pool.submit(fn, v) for v in values[:ahead]]
        next_index = len(futures)
        position = 0
        while position < len(futures):
            yield futures[position].result()
            futures[position] = None  # type: ignore[call-overload]  # free the result
            position += 1
            if next_index < len(values):
                futures.append(pool.submit(fn, values[next_index]))
                next_index += 1


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, *, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    # In a log file (a Space's build log, CI) a line every 10 s is plenty; on a terminal, redraw smoothly.
    interval = 0.2 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=True, mininterval=interval)

