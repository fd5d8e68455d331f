"""Writing an index: new data files (or a new Milvus collection) under fresh names, then the manifest.

The manifest is the commit point: it is replaced with one atomic rename, so a crash at any moment
leaves either the old manifest (whose data was never touched) or the new one. Files and
collections of earlier versions and crashed builds are removed afterwards, under a lock.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import settings
from ..backbones import Backbone
from ..calibration import Calibration
from ..catalog import Item, Skip
from ..errors import RecommenderError
from ..files import fsync_dir, write_atomic
from .format import encode_items, encode_skips, read_json, safetensors_bytes
from .manifest import MANIFEST, MANIFEST_MAX_BYTES, AdapterInfo, BuildStats, CatalogInfo, DataFiles, Manifest
from .store import StoreConfig, StoreLocation
from .store.milvus import MilvusStore, drop_stale


def write_index(  # noqa: PLR0913 (one keyword per part of an index it writes)
    folder: Path,
    *,
    embeddings: np.ndarray,
    items: Sequence[Item],
    backbone: Backbone,
    catalog: CatalogInfo,
    dtype: str = "float16",
    stats: BuildStats | None = None,
    calibration: Calibration | None = None,
    store: StoreConfig | str | None = None,
    skipped: Sequence[Skip] = (),
    adapted: Mapping[str, str | int | float] | None = None,
) -> Manifest:
    """Write an index atomically (see the module docstring) and return its manifest.

    `store` says where the vectors go (default: `RECOMMENDER_STORE`, else local files); `skipped`,
    the pictures the build left out, goes to a file beside the items (`skipped-<stamp>.json`). A
    backbone with an `adapter` head (`backbones.adapted.Adapted`) has the head written beside the
    vectors and recorded in the manifest, with `adapted` (how it was learnt) as its notes.
    """
    if dtype not in ("float16", "float32"):
        raise RecommenderError(f"dtype must be float16 or float32, not {dtype!r}")
    assert embeddings.shape == (len(items), backbone.dim), (embeddings.shape, len(items), backbone.dim)
    config = StoreConfig.parse(store if store is not None else settings.store())
    # Rounded to the stored precision first, so that every store scores exactly the same vectors.
    data = np.ascontiguousarray(embeddings, dtype=np.float16 if dtype == "float16" else np.float32)
    _check_numbers(data, items, backbone)
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        previous = _previous_location(folder)
        tag = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        emb_name, items_name = f"embeddings-{tag}.safetensors", f"items-{tag}.json"
        if config.kind == "local":
            location = StoreLocation()
            emb_sha = write_atomic(folder / emb_name, safetensors_bytes("embeddings", data))
        else:
            location, emb_name, emb_sha = (
                MilvusStore.write(config, folder=folder, tag=tag, vectors=data, items=items),
                "",
                None,
            )
        items_sha = write_atomic(folder / items_name, json.dumps(encode_items(items), ensure_ascii=False).encode())
        skipped_name = f"skipped-{tag}.json"
        write_atomic(folder / skipped_name, json.dumps(encode_skips(skipped), ensure_ascii=False).encode())
        adapter = None
        if backbone.adapter is not None:
            head_name = f"adapter-{tag}.safetensors"
            head_sha = write_atomic(folder / head_name, backbone.adapter.to_bytes())
            adapter = AdapterInfo(
                file=head_name, sha256=head_sha, rank=backbone.adapter.rank, trained=dict(adapted or {})
            )
        manifest = Manifest(
            backbone=backbone.spec,
            weights=backbone.identity,
            hub=backbone.hub_revisions,
            dim=backbone.dim,
            count=len(items),
            catalog=catalog,
            files=DataFiles(
                items=items_name,
                items_sha256=items_sha,
                embeddings=emb_name or None,
                embeddings_sha256=emb_sha,
                skipped=skipped_name,
            ),
            store=location,
            dtype=dtype,
            backbone_name=backbone.name,
            name=folder.name,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            stats=stats or BuildStats(),
            calibration=calibration,
            adapter=adapter,
        )
        write_atomic(folder / MANIFEST, json.dumps(manifest.to_json(), indent=2, ensure_ascii=False).encode())
        fsync_dir(folder)
        _remove_stale(
            folder, keep={MANIFEST, emb_name, items_name, skipped_name, ".lock", adapter.file if adapter else ""}
        )
        drop_stale(folder, location, previous)
    return manifest


def _check_numbers(data: np.ndarray, items: Sequence[Item], backbone: Backbone) -> None:
    """Refuse vectors that are not numbers before anything is written: an index of NaN would match nothing."""
    bad = np.flatnonzero(~np.isfinite(data).all(axis=1)) if data.size else np.zeros(0, dtype=np.int64)
    if len(bad):
        named = ", ".join(items[int(i)].path for i in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise RecommenderError(
            f"{backbone.name} gave vectors that are not numbers (NaN or infinite) for {len(bad)} of {len(items)} "
            f"pictures ({named}); nothing was written: check the model's weights, or leave those pictures out"
        )


def _previous_location(folder: Path) -> StoreLocation | None:
    """Where the committed version of this index keeps its vectors, if it can be told (to clean up after)."""
    with contextlib.suppress(RecommenderError, ValueError):
        data = read_json(folder / MANIFEST, folder.name, limit=MANIFEST_MAX_BYTES)
        if isinstance(data, dict) and isinstance(data.get("store"), dict):
            return StoreLocation.from_json(data["store"])
    return None


def _remove_stale(folder: Path, keep: set[str]) -> None:
    # Files of earlier versions and temporaries of crashed builds; a concurrent build holds the lock.
    for path in folder.iterdir():
        if (
            path.is_file()
            and path.name not in keep
            and (
                path.name.startswith(("embeddings-", "items-", "skipped-", "derived-", "adapter-"))
                or path.name.endswith(".tmp")
            )
        ):
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One writer per index folder at a time (advisory lock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
