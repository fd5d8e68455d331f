"""The named errors the library raises; the CLI and the app turn them into one-line messages."""

from __future__ import annotations


class RecommenderError(Exception):
    """Base of every error the library raises on purpose: bad input, missing models, bad indexes."""


class ImageError(RecommenderError):
    """A picture could not be read: not an image, truncated, too large, or otherwise unusable."""


class ModelError(RecommenderError):
    """A backbone is unknown, misconfigured, or its weights cannot be had."""


class CatalogError(RecommenderError):
    """A catalog source cannot be read, or yields no usable item."""


class IndexLoadError(RecommenderError):
    """An index is missing, corrupt, truncated, or does not match what it is used with."""


class IndexNotFoundError(IndexLoadError):
    """No index of that name exists in the index folder."""


class IndexMismatchError(IndexLoadError):
    """An index was built with another backbone, settings or format than the one in use."""
