"""Running evaluations: a plan of protocols against one index, or several backbones with cached indexes."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..backbones import Backbone, load_backbone, normalise, parse_weights
from ..build import build_index, embed_items
from ..catalog import Catalog, Item, read_catalog
from ..errors import CatalogError, IndexLoadError, IndexMismatchError, ModelError, RecommenderError
from ..index import Index
from .metrics import MAP_AT
from .pairs import evaluate_pairs, read_pairs
from .report import ModelRun, Report, slug
from .retrieval import Evaluation, check_group_by, evaluate_leave_one_out, read_query_set, retrieve
from .universe import evaluate_universe
from .vectors import Vectors, embed_catalog

#: Pictures embedded to time a backbone when every vector came from a cache.
TIMING_SAMPLE = 32


@dataclass(frozen=True)
class ModelSpec:
    """One backbone of a comparison: how it was written, and what `load_backbone` takes."""

    label: str
    model: str
    weights: tuple[float, ...] | None = None

    def load(self) -> Backbone:
        return load_backbone(self.model, weights=list(self.weights) if self.weights else None)


_INLINE_WEIGHT = re.compile(r"^(.+)@(\d*\.?\d+)$")


def parse_models(text: str, weights: str | Sequence[float] | None = None) -> list[ModelSpec]:
    """`"a,b,c+d@0.9,0.1"`-style lists: comma-separated models; hybrid parts joined by `+`.

    A hybrid's weights are written inline after each part (`efficientnet-lite0@0.9+colour-histogram@0.1`)
    or, for every hybrid written without them, given once by `weights` (`--weights 0.9,0.1`).
    Hybrids without either weigh their parts equally.
    """
    specs = []
    default = tuple(parse_weights(weights)) if weights else None
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        if re.fullmatch(r"\d*\.?\d+", entry):
            raise ModelError(
                f"{entry!r} in --models is a number, not a model: write hybrid weights inline "
                "(efficientnet-lite0@0.9+colour-histogram@0.1) or with --weights"
            )
        parts = [p.strip() for p in entry.split("+")]
        found = [_INLINE_WEIGHT.match(p) for p in parts]
        if any(found) and not all(found):
            raise ModelError(f"bad model {entry!r}: give every part of a hybrid a weight (A@0.9+B@0.1) or none")
        if all(found):
            names = [m.group(1) for m in found if m]
            spec = ModelSpec(entry, "+".join(names), tuple(float(m.group(2)) for m in found if m))
        elif len(parts) > 1 and default:
            spec = ModelSpec("+".join(f"{p}@{w:g}" for p, w in zip(parts, default)), entry, default)
        else:
            spec = ModelSpec(entry, entry)
        specs.append(spec)
    if not specs:
        raise ModelError("--models names no model; list them with commas, e.g. colour-histogram,efficientnet-lite0")
    return specs


def evaluation_cache(cache_dir: str | Path | None = None) -> Path:
    """Where the indexes built for evaluations live: the cache folder, away from the indexes users search."""
    return settings.cache_dir(cache_dir) / "evaluation"


def cached_index(
    catalog: Catalog, backbone: Backbone, *, directory: Path, progress: bool = True, dedupe: bool = True
) -> Index:
    """The index of `catalog` with `backbone`, built once and re-used while the catalog's files are unchanged.

    A hybrid is assembled from its parts' cached indexes (each vector scaled by the square root
    of its weight, as `Hybrid` does), so that trying several weights embeds every picture once.
    `dedupe` collapses pictures repeated under one label, as `index` does (a gallery); without it
    every picture is kept (query sets: each one counts, as when they are embedded on the way).
    """
    name = _cache_name(catalog, backbone, dedupe=dedupe)
    fingerprint = catalog.fingerprint()
    try:
        index = Index.load(name, index_dir=directory)
        if index.manifest.catalog.fingerprint == fingerprint:
            index.check_backbone(backbone)
            return index
    except IndexLoadError:
        pass  # absent, stale or built otherwise: (re)build below, re-using what still matches
    if len(backbone.parts) > 1:
        reuse = _assemble(catalog, backbone, directory, progress, dedupe)
    else:  # the same pictures in another source (pairs of catalog pictures) are not embedded twice
        reuse = _known_vectors(directory, backbone, {item.path for item in catalog.items}, catalog.root)
    build_index(
        catalog,
        name=name,
        backbone=backbone,
        index_dir=directory,
        fingerprint=fingerprint,
        reuse=reuse,
        progress=progress,
        dedupe=dedupe,
    )
    return Index.load(name, index_dir=directory)


def _assemble(
    catalog: Catalog, hybrid: Backbone, directory: Path, progress: bool, dedupe: bool
) -> dict[str, np.ndarray]:
    parts = [
        cached_index(catalog, part, directory=directory, progress=progress, dedupe=dedupe) for part in hybrid.parts
    ]
    rows = [{item.sha256: i for i, item in enumerate(p.items)} for p in parts]
    common = [sha for sha in rows[0] if all(sha in r for r in rows[1:])]
    pieces = [
        np.asarray(p.embeddings[[r[sha] for sha in common]], dtype=np.float32) * np.sqrt(w)
        for p, r, w in zip(parts, rows, hybrid.part_weights)
    ]
    vectors = normalise(np.concatenate(pieces, axis=1))  # re-normalised: the parts were stored in float16
    return dict(zip(common, vectors))


def _known_vectors(directory: Path, backbone: Backbone, paths: set[str], root: Path) -> dict[str, np.ndarray]:
    """Vectors by content hash from the other cached indexes of this backbone that hold these very files."""
    wanted = {str((root / p).resolve()) for p in paths}
    known: dict[str, np.ndarray] = {}
    for manifest in sorted(directory.glob("*/manifest.json")) if directory.is_dir() else []:
        try:
            index = Index.load(manifest.parent)
        except RecommenderError:
            continue  # a broken cache entry is rebuilt when its own turn comes
        if not index.built_with(backbone):
            continue
        for row, item in enumerate(index.items):
            if item.sha256 and str(index.path_of(item)) in wanted:
                known[item.sha256] = np.asarray(index.embeddings[row], dtype=np.float32)
    return known


def _cache_name(catalog: Catalog, backbone: Backbone, *, dedupe: bool = True) -> str:
    source = Path(catalog.source).resolve()
    keys = [str(source), catalog.columns, backbone.spec.to_json()] + ([] if dedupe else ["every picture"])
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:10]
    model = Path(backbone.name).name if "/" in backbone.name else backbone.name
    return f"{slug(source.stem or source.name)}-{slug(model.replace('+', '_'))}-{digest}"


def time_embedding(
    backbone: Backbone, items: Sequence[Item], root: Path, *, sample: int = TIMING_SAMPLE, repeats: int = 3
) -> float:
    """Milliseconds to read, decode and embed one picture, in batches, on a spread sample of the catalog.

    After a warm-up batch (first calls allocate and pick kernels), the best of a few repeats: on a
    shared machine the fastest run is the one least disturbed by other work.
    """
    picked = list(items[:: max(1, len(items) // sample)][:sample])
    embed_items(picked[: backbone.batch_size], root, backbone, progress=False)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        embedded = embed_items(picked, root, backbone, progress=False)
        best = min(best, (time.perf_counter() - started) / max(1, len(embedded.items)))
    return 1000 * best


def _ms_per_image(catalog: Catalog, backbone: Backbone, directory: Path) -> float:
    """Reading, decoding and embedding time per picture: from the cached builds of the catalog where they
    embedded enough pictures to say (a hybrid costs the sum of its parts), else from a fresh sample."""
    rates = []
    for part in backbone.parts:
        stats = cached_index(catalog, part, directory=directory, progress=False).manifest.stats
        if stats.embedded < TIMING_SAMPLE:
            return time_embedding(backbone, catalog.items, catalog.root)
        rates.append(1000 * stats.seconds / stats.embedded)
    return sum(rates)


@dataclass
class Plan:
    """What to evaluate: any of the four protocols, with their options."""

    queries: list[Path] = field(default_factory=list)
    query_index: Index | None = None  # an index of labeled query pictures, built with the gallery's backbone
    reverse: bool = False
    leave_one_out: bool = False
    group_by: str | None = None
    pairs: Path | None = None
    seed: int = 0
    inside: list[Path] = field(default_factory=list)
    outside: list[Path] = field(default_factory=list)
    map_at: int = MAP_AT

    def check(self, *, has_gallery: bool) -> None:
        if self.reverse and not (self.queries or self.query_index):
            raise RecommenderError("--reverse swaps query set and gallery: it needs --queries or --query-index")
        if self.inside and not self.outside:
            raise RecommenderError("--inside needs --outside: the decision is judged on both kinds of pictures")
        if self.outside and not (self.inside or self.queries):
            raise RecommenderError("--outside needs pictures from inside the catalog too: --inside or --queries")
        if not (self.queries or self.query_index or self.leave_one_out or self.pairs or self.outside):
            raise RecommenderError("nothing to evaluate: give --queries, --leave-one-out, --pairs or --outside")
        needs = self.queries or self.query_index or self.leave_one_out or self.outside
        if needs and not has_gallery:
            raise RecommenderError("this protocol needs a gallery: --index NAME or --catalog SOURCE")


def evaluate_index(index: Index, plan: Plan, *, backbone: Backbone | None = None, progress: bool = True) -> Report:
    """Every protocol of `plan` against one built index; query pictures are embedded now with its backbone."""
    plan.check(has_gallery=True)
    sources = _read_sources(plan)
    if (plan.queries or plan.leave_one_out) and not index.labeled:
        raise CatalogError(f"index {index.name!r} has no labels: naming cannot be evaluated against it")
    check_group_by(index.items, plan.group_by, f"index {index.name!r}")
    needs_model = bool(plan.queries or plan.pairs or plan.inside or plan.outside)
    if needs_model:
        backbone = backbone or index.backbone()
        index.check_backbone(backbone)
    embedded: list[Vectors] = []

    def vectors_of(catalog: Catalog, name: str) -> Vectors:
        assert backbone is not None
        vectors = embed_catalog(catalog, backbone, name=name, progress=progress)
        embedded.append(vectors)
        return vectors

    run = ModelRun(index.manifest.backbone_name, index=index.name, index_mb=index.size_bytes / 1e6)
    _run_protocols(run, index, vectors_of, sources, plan)
    if embedded:
        run.ms_per_image = 1000 * sum(v.seconds for v in embedded) / sum(len(v.items) for v in embedded)
    else:
        try:
            run.ms_per_image = time_embedding(backbone or index.backbone(), index.items, index.root)
        except ModelError:
            run.ms_per_image = None  # the index's model cannot be loaded here: its other numbers still stand
    _stamp(run)
    return Report(index.name, [run], plan)


def compare_models(
    source: str | Path | None,
    models: Sequence[ModelSpec],
    plan: Plan,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    strict: bool = False,
) -> Report:
    """Every protocol of `plan` for each backbone, indexing `source` and the query pictures once per backbone.

    Indexes are cached in the evaluation cache and re-used while their pictures are unchanged. A
    backbone that cannot be loaded here gives a row "not run here: <reason>" unless `strict`.
    """
    plan.check(has_gallery=source is not None)
    if plan.query_index:
        raise RecommenderError("--query-index is built with one backbone; compare models with --queries FOLDER")
    catalog = read_catalog(source, image_column=image_column, label_column=label_column) if source else None
    if catalog is not None:
        if (plan.queries or plan.leave_one_out) and not catalog.labeled:
            raise CatalogError(f"{source}: the catalog has no labels: naming cannot be evaluated against it")
        check_group_by(catalog.items, plan.group_by, str(source))
    sources = _read_sources(plan)
    directory = evaluation_cache(cache_dir)
    runs = []
    for spec in models:
        try:
            backbone = spec.load()
        except ModelError as exc:
            if strict:
                raise
            reason = str(exc).splitlines()[0].split("; ")[0]  # the cause; the remedies are in the docs
            runs.append(ModelRun(spec.label, status=f"not run here: {reason}"))
            continue

        def vectors_of(catalog: Catalog, name: str, backbone: Backbone = backbone) -> Vectors:
            # Every picture of a query set counts, as on the --index path: nothing collapsed.
            index = cached_index(catalog, backbone, directory=directory, progress=progress, dedupe=False)
            return Vectors.of_index(index, name)

        gallery = cached_index(catalog, backbone, directory=directory, progress=progress) if catalog else None
        run = ModelRun(spec.label)
        if gallery is not None:
            run.index, run.index_mb = gallery.name, gallery.size_bytes / 1e6
        _run_protocols(run, gallery, vectors_of, sources, plan)
        timing = catalog or sources["pairs"].catalog  # type: ignore[union-attr]
        run.ms_per_image = _ms_per_image(timing, backbone, directory)
        if gallery is None and run.pairs is not None:
            run.index_mb = run.pairs.index_mb
        _stamp(run)
        runs.append(run)
    return Report(str(source) if source else None, runs, plan)


def _read_sources(plan: Plan) -> dict[str, Any]:
    """Every picture source of the plan read up front, so that bad input fails before any heavy work."""
    queries = {_unique_name(p, plan.queries): read_query_set(p) for p in plan.queries}
    inside = (plan.inside or plan.queries) if plan.outside else []
    return {
        "queries": queries,
        "inside": {_unique_name(p, inside): read_catalog(p) for p in inside},
        "outside": {_unique_name(p, plan.outside): read_catalog(p) for p in plan.outside},
        "pairs": read_pairs(plan.pairs) if plan.pairs else None,
    }


def _run_protocols(
    run: ModelRun,
    gallery: Index | None,
    vectors_of: Callable[[Catalog, str], Vectors],
    sources: dict[str, Any],
    plan: Plan,
) -> None:
    embedded: dict[str, Vectors] = {}

    def get(catalog: Catalog, name: str) -> Vectors:
        key = str(Path(catalog.source).resolve())
        if key not in embedded:  # a folder both queried and judged inside is embedded once
            embedded[key] = vectors_of(catalog, name)
        return embedded[key]

    g = Vectors.of_index(gallery) if gallery is not None else None
    if gallery is not None and (sources["queries"] or plan.query_index):
        query_sets = {name: get(c, name) for name, c in sources["queries"].items()}
        if plan.query_index is not None:
            other = plan.query_index
            if not other.same_vectors_as(gallery):
                raise IndexMismatchError(
                    f"index {other.name!r} and {gallery.name!r} were built with different "
                    "backbones; their vectors cannot be compared"
                )
            query_sets[other.name] = Vectors.of_index(other)
        assert g is not None
        # Folders of queries have no metadata: beyond labels, their sets are the groups.
        group_by = (
            plan.group_by
            if plan.group_by == "label"
            or all(plan.group_by in item.metadata for v in query_sets.values() for item in v.items[:1])
            else None
        )
        run.sets = {name: retrieve(v, g, map_at=plan.map_at, group_by=group_by) for name, v in query_sets.items()}
        run.pooled = Evaluation.pooled(list(run.sets.values()))
        if plan.reverse:
            run.reverse = {
                name: retrieve(g, v, map_at=plan.map_at, protocol="reverse") for name, v in query_sets.items()
            }
    if gallery is not None and plan.leave_one_out:
        run.leave_one_out = evaluate_leave_one_out(gallery, map_at=plan.map_at, group_by=plan.group_by)
    if sources["pairs"] is not None:
        run.pairs = evaluate_pairs(sources["pairs"], get(sources["pairs"].catalog, "pairs"), seed=plan.seed)
    if gallery is not None and sources["outside"]:
        run.universe = evaluate_universe(
            gallery,
            [get(c, n) for n, c in sources["inside"].items()],
            [get(c, n) for n, c in sources["outside"].items()],
        )


def _stamp(run: ModelRun) -> None:
    """Index size and embedding time belong to every report of the run."""
    for e in (*run.sets.values(), run.pooled, *run.reverse.values(), run.leave_one_out, run.pairs, run.universe):
        if e is not None:
            e.ms_per_image = run.ms_per_image
            if run.index_mb is not None:
                e.index_mb = run.index_mb


def _unique_name(path: Path, all_paths: Sequence[Path]) -> str:
    names = [Path(p).name for p in all_paths]
    return Path(path).name if names.count(Path(path).name) == 1 else str(path)
