"""A visual look-alike recommender: embed pictures, index catalogs, find the items that look most alike."""

from __future__ import annotations

from .backbones import Backbone, load_backbone, register_backbone, registered_backbones
from .build import BuildReport, build_index
from .catalog import Catalog, Item, read_catalog
from .errors import (
    BuildStopped,
    CatalogError,
    ImageError,
    IndexLoadError,
    IndexMismatchError,
    IndexNotFoundError,
    LimitExceeded,
    ModelError,
    RecommenderError,
    WebSearchUnavailable,
)
from .images import load_image
from .index import Index, Match, list_indexes
from .recommend import Identification, identify, look_alikes, refine
from .version import __version__
from .websearch import Link, search_media

__all__ = [
    "Backbone",
    "BuildReport",
    "BuildStopped",
    "Catalog",
    "CatalogError",
    "Identification",
    "ImageError",
    "Index",
    "IndexLoadError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "Item",
    "LimitExceeded",
    "Link",
    "Match",
    "ModelError",
    "RecommenderError",
    "WebSearchUnavailable",
    "__version__",
    "build_index",
    "identify",
    "list_indexes",
    "load_backbone",
    "load_image",
    "look_alikes",
    "read_catalog",
    "refine",
    "register_backbone",
    "registered_backbones",
    "search_media",
]
