"""The long-lived state behind the app: the backbone in use, the default catalog's index, loaded indexes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .backbones import OFFLINE, Backbone, load_backbone
from .build import BuildReport, build_index
from .catalog import Skip, extract_archive, read_catalog
from .errors import IndexLoadError, ModelError, RecommenderError
from .images import ImageSource
from .index import Index, check_name, list_indexes
from .recommend import Identification, identify

#: The embedded default catalog, and what its items are.
DEFAULT_CATALOG = settings.ROOT / "assets" / "pokemon" / "catalog.csv"
DEFAULT_DOMAIN = "Pokémon"
#: Tried when RECOMMENDER_MODEL is not set; the offline backbone takes over when it cannot be had.
PREFERRED_MODEL = "dinov2-small"


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
            f"DINOv2 could not be loaded ({reason}), so the offline CNN backbone (`{OFFLINE}`) is in use. "
            f"To use DINOv2, connect to the network once (the weights are cached) or set "
            f"`{settings.ENV_MODEL}=/path/to/a/folder/saved/with/save_pretrained`."
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

    Re-used as it is when it was built from the same catalog file with the same backbone; rebuilt
    (incrementally: unchanged pictures are not embedded again) when either changed.
    """
    fingerprint = _fingerprint(source)
    try:
        index = Index.load(name, index_dir=index_dir)
        index.check_backbone(backbone)
        if index.manifest.catalog.fingerprint == fingerprint:
            return index, None
    except IndexLoadError:
        pass
    report = build_index(source, name=name, backbone=backbone, domain=domain, index_dir=index_dir,
                         progress=progress, fingerprint=fingerprint)
    return Index.load(name, index_dir=index_dir), report


def default_index(*, index_dir: str | Path | None = None, progress: bool = True,
                  notify: Callable[[str], None] | None = None) -> Index:
    """The embedded Pokémon catalog's index, built on first use with the app's choice of backbone.

    `notify` receives what is happening (the backbone in use, why DINOv2 is not) before a build.
    """
    try:
        return Index.load(settings.DEFAULT_INDEX, index_dir=index_dir)
    except IndexLoadError:
        pass
    choice = choose_backbone()
    if notify:
        notify(f"building the default Pokémon index (first use) with {choice.backbone.name}"
               + (f": {choice.notice}" if choice.notice else ""))
    index, _ = ensure_index(settings.DEFAULT_INDEX, DEFAULT_CATALOG, choice.backbone, domain=DEFAULT_DOMAIN,
                            index_dir=index_dir, progress=progress)
    return index


def _fingerprint(source: Path) -> str:
    """A cheap identity of a catalog source: the CSV's bytes, or a folder's file names, sizes and times."""
    digest = hashlib.sha256()
    if source.is_file():
        digest.update(source.read_bytes())
    else:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                st = path.stat()
                digest.update(f"{path.relative_to(source)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]



class Service:
    """One per app process: shared, read-mostly state that every session's requests use."""

    def __init__(self, *, model: str | None = None, index_dir: str | Path | None = None,
                 default_catalog: Path = DEFAULT_CATALOG, default_name: str = "pokemon",
                 domain: str = DEFAULT_DOMAIN, progress: bool = True) -> None:
        self.index_dir = settings.index_dir(index_dir)
        self.choice = choose_backbone(model)
        started = time.perf_counter()
        self.default, self.first_build = ensure_index(default_name, default_catalog, self.choice.backbone,
                                                      domain=domain, index_dir=self.index_dir, progress=progress)
        self.startup_seconds = self.choice.seconds + time.perf_counter() - started
        self._indexes: dict[str, tuple[float, Index]] = {}
        self._build_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def backbone(self) -> Backbone:
        return self.choice.backbone

    def index(self, name: str | None = None) -> Index:
        """A loaded index by name (the default one when None), re-read only when it was rebuilt."""
        if not name or name == self.default.name:
            return self.default
        manifest = self.index_dir / check_name(name) / "manifest.json"
        stamp = manifest.stat().st_mtime_ns if manifest.exists() else 0.0
        with self._lock:
            cached = self._indexes.get(name)
            if cached and cached[0] == stamp:
                return cached[1]
        index = Index.load(name, index_dir=self.index_dir)
        with self._lock:
            self._indexes[name] = (stamp, index)
        return index

    def backbone_for(self, index: Index) -> Backbone:
        """The app's backbone when the index was built with it, else the index's own (loaded once)."""
        if index.built_with(self.backbone):
            return self.backbone
        return index.backbone()

    def indexes(self) -> list[str]:
        return list_indexes(self.index_dir)

    def identify(self, image: ImageSource, *, index: str | None = None, k: int = 8, name: str | None = None,
                 liked: Sequence[str] = (), disliked: Sequence[str] = ()) -> Identification:
        chosen = self.index(index)
        return identify(image, chosen, k=k, backbone=self.backbone_for(chosen), name=name, liked=liked,
                        disliked=disliked)

    def build_upload(self, archive: str | Path, name: str, *, progress: bool = True,
                     on_extracted: Callable[[list[Skip]], None] | None = None) -> BuildReport:
        """Index an uploaded zip of pictures (or a CSV with its pictures) under `name`, with the app's backbone.

        Each upload unpacks into a fresh folder, so that a second upload under the same name never
        mixes its pictures with the first's; a CSV in it may only name pictures inside it. The older
        folders of that name go once the new index is written; a refused upload leaves nothing.
        """
        name = _safe_name(name)
        if name == self.default.name:
            raise RecommenderError(f"{name!r} is the default catalog's index; choose another name")
        folder = settings.data_dir() / "catalogs" / name
        with self._lock:
            lock = self._build_locks.setdefault(name, threading.Lock())
        with lock:  # one build per name at a time: two uploads racing would remove each other's pictures
            target = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            try:
                source, skipped = extract_archive(archive, target)
                if on_extracted:
                    on_extracted(skipped)
                catalog = read_catalog(source, confined=True)
                report = build_index(catalog, name=name, backbone=self.backbone, index_dir=self.index_dir,
                                     progress=progress)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: no earlier upload of that name
                raise
            for old in folder.iterdir():
                if old == target:
                    continue
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
        report.skipped[:0] = skipped
        return report

    def status(self, index: Index | None = None) -> str:
        """One line for the top of the page: backbone, catalog and its size."""
        index = index or self.default
        labels = f", {len(index.label_names)} labels" if index.labeled else ", unlabeled"
        return (f"Backbone **{self.backbone.name}** ({self.backbone.dim}-d) · catalog **{index.name}**: "
                f"{len(index)} pictures{labels}")


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", (name or "").strip()).strip("-.")
    return check_name(cleaned[:64] or "my-catalog")
