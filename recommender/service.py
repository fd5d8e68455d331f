"""What the app asks of the library, in one object: the backbone in use, the indexes a visitor may search,
answers, explanations, catalog figures and related media, and each visitor's uploads.

The app talks to a `Service` only (and to the named errors); everything long-lived the service
needs (pooled backbones, caches, clients) is in its `runtime`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from . import settings
from .adapt import AdaptReport, adapt_index
from .archive import extract_archive, prune_catalog, unpacked_size
from .backbones import OFFLINE, Backbone, load_backbone
from .build import BuildReport, LocalExecutor, build_index
from .catalog import Catalog, Skip, read_catalog
from .errors import IndexLoadError, IndexNotFoundError, IndexNotReady, LimitExceeded, ModelError, RecommenderError
from .explain import SimilarityMatrix, catalog_heatmap, explain, map_figure
from .images import ImageSource, load_image
from .index import MANIFEST, Index, Match, check_name, list_indexes
from .recommend import Identification, embed_query, identify, look_alikes
from .runtime import Runtime, default_runtime
from .session import Visit
from .uploads import UPLOAD, UploadLimits, Uploads, stop_check
from .websearch import Link, search_media

#: The embedded default catalog, and what its items are.
DEFAULT_CATALOG = settings.ROOT / "assets" / "pokemon" / "catalog.csv"
DEFAULT_DOMAIN = "Pokémon"
#: Tried when RECOMMENDER_MODEL is not set; the offline backbone takes over when it cannot be had.
PREFERRED_MODEL = "dinov2-small"
#: The side of the pictures the page shows for catalog items.
THUMBNAIL = 256
log = logging.getLogger(__name__)
#: How much less urgent a web build's decoding threads are than the searches (nice steps, Linux):
#: a bomb being decoded slows the other visitors' answers less on a machine of two cores.
WEB_BUILD_NICE = 10
#: Pictures a first build reads before it says how long the rest will take.
ESTIMATE_AFTER = 32


@dataclass(frozen=True)
class ModelChoice:
    """The backbone the app runs on, and a plain notice when it is not the one preferred."""

    backbone: Backbone
    notice: str | None
    seconds: float


def choose_backbone(model: str | None = None) -> ModelChoice:
    """`model`, else RECOMMENDER_MODEL, else DINOv2-small (cache or hub), else the offline backbone.

    An explicitly chosen model must load (its error is raised); the preferred DINOv2 falls back to
    the offline backbone with a notice saying why and how to get DINOv2. Decided in seconds: the
    hub is probed with a short timeout, never waited on.
    """
    started = time.perf_counter()
    explicit = model or os.environ.get(settings.ENV_MODEL)
    if explicit:
        return ModelChoice(load_backbone(explicit), None, time.perf_counter() - started)
    try:
        backbone = load_backbone(PREFERRED_MODEL)
        return ModelChoice(backbone, None, time.perf_counter() - started)
    except ModelError as exc:
        reason = str(exc).split(";")[0]
        notice = (
            f"DINOv2 could not be loaded ({reason}), so a CNN that needs no network (`{OFFLINE}`) recognises "
            f'pictures: connect once or set `{settings.ENV_MODEL}` to a local copy (README, "Backbones").'
        )
        return ModelChoice(load_backbone(OFFLINE), notice, time.perf_counter() - started)


def ensure_index(
    name: str,
    source: Path,
    backbone: Backbone,
    *,
    domain: str | None = None,
    index_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[Index, BuildReport | None]:
    """The index `name` of `source`, built (or brought up to date) with `backbone` when needed.

    Re-used as it is when it was built from the same catalog (the same rows, labels and pictures)
    with the same backbone; rebuilt (incrementally: unchanged pictures are not embedded again) when
    either changed.
    """
    catalog = read_catalog(source)
    fingerprint = catalog.fingerprint()
    index = current_index(name, fingerprint, backbone, index_dir=index_dir)
    if index is not None:
        return index, None
    return build_current(name, catalog, fingerprint, backbone, domain=domain, index_dir=index_dir, progress=progress)


def current_index(name: str, fingerprint: str, backbone: Backbone, *, index_dir: str | Path | None) -> Index | None:
    """The index `name` when it was built from the catalog of `fingerprint` as it is, with `backbone`; else None."""
    try:
        index = Index.load(name, index_dir=index_dir)
        index.check_backbone(backbone)
    except IndexLoadError:
        return None
    return index if index.manifest.catalog.fingerprint == fingerprint else None


def build_current(
    name: str,
    catalog: Catalog,
    fingerprint: str,
    backbone: Backbone,
    *,
    domain: str | None,
    index_dir: str | Path | None,
    progress: bool,
    should_stop: Callable[[], str | None] | None = None,
) -> tuple[Index, BuildReport]:
    """Build (or bring up to date) the index `name` of `catalog`; `should_stop` is asked before each picture."""
    report = build_index(
        catalog,
        name=name,
        backbone=backbone,
        domain=domain,
        index_dir=index_dir,
        progress=progress,
        fingerprint=fingerprint,
        should_stop=should_stop,
    )
    return Index.load(name, index_dir=index_dir), report


def default_index(
    *, index_dir: str | Path | None = None, progress: bool = True, notify: Callable[[str], None] | None = None
) -> Index:
    """The embedded Pokémon catalog's index, built on first use with the app's choice of backbone.

    `notify` receives what is happening (the backbone in use, why DINOv2 is not) before a build.
    """
    try:
        return Index.load(settings.DEFAULT_INDEX, index_dir=index_dir)
    except IndexLoadError:
        if not DEFAULT_CATALOG.is_file():
            raise IndexNotFoundError(
                f"no index {settings.DEFAULT_INDEX!r} in {settings.index_dir(index_dir)}, and the Pokémon catalog "
                "it is built from ships with the source repository, not the package: build an index of your own "
                "(recommender index FOLDER --name NAME, then --index NAME), or run from a clone of the repository"
            ) from None
    choice = choose_backbone()
    if notify:
        notify(
            f"building the default Pokémon index (first use) with {choice.backbone.name}"
            + (f": {choice.notice}" if choice.notice else "")
        )
    index, _ = ensure_index(
        settings.DEFAULT_INDEX,
        DEFAULT_CATALOG,
        choice.backbone,
        domain=DEFAULT_DOMAIN,
        index_dir=index_dir,
        progress=progress,
    )
    return index


def public_match(match: Match) -> dict[str, Any]:
    """A look-alike as the public API gives it: its catalog id, label, score, rank and metadata, no server path."""
    data = match.to_dict()
    del data["path"]
    return data


def public_answer(result: Identification, index: Index) -> dict[str, Any]:
    """An answer as the public API gives it: pictures named by their catalog ids, never by paths on this server."""
    another = result.another_image
    if another is not None:
        another = another.relative_to(index.root).as_posix() if another.is_relative_to(index.root) else None
    return {
        "label": result.label,
        "score": round(result.score, 6),
        "in_catalog": result.in_catalog,
        "threshold": round(result.threshold, 6),
        "message": result.message,
        "another_image": another,
        "matches": [public_match(match) for match in result.matches],
        "shared_with": result.shared_with,
    }


@dataclass
class Warmup:
    """How far the one-off build of the default index has got (or how long loading it took).

    Written by the thread that builds it, read by every page that asks (plain attributes: a
    page reads a number a picture late at worst).
    """

    domain: str = DEFAULT_DOMAIN
    started: float = field(default_factory=time.monotonic)
    total: int = 0  # pictures to index; 0 when the index was only loaded
    done: int = 0
    seconds: float | None = None  # how long it took, once ready
    error: str | None = None

    def picture(self) -> None:
        """One more picture read (what the build asks before each; never stops it)."""
        self.done += 1

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def remaining(self) -> float | None:
        """Seconds left at the rate so far; None until a few pictures tell the rate."""
        if self.total == 0 or self.done < min(ESTIMATE_AFTER, self.total):
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.done * (self.total - self.done)

    def line(self) -> str:
        """What the page and the terminal say while the index is not ready."""
        if self.error:
            return f"The {self.domain} index could not be built: {self.error}"
        left = self.remaining()
        eta = f"about {left:.0f} s left" if left is not None else "estimating the time it takes"
        return (
            f"Building the {self.domain} index once ({eta}): {self.done} of {self.total} pictures "
            f"({self.fraction:.0%}). The page works as soon as it is done."
        )

    def refusal(self) -> str:
        """The one line that answers a search while the index is not ready."""
        if self.error:
            return self.line()
        return (
            f"The catalog is still being indexed ({self.fraction:.0%}); try again in a few seconds "
            "(the page says when it is ready)."
        )


class Service:
    """One per app process: shared, read-mostly state that every session's requests use.

    Indexes are named by references: an operator's index by its name (a folder of the index
    folder, visible to everyone), a session's upload by `UPLOAD` + its name, looked up only among
    that session's own (see `uploads`). Web builds go to the session's folder, never the index folder.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        index_dir: str | Path | None = None,
        default_catalog: Path = DEFAULT_CATALOG,
        default_name: str = "pokemon",
        domain: str = DEFAULT_DOMAIN,
        progress: bool = True,
        limits: UploadLimits | None = None,
        runtime: Runtime | None = None,
        background: bool = False,
    ) -> None:
        """`background`: a default index that must be built (the first start, or its catalog changed) is
        built in a thread, so that the caller can serve at once; until it is ready, searching it raises
        `IndexNotReady` (`ready`, `warmup`, `wait_ready` tell how far it is). An index that only needs
        loading is loaded before the constructor returns, as is any index without `background`.
        """
        self.index_dir = settings.index_dir(index_dir)
        self.default_name = default_name
        self.runtime = runtime or default_runtime()
        self._indexes: dict[Path, tuple[float, Index]] = {}
        self._build_lock = threading.Lock()  # one web build at a time, whoever asks
        self._lock = threading.Lock()
        self.uploads = Uploads(
            settings.data_dir() / "sessions", limits or UploadLimits.from_env(), on_remove=self._forget
        )
        self.uploads.clear()  # sessions die with the process that served them; so do killed builds' folders
        self.choice = choose_backbone(model)
        self.warmup = Warmup(domain=domain)
        self.first_build: BuildReport | None = None
        self._default: Index | None = None
        self._ready = threading.Event()
        started = time.perf_counter()
        catalog = read_catalog(default_catalog)
        fingerprint = catalog.fingerprint()
        self._default = current_index(default_name, fingerprint, self.backbone, index_dir=self.index_dir)
        if self._default is not None:
            self._ready.set()
            self.warmup.seconds = time.perf_counter() - started
        else:
            self.warmup.total = len(catalog.items)
            log.info("building the %s index once: %d pictures with %s", domain, len(catalog.items), self.backbone.name)
            build = functools.partial(self._build_default, default_name, catalog, fingerprint, domain, progress)
            if background:
                threading.Thread(target=build, name="recommender-default-index", daemon=True).start()
            else:
                build(raising=True)
        self.startup_seconds = self.choice.seconds + (self.warmup.seconds or 0.0)

    def _build_default(
        self, name: str, catalog: Catalog, fingerprint: str, domain: str, progress: bool, *, raising: bool = False
    ) -> None:
        """Build the default index; in a thread, a failure is kept for the page (and logged)."""
        warmup = self.warmup
        warmup.started = time.monotonic()

        def counted() -> None:
            warmup.picture()  # the build asks before each picture: its progress, for the page
            if warmup.done == ESTIMATE_AFTER:
                log.info("the %s index will be ready in about %.0f s", domain, warmup.remaining() or 0)

        try:
            self._default, self.first_build = build_current(
                name,
                catalog,
                fingerprint,
                self.backbone,
                domain=domain,
                index_dir=self.index_dir,
                progress=progress,
                should_stop=counted,
            )
            warmup.seconds = time.monotonic() - warmup.started
            self.startup_seconds = self.choice.seconds + warmup.seconds
        except Exception as exc:
            warmup.error = str(exc) if isinstance(exc, RecommenderError) else f"unexpected {type(exc).__name__}"
            if raising:
                raise
            log.exception("the default index could not be built")
        finally:
            self._ready.set()

    @property
    def default(self) -> Index:
        """The default index; `IndexNotReady` (how far it is, in one line) while it is being built."""
        if self._default is None:
            raise IndexNotReady(self.warmup.refusal())
        return self._default

    @property
    def ready(self) -> bool:
        """Whether the default index may be searched (False also when its build failed)."""
        return self._default is not None

    @property
    def building(self) -> bool:
        """Whether the default index is being built now (neither ready nor failed)."""
        return not self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the default index is built (or its build failed); whether it is ready."""
        self._ready.wait(timeout)
        return self.ready

    @property
    def backbone(self) -> Backbone:
        return self.choice.backbone

    @property
    def limits(self) -> UploadLimits:
        return self.uploads.limits

    def index(self, name: str | None = None, *, session: str | None = None) -> Index:
        """A loaded index by reference (the default one when None), re-read only when it was rebuilt.

        `UPLOAD` + name is looked up among `session`'s own uploads only; any other name in the index folder.
        """
        if not name or name == self.default_name:
            return self.default
        if name.startswith(UPLOAD):
            folder = self.uploads.index_folder(session, name.removeprefix(UPLOAD))
        else:
            folder = self.index_dir / check_name(name)
        manifest = folder / MANIFEST
        stamp = manifest.stat().st_mtime_ns if manifest.exists() else 0.0
        with self._lock:
            cached = self._indexes.get(folder)
            if cached and cached[0] == stamp:
                return cached[1]
        index = Index.load(folder, runtime=self.runtime)
        with self._lock:
            self._indexes[folder] = (stamp, index)
        return index

    def backbone_for(self, index: Index) -> Backbone:
        """The app's backbone when the index was built with it, else the index's own (from the runtime's pool)."""
        if index.built_with(self.backbone):
            return self.backbone
        return index.backbone(runtime=self.runtime)

    def indexes(self, session: str | None = None) -> list[str]:
        """References of the indexes `session` may search: the index folder's, then its own uploads."""
        found = list_indexes(self.index_dir)
        if self.default_name not in found:  # still being built: listed already, so that a chooser can show it
            found.insert(0, self.default_name)
        return found + [UPLOAD + name for name in self.uploads.names(session)]

    def choices(self, session: str | None = None) -> list[tuple[str, str]]:
        """(label, reference) of each index `session` may search, for a chooser."""
        return [
            (f"{ref.removeprefix(UPLOAD)} (your upload)" if ref.startswith(UPLOAD) else ref, ref)
            for ref in self.indexes(session)
        ]

    def identify(
        self,
        image: ImageSource,
        *,
        index: str | None = None,
        session: str | None = None,
        k: int = 8,
        name: str | None = None,
        liked: Sequence[str] = (),
        disliked: Sequence[str] = (),
        top_labels: int = 5,
    ) -> Identification:
        """`identify` in an index `session` may see, with the backbone it was built with."""
        chosen = self.index(index, session=session)
        backbone = self.backbone_for(chosen)
        return identify(
            image, chosen, k=k, backbone=backbone, name=name, liked=liked, disliked=disliked, top_labels=top_labels
        )

    def answer(
        self,
        image: ImageSource,
        *,
        index: str | None = None,
        session: str | None = None,
        k: int = 8,
        name: str | None = None,
    ) -> dict[str, Any]:
        """The public API's `identify`: the answer as JSON data (see `public_answer`)."""
        result = self.identify(image, index=index, session=session, k=k, name=name)
        return public_answer(result, self.index(index, session=session))

    def search(
        self,
        image: ImageSource,
        *,
        index: str | None = None,
        session: str | None = None,
        k: int = 8,
        name: str | None = None,
    ) -> list[dict[str, Any]]:
        """The public API's `search`: the `k` look-alikes in an index `session` may see, as JSON data."""
        chosen = self.index(index, session=session)
        picture = load_image(image, name=name)  # refused with its own name before the backbone runs
        found = look_alikes(picture, chosen, k=k, backbone=self.backbone_for(chosen))
        return [public_match(match) for match in found]

    def ask(
        self,
        visit: Visit,
        *,
        session: str | None,
        k: int = 8,
        name: str | None = None,
    ) -> tuple[Visit, Identification]:
        """Answer `visit`'s question (its query, in its index; the look-alikes steered by its feedback).

        The answer ranks up to `k` labels too (the page's scores). Returns the page's next state
        with the answer (`Visit.asking` starts a new question).
        """
        if visit.query is None:
            raise RecommenderError("Upload, paste or take a picture first.")
        result = self.identify(
            visit.query,
            index=visit.index,
            session=session,
            k=k,
            name=name,
            liked=visit.liked,
            disliked=visit.disliked,
            top_labels=k,
        )
        return visit.answered(visit.query, visit.index, result), result

    def picture(self, source: ImageSource, *, name: str | None = None, max_side: int | None = THUMBNAIL) -> Image.Image:
        """A picture shrunk to `max_side` (None: whole), decoded within the memory budget (for the page to show)."""
        return load_image(source, name=name, max_side=max_side)

    def thumbnail(self, path: str | Path) -> Image.Image:
        """A small copy of a catalog picture (cached): the page serves it, never the catalog's folder."""
        key = ("thumbnail", str(path))
        found = self.runtime.figures.get(key)
        if found is None:
            found = self.picture(path, max_side=THUMBNAIL)
            self.runtime.figures.put(key, found, nbytes=found.width * found.height * 3)
        return found

    def explain_match(self, visit: Visit, item: str, *, session: str | None) -> Image.Image | None:
        """Where `visit`'s question matches catalog `item`, drawn; None when the backbone has no spatial features."""
        index = self.index(visit.index, session=session)
        backbone = self.backbone_for(index)
        if backbone.spatial_part is None or visit.query is None:
            return None
        return explain(visit.query, item, index, backbone=backbone, runtime=self.runtime).image

    def similarity(self, reference: str | None, *, session: str | None, features: str) -> SimilarityMatrix:
        """The catalog's similarity matrix on `features` dimensions, drawn once per index version."""
        index = self.index(reference, session=session)
        key = ("matrix", str(index.folder), index.version, features)
        found = self.runtime.figures.get(key)
        if found is None:
            found = catalog_heatmap(index, features=features, runtime=self.runtime)
            assert found.image is not None
            size = found.matrix.nbytes + 3 * found.image.width * found.image.height
            self.runtime.figures.put(key, found, nbytes=size)
        return found

    def catalog_figure(self, reference: str | None, *, session: str | None, color_by: str, visit: Visit) -> Any:
        """The catalog map (plotly), with `visit`'s picture as a star when it was asked of this very index."""
        index = self.index(reference, session=session)
        query = None
        if visit.query is not None and visit.index == reference:
            query = embed_query(visit.query, index, backbone=self.backbone_for(index))
        return map_figure(index, color_by=color_by or "label", query=query, runtime=self.runtime)

    def columns(self, reference: str | None, *, session: str | None) -> list[str]:
        """What the map can colour by: `label`, then the index's metadata columns."""
        index = self.index(reference, session=session)
        return ["label", *sorted({k for item in index.items[:1000] for k in item.metadata})]

    def related(self, label: str, reference: str | None, *, session: str | None) -> tuple[list[Link], list[Link]]:
        """(images, pages) about a recognised name on the web; `WebSearchUnavailable` within the deadline."""
        domain = self.index(reference, session=session).domain or ""
        return (
            search_media(label, kind="image", limit=6, domain=domain, runtime=self.runtime),
            search_media(label, kind="page", limit=6, domain=domain, runtime=self.runtime),
        )

    def build_upload(
        self,
        archive: str | Path,
        name: str,
        *,
        session: str | None,
        progress: bool = True,
        client_gone: Callable[[], bool] | None = None,
        on_extracted: Callable[[list[Skip]], None] | None = None,
    ) -> BuildReport:
        """Index an uploaded zip of pictures (or a CSV with its pictures) as `session`'s own `name`.

        Bounded by `limits` (pictures, rows, bytes, quotas, seconds) and stopped as soon as
        `client_gone` says so; the build embeds with `limits.threads` threads. Each upload unpacks
        into a fresh folder, so that a second upload under the same name never mixes its pictures
        with the first's; a CSV in it may only name pictures inside it. Once the index is written,
        only the pictures it holds are kept, and the older folders of that name go. A refused or
        stopped upload leaves nothing (but the index it was to replace).
        """
        name = _safe_name(name)
        limits = self.limits
        should_stop = stop_check(limits.seconds, client_gone)
        with self._web_build(session):
            self.sweep()  # the space of expired sessions first
            self.uploads.check_room(session, name, unpacked_size(archive))
            index_dir = self.uploads.index_dir(session)
            folder = self.uploads.catalog_dir(session, name)
            target = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            existed = (index_dir / name / MANIFEST).is_file()
            try:
                source, skipped = extract_archive(
                    archive,
                    target,
                    max_bytes=limits.upload_bytes,
                    max_pictures=limits.pictures,
                    max_rows=limits.rows,
                    should_stop=should_stop,
                )
                if on_extracted:
                    on_extracted(skipped)
                catalog = read_catalog(source, confined=True)
                catalog.skipped[:0] = skipped  # what the zip held but could not give: in the build's record too
                report = build_index(
                    catalog,
                    name=name,
                    backbone=self.backbone,
                    index_dir=index_dir,
                    progress=progress,
                    store="local",
                    should_stop=should_stop,
                    executor=LocalExecutor(workers=limits.threads, threads=limits.threads, nice=WEB_BUILD_NICE),
                )
            except BaseException as exc:
                shutil.rmtree(target, ignore_errors=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: no earlier upload of that name
                if not existed:  # a first build's partial folder (its checkpoint) is of no use to anyone
                    shutil.rmtree(index_dir / name, ignore_errors=True)
                if isinstance(exc, RecommenderError) and str(target) in str(exc):
                    # A visitor is told the names inside their upload, never where it lies on this server.
                    raise type(exc)(str(exc).replace(f"{target}{os.sep}", "").replace(str(target), name)) from None
                raise
            index = Index.load(report.folder)
            prune_catalog(target, (index.path_of(item) for item in index.items))
            for old in folder.iterdir():
                if old == target:
                    continue
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
        return report

    def adapt_upload(
        self,
        reference: str | None,
        *,
        session: str | None,
        progress: Callable[[float, str], None] | None = None,
        client_gone: Callable[[], bool] | None = None,
    ) -> AdaptReport:
        """Adapt one of `session`'s uploaded indexes to its pictures (`adapt_index`), as its own `NAME-adapted`.

        Only a visitor's own uploads: the shipped and operator indexes are shared and stay as built.
        Bounded like a build (the session's and the server's quotas, the build time limit, the
        client going away) and run one at a time with the builds.
        """
        if not reference or not reference.startswith(UPLOAD):
            raise RecommenderError(
                "adapting works on a catalog you uploaded here; choose one of yours under 'Index to search'"
            )
        self.index(reference, session=session)  # it is this session's, and it loads
        name = reference.removeprefix(UPLOAD)
        out = check_name(f"{name}-adapted")
        with self._web_build(session):
            # The adapted index holds as many vectors as the plain one, and its head beside them.
            self.uploads.check_room(session, out, self.uploads.index_bytes(session, name))
            return adapt_index(
                name,
                out=out,
                index_dir=self.uploads.index_dir(session),
                progress=progress,
                should_stop=stop_check(self.limits.seconds, client_gone),
            )

    @contextlib.contextmanager
    def _web_build(self, session: str | None) -> Iterator[None]:
        """One web build (or adaptation) at a time, whoever asks; the session's folder kept meanwhile."""
        if not self._build_lock.acquire(timeout=self.limits.seconds):
            raise LimitExceeded("another upload is being indexed; try again in a minute")
        try:
            with self.uploads.building(session):
                yield
        finally:
            self._build_lock.release()

    def close_session(self, session: str | None) -> None:
        """A page was closed: its uploads go (once its build, if any, has stopped)."""
        self.uploads.close(session)

    def sweep(self) -> None:
        """Remove the uploads of sessions unused for longer than their time-to-live."""
        self.uploads.sweep()

    def sweep_every(self, seconds: float) -> threading.Thread:
        """Sweep in a daemon thread every `seconds` (the app's; a library user calls `sweep` when it suits)."""

        def loop() -> None:
            while True:
                time.sleep(seconds)
                with contextlib.suppress(Exception):  # a sweep that failed is retried next time
                    self.sweep()

        thread = threading.Thread(target=loop, name="recommender-sweep", daemon=True)
        thread.start()
        return thread

    def _forget(self, folder: Path) -> None:
        """Drop the loaded indexes of a removed session folder."""
        with self._lock:
            for path in [p for p in self._indexes if p.is_relative_to(folder)]:
                del self._indexes[path]

    def status(self, index: Index | None = None) -> str:
        """One line for the top of the page: backbone, catalog and its size (or how far its build is)."""
        recognising = f"Recognising with **{self.backbone.name}**"
        if index is None and not self.ready:
            return f"{recognising} · {self.warmup.line()}"
        index = index or self.default
        labels = f", {len(index.label_names)} labels" if index.labeled else ", unlabeled"
        return f"{recognising} · catalog **{index.name}**: {len(index):,} pictures{labels}"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", (name or "").strip()).strip("-.")
    return check_name(cleaned[:64] or "my-catalog")
