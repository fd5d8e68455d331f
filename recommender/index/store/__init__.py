"""Where an index's vectors live and how they are searched: memory-mapped files (exact) or Milvus (ANN).

`base` holds the `Store` interface, `StoreConfig` (where a build puts vectors), `StoreLocation`
(where a manifest says they are), filters and the NaN checks; `local` the default store; `milvus`
the optional one (imported only when an index asks for it).
"""

from __future__ import annotations

from .base import (
    LITE_DB,
    MILVUS_INDEXES,
    STORE_FORMS,
    Filters,
    Found,
    Store,
    StoreConfig,
    StoreLocation,
    check_finite,
    check_scores,
)
from .local import LocalStore

__all__ = [
    "LITE_DB",
    "MILVUS_INDEXES",
    "STORE_FORMS",
    "Filters",
    "Found",
    "LocalStore",
    "Store",
    "StoreConfig",
    "StoreLocation",
    "check_finite",
    "check_scores",
]
