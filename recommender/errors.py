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


class LimitExceeded(RecommenderError):
    """A web upload goes past one of the server's limits: pictures, CSV rows, unpacked bytes or disk quota."""


class BuildStopped(RecommenderError):
    """A build was stopped before it finished: its client went away, or it ran past its time limit."""


class WebSearchUnavailable(RecommenderError):
    """Related links cannot be had now: no network, a timeout, a rate limit, or the provider failed or is off.

    `reason` is one line for people; `retryable` says whether trying again at once may help (a
    timeout or a dropped connection, not a missing network); `rate_limited` asks callers to back off.
    """

    def __init__(self, reason: str, *, retryable: bool = False, rate_limited: bool = False) -> None:
        self.reason = " ".join(str(reason).split())  # one line, whatever the provider said
        self.retryable = retryable
        self.rate_limited = rate_limited
        super().__init__(f"web search unavailable: {self.reason}")


class IndexNotReady(RecommenderError):
    """The default index is still being built (the app's first start serves its page meanwhile)."""
