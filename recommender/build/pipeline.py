"""The one embedding pipeline: read, hash, decode, embed, assemble, behind a local or a Ray executor.

An executor turns catalog items into `Outcome`s, one per item (its content hash, and a fresh
vector, or the reason it could not be read, or nothing when its vector is already known); how it
spreads the work (threads here, tasks and model actors on Ray) is its own business. `assemble`
then does what every build needs, in catalog order: skip what could not be read, collapse pictures
repeated under one label, take known vectors, and count. The executor reads every picture with
`read_item`, so a picture is decoded the same way wherever it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
from collections.abc import Callable, Collection, Container, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from ..backbones import Backbone
from ..catalog import Item, Skip
from ..errors import BuildStopped, ImageError, RecommenderError
from ..images import DECODE_MAX_SIDE, Fit, load_image, read_bytes

T = TypeVar("T")
R = TypeVar("R")
#: What an executor reports embedding, batch by batch: (content hashes, (B, D) vectors); a checkpoint takes it.
OnEmbedded = Callable[[list[str], np.ndarray], None]
#: Asked before each picture; an answer (why) stops the build with `BuildStopped`.
ShouldStop = Callable[[], str | None]


@dataclass(frozen=True)
class Read:
    """One catalog item after reading: its hash, and either prepared pixels or the reason it failed."""

    item: Item
    prepared: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of catalog item `row`: its content hash and a fresh (D,) vector, or why it was left out.

    `vector` is None when the picture needs no embedding (its hash is known, or it repeats a
    picture embedded in this build) or could not be read (`error`).
    """

    row: int
    sha256: str | None
    error: str | None = None
    vector: np.ndarray | None = None


@dataclass
class Embedded:
    """Items that could be read (with their content hashes), their (N, D) vectors, and the ones skipped.

    Every item is one of: `embedded` (a picture embedded now), `reused` (its vector was known) or
    one of the `copies` (the same picture as an earlier item embedded now, e.g. under another label).
    """

    items: list[Item]
    vectors: np.ndarray
    skipped: list[Skip]
    embedded: int
    reused: int
    copies: int = 0


class Executor(Protocol):
    """Runs the pipeline's reading and embedding somewhere: `LocalExecutor` here, `RayExecutor` on a cluster."""

    name: str

    def run(
        self,
        items: Sequence[Item],
        root: Path,
        backbone: Backbone,
        *,
        known: Collection[str],
        batch_size: int,
        on_embedded: OnEmbedded | None,
        should_stop: ShouldStop | None,
        bar: Any,
    ) -> Iterator[Outcome]:
        """One `Outcome` per item, in any order; a picture whose hash is in `known` is never embedded.

        `bar` is a tqdm-like progress bar (`update(n)`, `disable`) counting the items done.
        """
        ...


def read_item(
    item: Item, root: Path, prepare: Callable[[Any], Any], known: Collection[str], fit_to: tuple[int, Fit] | None
) -> Read:
    """Hash the file and, unless its hash is `known`, decode it (no larger than `fit_to` needs) and `prepare` it."""
    path = root / item.path
    try:
        data = read_bytes(path, name=item.path)
        digest = hashlib.sha256(data).hexdigest()
        hashed = replace(item, sha256=digest)
        if digest in known:
            return Read(hashed)
        image = load_image(data, name=item.path, max_side=DECODE_MAX_SIDE, fit_to=fit_to)
        return Read(hashed, prepared=prepare(image))
    except ImageError as exc:
        return Read(item, error=str(exc).removeprefix(f"{item.path}: "))
    except RecommenderError as exc:
        return Read(item, error=str(exc))


class LocalExecutor:
    """Reading and preparing pictures in worker threads while the model embeds the previous batch.

    `workers` reading threads (default: two per core, at most 8); `threads` caps the torch threads
    of the embedding (in the calling thread only, restored after), so that a build a server runs
    leaves its other requests some CPU.
    """

    name = "local"

    def __init__(self, *, workers: int | None = None, threads: int | None = None, nice: int = 0) -> None:
        self.workers = workers or min(8, (os.cpu_count() or 2) * 2)
        self.threads = threads
        self.nice = nice  # the reading threads' lower priority: a web build's decoding yields to searches

    def run(
        self,
        items: Sequence[Item],
        root: Path,
        backbone: Backbone,
        *,
        known: Collection[str],
        batch_size: int,
        on_embedded: OnEmbedded | None,
        should_stop: ShouldStop | None,
        bar: Any,
    ) -> Iterator[Outcome]:
        queued: set[str] = set()  # hashes embedded (or waiting to be) in this run: a repeat is not embedded again
        reads = map_ordered(
            lambda item: read_item(item, root, backbone.prepare, _Either(known, queued), backbone.decode_size),
            items,
            workers=self.workers,
            nice=self.nice,
        )
        pending: list[tuple[int, Any, str]] = []  # (row, prepared pixels, content hash)
        with torch_threads(self.threads):
            for row, read in enumerate(reads):
                if should_stop is not None and (reason := should_stop()):
                    raise BuildStopped(reason)
                bar.update(1)
                sha = read.item.sha256
                if read.error or read.prepared is None or sha in queued:
                    yield Outcome(row, sha, read.error)
                    continue
                assert sha is not None
                queued.add(sha)
                pending.append((row, read.prepared, sha))
                if len(pending) >= batch_size:
                    yield from _embed(backbone, pending, on_embedded)
            yield from _embed(backbone, pending, on_embedded)


@dataclass(frozen=True)
class _Either:
    """Membership in either of two containers (the known hashes, and those queued in this run)."""

    first: Container[str]
    second: Container[str]

    def __contains__(self, value: object) -> bool:
        return value in self.first or value in self.second


def _embed(
    backbone: Backbone, pending: list[tuple[int, Any, str]], on_embedded: OnEmbedded | None
) -> Iterator[Outcome]:
    if not pending:
        return
    out = backbone.embed_prepared([p for _, p, _ in pending])  # (B, D)
    if on_embedded is not None:
        on_embedded([h for _, _, h in pending], out)
    yield from (Outcome(row, sha, vector=vector) for (row, _, sha), vector in zip(pending, out))
    pending.clear()


def embed_items(  # noqa: PLR0913  # keyword-only options of a public call
    items: Sequence[Item],
    root: Path,
    backbone: Backbone,
    *,
    previous: Mapping[str, np.ndarray] | None = None,
    dedupe: bool = False,
    executor: Executor | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "embedding",
    on_embedded: OnEmbedded | None = None,
    should_stop: ShouldStop | None = None,
) -> Embedded:
    """Read, hash, decode and embed catalog pictures in batches; unreadable ones are skipped with a reason.

    `previous` maps content hashes to vectors that need no embedding again; with `dedupe`, a
    picture whose bytes repeat an earlier item's of the same label is skipped (a picture is never
    embedded twice locally either way; one under another label is kept). `on_embedded` receives the
    content hashes and (B, D) vectors of each batch embedded (a checkpoint). `should_stop` is asked before
    each picture; what it answers (why to stop) is raised as `BuildStopped`.
    """
    previous = previous or {}
    executor = executor or LocalExecutor()
    bar = progress_bar(len(items), desc, enabled=progress)
    try:
        outcomes = list(
            executor.run(
                items,
                root,
                backbone,
                known=previous,
                batch_size=batch_size or backbone.batch_size,
                on_embedded=on_embedded,
                should_stop=should_stop,
                bar=bar,
            )
        )
    finally:
        bar.close()
    return assemble(items, outcomes, previous, dedupe=dedupe, dim=backbone.dim)


def assemble(
    items: Sequence[Item], outcomes: Sequence[Outcome], previous: Mapping[str, np.ndarray], *, dedupe: bool, dim: int
) -> Embedded:
    """The items in catalog order with their vectors, skips and counts, whichever executor produced the outcomes.

    With `dedupe`, a picture repeating an earlier item's bytes *under the same label* is skipped
    (reported); under another label it stays, its own item sharing the one vector embedded.
    """
    by_row = {outcome.row: outcome for outcome in outcomes}
    fresh = {o.sha256: o.vector for o in outcomes if o.vector is not None and o.sha256 is not None}
    kept: list[Item] = []
    vectors: list[np.ndarray] = []
    skipped: list[Skip] = []
    seen: dict[tuple[str, str | None], str] = {}  # (content hash, label) -> the first path with them
    embedded: set[str] = set()
    copies = reused = 0
    for row, item in enumerate(items):
        outcome = by_row[row]
        if outcome.error or outcome.sha256 is None:
            skipped.append(Skip(item.path, outcome.error or "not read", item.label))
            continue
        sha = outcome.sha256
        if dedupe and (sha, item.label) in seen:
            skipped.append(Skip(item.path, f"same picture as {seen[sha, item.label]}", item.label))
            continue
        seen.setdefault((sha, item.label), item.path)
        kept.append(replace(item, sha256=sha))
        if sha in fresh:
            vectors.append(np.asarray(fresh[sha], dtype=np.float32))
            copies += sha in embedded  # another item (another label's, or not collapsed) with this picture
            embedded.add(sha)
        else:
            vectors.append(np.asarray(previous[sha], dtype=np.float32))
            reused += 1
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return Embedded(items=kept, vectors=matrix, skipped=skipped, embedded=len(embedded), reused=reused, copies=copies)


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


def map_ordered(fn: Callable[[T], R], values: Sequence[T], *, workers: int, nice: int = 0) -> Iterator[R]:
    """`map` on a thread pool, results in input order, at most a few batches ahead of the consumer.

    `nice` > 0 runs `fn` in threads of that lower CPU priority (Linux: per thread; a pool of one
    then, never the caller's own thread, whose priority could not be raised back).
    """
    if workers <= 1 and not nice:
        yield from map(fn, values)
        return
    ahead = max(1, workers) * 4
    with ThreadPoolExecutor(
        max_workers=max(1, workers),
        thread_name_prefix="recommender-read",
        initializer=_lower_priority,
        initargs=(nice,),
    ) as pool:
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


def _lower_priority(nice: int) -> None:
    """Make this thread `nice` steps less urgent (Linux schedules threads apart; elsewhere a no-op)."""
    if nice and sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)


class _NoBar:
    disable = True

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, *, enabled: bool) -> Any:
    """A tqdm bar of `total` pictures (one that does nothing when not `enabled`)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    # In a log file (a Space's build log, CI) a line every 10 s is plenty; on a terminal, redraw smoothly.
    interval = 0.2 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=True, mininterval=interval)
