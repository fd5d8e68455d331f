"""The metrics every protocol reports: recall@k of naming, AP@k, pair ranks, and the in-catalog decision."""

from __future__ import annotations

from typing import Any

import numpy as np

RECALL_AT = (1, 5, 10)
MAP_AT = 5


def label_ranks(label_scores: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(Q,) rank of each query's true label among (Q, L) label scores (1 = named right); 0 where `true` is -1.

    Ties count in the query's favour: the rank is one plus the number of labels scoring strictly higher.
    """
    known = true >= 0
    own = label_scores[np.arange(len(true)), np.where(known, true, 0)]
    return np.where(known, 1 + (label_scores > own[:, None]).sum(axis=1), 0)


def average_precision(relevant: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """(Q,) AP@k from the (Q, k) relevance of each query's k best items, best first.

    The sum of precision@i over the ranks i that hit, divided by min(k, relevant items in the
    gallery), as in the fashion seed; 0 when the gallery holds nothing relevant.
    """
    relevant = np.asarray(relevant, dtype=bool)
    k = relevant.shape[1]
    precision = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(k, np.asarray(n_relevant))
    total = (precision * relevant).sum(axis=1)
    return np.divide(total, denominator, out=np.zeros(len(total)), where=denominator > 0)


def recall_at(ranks: np.ndarray, k: int) -> float:
    """The fraction of queries whose true label ranks within the k best (rank 0, unknown, never does)."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 1) & (ranks <= k))) if ranks.size else 0.0


def pair_ranks(true_scores: np.ndarray, foil_scores: np.ndarray) -> np.ndarray:
    """(P,) rank of the true right picture among itself and its (P, F) foils; ties go to the true one."""
    return 1 + (np.asarray(foil_scores) > np.asarray(true_scores)[:, None]).sum(axis=1)


def decision_metrics(inside: np.ndarray, outside: np.ndarray, threshold: float) -> dict[str, Any]:
    """How a threshold on the best score sorts pictures of the catalog's universe from the others.

    A picture scoring below the threshold is refused ("another universe"), the decision's positive:
    precision = refused pictures that are truly outside, recall = outside pictures refused.
    `kept` is the fraction of in-catalog pictures accepted; accuracy counts every picture once,
    balanced accuracy weighs both sides equally (the outside set is usually small).
    """
    inside, outside = np.asarray(inside, dtype=np.float64), np.asarray(outside, dtype=np.float64)
    refused_out, refused_in = int((outside < threshold).sum()), int((inside < threshold).sum())
    kept = 1 - refused_in / len(inside) if len(inside) else None
    refused = refused_out / len(outside) if len(outside) else None
    right = (len(inside) - refused_in) + refused_out
    return {
        "threshold": round(float(threshold), 4),
        "kept": rounded(kept),
        "refused": rounded(refused),
        "precision": rounded(refused_out / (refused_out + refused_in) if refused_out + refused_in else None),
        "recall": rounded(refused),
        "accuracy": rounded(right / (len(inside) + len(outside)) if len(inside) + len(outside) else None),
        "balanced_accuracy": rounded((kept + refused) / 2 if kept is not None and refused is not None else None),
    }


def best_cut(inside: np.ndarray, outside: np.ndarray) -> float:
    """The threshold with the best balanced accuracy on these very pictures (an oracle, for reference)."""
    inside, outside = np.sort(inside), np.sort(outside)
    candidates = np.unique(np.concatenate([inside, outside, [np.inf]]))
    kept = 1 - np.searchsorted(inside, candidates, side="left") / max(1, len(inside))
    refused = np.searchsorted(outside, candidates, side="left") / max(1, len(outside))
    return float(candidates[int(np.argmax(kept + refused))])


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
