"""The catalog's principal axes: the similarity matrix's `features=K` and the 2-D map both stand on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RecommenderError
from ..index import Index
from ..runtime import Runtime, default_runtime

# Rows per chunk when the PCA scans a memory-mapped catalog, so a large float16 index is never copied whole.
_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class PrincipalComponents:
    """The catalog's principal axes (the heatmap's `features=K` and the 2-D map both use them)."""

    mean: np.ndarray  # (D,) float32 catalog mean
    components: np.ndarray  # (R, D) float32 principal axes, by decreasing variance
    variance: np.ndarray  # (R,) float64 variance along each axis


def principal_components(index: Index, *, runtime: Runtime | None = None) -> PrincipalComponents:
    """PCA of the whole catalog's embeddings, computed once per index version and kept in the runtime's cache."""
    cache = (runtime or default_runtime()).pca
    key = (str(index.folder.resolve()), index.version)
    cached = cache.get(key)
    if cached is not None:
        return cached
    n, d = index.embeddings.shape
    if n < 2:
        raise RecommenderError(f"index {index.name!r} has {n} item: principal components need at least 2")
    if n <= d:
        # Fewer items than dimensions: the SVD of the centred (N, D) matrix is the cheaper route.
        x = np.asarray(index.embeddings, dtype=np.float64)
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)  # vt: (min(N, D), D)
        variance, axes = s**2 / n, vt
    else:
        # Many items: accumulate the (D, D) second moment chunk by chunk, then diagonalise it.
        total = np.zeros(d, dtype=np.float64)
        gram = np.zeros((d, d), dtype=np.float64)
        for start in range(0, n, _CHUNK_ROWS):
            block = np.asarray(index.embeddings[start : start + _CHUNK_ROWS], dtype=np.float64)  # (B, D)
            total += block.sum(axis=0)
            gram += block.T @ block
        mean = total / n
        values, vectors = np.linalg.eigh(gram / n - np.outer(mean, mean))  # ascending
        variance, axes = values[::-1], vectors[:, ::-1].T
    keep = variance > max(float(variance.max()), 1e-30) * 1e-9  # drop axes with no variance at all
    if not keep.any():
        raise RecommenderError(f"index {index.name!r}: all embeddings are identical, nothing to decompose")
    pca = PrincipalComponents(
        mean=mean.astype(np.float32),
        components=np.ascontiguousarray(axes[keep], dtype=np.float32),
        variance=variance[keep],
    )
    cache.put(key, pca, nbytes=pca.components.nbytes)
    return pca
