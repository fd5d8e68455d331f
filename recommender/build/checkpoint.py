"""Resumable builds: vectors embedded so far, in shards keyed by content hash, each written atomically.

A build adds every embedded batch here; a shard is written (to a temporary name, flushed, then
renamed) every `seconds` or `rows`, so an interruption at any moment loses at most that much work
and never leaves a half-written shard that counts. The next build of the same index with the same
backbone and storage precision finds the shards and embeds only the pictures they lack. Once the
index is committed, the checkpoint is deleted. Shards live under `<index folder>/.build/<key>/`,
where the key names the backbone spec, its weights and the dtype, so that nothing embedded one way
is ever re-used for a build of another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..backbones import Backbone
from ..files import fsync_dir, write_atomic

#: A shard is written at least this often while vectors are coming in (seconds).
CHECKPOINT_SECONDS = 30.0
#: ... and whenever this many vectors wait (the most an interruption loses on a fast GPU).
CHECKPOINT_ROWS = 65536
FOLDER = ".build"


class Checkpoint:
    """Shards of (content hash, float32 vector) pairs for one index folder, backbone and dtype."""

    def __init__(
        self,
        folder: Path,
        backbone: Backbone,
        dtype: str,
        *,
        seconds: float = CHECKPOINT_SECONDS,
        rows: int = CHECKPOINT_ROWS,
    ) -> None:
        key = hashlib.sha256(json.dumps([backbone.spec.to_json(), backbone.identity, dtype], sort_keys=True).encode())
        self.root = folder / FOLDER
        self.dir = self.root / key.hexdigest()[:16]
        self.dim = backbone.dim
        self.seconds = seconds
        self.rows = rows
        self.written = 0  # shards written by this build
        self._hashes: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._last = time.monotonic()

    def load(self) -> dict[str, np.ndarray]:
        """Content hash -> (D,) float32 vector, from every complete shard of an earlier, unfinished build.

        A shard that is not what `flush` writes (too large, other shapes or types, vectors that are
        not numbers: a damaged disk, or an index folder from elsewhere) costs only its own work.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        # Far more than a shard written by `flush` can be: `rows` plus one batch of hashes and vectors.
        largest = 2 * max(self.rows, CHECKPOINT_ROWS) * (32 + 4 * self.dim) + (1 << 20)
        found: dict[str, np.ndarray] = {}
        for path in sorted(self.dir.glob("shard-*.safetensors")) if self.dir.is_dir() else []:
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_size > largest:
                    continue
                data = load_file(path)
                hashes, vectors = data["hashes"], data["vectors"]  # (n, 32) uint8, (n, D) float32
            except (SafetensorError, KeyError, OSError, ValueError):
                continue  # cannot happen through the atomic rename; a damaged disk costs only that shard's work
            if (
                hashes.dtype == np.uint8
                and hashes.ndim == 2
                and hashes.shape[1] == 32
                and vectors.dtype == np.float32
                and vectors.shape == (len(hashes), self.dim)
            ):
                finite = np.isfinite(vectors).all(axis=1)  # (n,) a NaN is embedded again, never re-used
                found.update(zip((bytes(h).hex() for h in hashes[finite]), vectors[finite]))
        return found

    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Record newly embedded pictures; writes a shard when enough time or vectors have gathered."""
        self._hashes.extend(hashes)
        self._vectors.append(np.asarray(vectors, dtype=np.float32))
        if len(self._hashes) >= self.rows or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        """Write what is waiting as one shard."""
        if not self._hashes:
            return
        from safetensors.numpy import save

        hashes = np.frombuffer(b"".join(bytes.fromhex(h) for h in self._hashes), dtype=np.uint8).reshape(-1, 32)
        data = save(
            {"hashes": hashes, "vectors": np.ascontiguousarray(np.concatenate(self._vectors))},
            metadata={"format": "recommender-checkpoint"},
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.strftime('%Y%m%d-%H%M%S')}-{self.written:06d}-{hashlib.sha256(data).hexdigest()[:8]}"
        write_atomic(self.dir / f"{name}.safetensors", data)
        fsync_dir(self.dir)
        self.written += 1
        self._hashes, self._vectors = [], []
        self._last = time.monotonic()

    def clear(self) -> None:
        """Forget every checkpoint of this index folder (after its index is committed)."""
        self._hashes, self._vectors = [], []
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root)
