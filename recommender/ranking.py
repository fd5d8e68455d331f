"""Ranking scores: the k best columns of a score matrix, and items grouped by label for label-level scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) column indices of each row's k highest of (Q, N) scores, best first (ties keep column order)."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


@dataclass(frozen=True)
class LabelGroups:
    """Items grouped by label: what `identify`, `evaluate` and the calibration rank labels with.

    A label scores what its best item scores; `best` computes that for a batch of queries with
    one `maximum.reduceat` over the items sorted by label.
    """

    names: list[str]  # (L,) the distinct labels, sorted
    codes: np.ndarray  # (N,) int: each item's position in `names`, -1 when it has no label
    order: np.ndarray = field(repr=False)  # (M,) labeled items' rows, sorted by label (stable)
    starts: np.ndarray = field(repr=False)  # (L,) where each label's run begins in `order`

    @classmethod
    def of(cls, labels: Sequence[str | None]) -> LabelGroups:
        names = sorted({label for label in labels if label is not None})
        position = {label: i for i, label in enumerate(names)}
        codes = np.array([position[label] if label is not None else -1 for label in labels], dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        order = order[codes[order] >= 0]
        starts = np.searchsorted(codes[order], np.arange(len(names)))
        return cls(names, codes, order, starts)

    @property
    def counts(self) -> np.ndarray:
        """(L,) items per label."""
        return np.bincount(self.codes[self.codes >= 0], minlength=len(self.names))

    def members(self, code: int) -> np.ndarray:
        """The rows of the items with label number `code`, in row order."""
        end = self.starts[code + 1] if code + 1 < len(self.starts) else len(self.order)
        return self.order[self.starts[code] : end]

    def code_of(self, labels: Sequence[str | None]) -> np.ndarray:
        """(Q,) positions in `names` of other pictures' labels (-1 for a label these items lack, or none)."""
        position = {label: i for i, label in enumerate(self.names)}
        return np.array([position.get(label, -1) if label is not None else -1 for label in labels], dtype=np.int64)

    def best(self, scores: np.ndarray) -> np.ndarray:
        """(Q, L) best item score per label, from (Q, N) item scores; columns follow `names`."""
        if not len(self.starts):
            return np.zeros((scores.shape[0], 0), dtype=np.float32)
        return np.maximum.reduceat(scores[:, self.order], self.starts, axis=1)
