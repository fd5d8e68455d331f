"""The default store: a memory-mapped (N, D) float16/float32 array in the index folder, searched exactly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from ...catalog import Item
from ...hardware import cpu_has_native_bf16
from ...ranking import top_k
from .base import CHUNK_ROWS, Filters, Found, Store, StoreLocation, check_scores, product, scores_of

# A first pass in bf16 rounds each factor to 8 significant bits (relative error <= 2**-8), so a
# product is off by at most 2 * 2**-8 of |q_i x_i| and a cosine of unit vectors by at most 2**-7.
# Every item whose bf16 score is within twice that of the k-th bf16 score is re-scored exactly
# (1% slack for float16 rows whose norm is not exactly 1): the result is the exact top k.
_BF16_MARGIN = 2 * 2**-7 * 1.01


class LocalStore(Store):
    """Today's embedded default: a memory-mapped (N, D) float16/float32 array searched exactly with BLAS."""

    kind = "local"
    exact = True

    def __init__(
        self, embeddings: np.ndarray, items: Sequence[Item] | Callable[[], Sequence[Item]], *, label: str = ""
    ) -> None:
        super().__init__(*embeddings.shape)
        self.embeddings = embeddings  # (N, D), memory-mapped, unit rows
        # For filters, evaluated on the items themselves; a function when the index reads them lazily.
        self._items = items
        self.label = label  # the index's name, for errors

    @property
    def items(self) -> Sequence[Item]:
        return self._items() if callable(self._items) else self._items

    @property
    def location(self) -> StoreLocation:
        return StoreLocation()

    def vectors(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        return self.embeddings if rows is None else self.embeddings[np.asarray(rows, dtype=np.int64)]

    @cached_property
    def _dense(self) -> np.ndarray | None:
        # Small indexes are kept as one float32 matrix: a single BLAS call per query.
        if self.embeddings.size * 4 <= 256 << 20:
            return np.ascontiguousarray(self.embeddings, dtype=np.float32)
        return None

    def scores(self, queries: np.ndarray) -> np.ndarray:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        scores = product(q, self._dense) if self._dense is not None else scores_of(q, self.embeddings)
        return check_scores(scores, self.label)

    @cached_property
    def _coarse(self) -> Any:
        """(N, D) bf16 torch copy of a large index for a fast first pass, where the CPU computes bf16 natively.

        None for small indexes (one float32 matrix is faster) and for CPUs that would emulate bf16.
        """
        if self._dense is not None or not cpu_has_native_bf16():
            return None
        import torch

        coarse = torch.empty((self.count, self.dim), dtype=torch.bfloat16)
        for start in range(0, self.count, CHUNK_ROWS):
            block = np.asarray(self.embeddings[start : start + CHUNK_ROWS], dtype=np.float32)  # (B, D)
            coarse[start : start + len(block)] = torch.from_numpy(block).to(torch.bfloat16)
        return coarse

    def search(
        self, queries: np.ndarray, k: int, *, where: Filters | None = None, exclude: Sequence[int] = ()
    ) -> Found:
        if self._coarse is not None:
            return self._search_two_pass(np.atleast_2d(np.asarray(queries, dtype=np.float32)), k, where, exclude)
        scores = self.scores(queries)  # (Q, N)
        if where is not None:
            scores[:, ~where.mask(self.items)] = -np.inf
        if len(exclude):
            scores[:, np.asarray(exclude, dtype=np.int64)] = -np.inf
        found = []
        for row, order in zip(scores, top_k(scores, k)):
            order = order[np.isfinite(row[order])]  # filtered and excluded items are never matches
            found.append((order, row[order]))
        return found

    def _search_two_pass(self, queries: np.ndarray, k: int, where: Filters | None, exclude: Sequence[int]) -> Found:
        """Exact top k of a large index: bf16 scores for everything, exact float32 ones near the top."""
        import torch

        coarse = check_scores(
            (torch.from_numpy(queries).to(torch.bfloat16) @ self._coarse.T).float().numpy(), self.label
        )  # (Q, N)
        if where is not None:
            coarse[:, ~where.mask(self.items)] = -np.inf
        if len(exclude):
            coarse[:, np.asarray(exclude, dtype=np.int64)] = -np.inf
        k = min(k, self.count)
        found = []
        for q, row in zip(queries, coarse):
            kth = np.partition(row, self.count - k)[self.count - k]  # the k-th best first-pass score
            cutoff = kth - _BF16_MARGIN if np.isfinite(kth) else -np.inf
            candidates = np.flatnonzero((row >= cutoff) & np.isfinite(row))  # sorted: friendly to the memory map
            exact = np.asarray(self.embeddings[candidates], dtype=np.float32) @ q  # (C,)
            best = np.argsort(-exact, kind="stable")[:k]
            found.append((candidates[best], exact[best]))
        return found
