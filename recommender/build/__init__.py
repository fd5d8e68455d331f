"""Building indexes: the one embedding pipeline, its local and Ray executors, checkpoints, and `build_index`.

`pipeline` reads, hashes, decodes and embeds catalog pictures behind an `Executor` (`LocalExecutor`
here, `RayExecutor` in `distributed`); `checkpoint` keeps what an interrupted build embedded;
`builder` puts them together into `build_index(source, name=..., config=BuildConfig(...))`.
"""

from __future__ import annotations

from .builder import BuildConfig, BuildReport, build_index
from .checkpoint import Checkpoint
from .distributed import RayExecutor
from .pipeline import Embedded, Executor, LocalExecutor, Outcome, embed_items

__all__ = [
    "BuildConfig",
    "BuildReport",
    "Checkpoint",
    "Embedded",
    "Executor",
    "LocalExecutor",
    "Outcome",
    "RayExecutor",
    "build_index",
    "embed_items",
]
