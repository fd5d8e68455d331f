"""Whether a picture belongs to a catalog's universe: the threshold, learnt from the catalog's own items."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ranking import LabelGroups

#: How many catalog items the leave-one-out calibration uses as queries (all of them in small catalogs).
CALIBRATION_QUERIES = 2000
#: A picture is "in the catalog's universe" when it matches the catalog at least as well as all but
#: this fraction of catalog items match their nearest item of another label (see `calibrate`).
OUTSIDE_QUANTILE = 0.05
#: How many catalog scores the backbone's prior threshold counts as (`calibrate(prior=...)`): in a catalog
#: of 20 pictures the prior has 60% of the say, in the 1,298-picture Pokémon catalog 2%.
PRIOR_WEIGHT = 30
#: Fewer scores than this and the answer says the catalog is too small to be sure of its threshold.
SMALL_CATALOG = 100


@dataclass(frozen=True)
class Calibration:
    """How an index tells pictures of its universe from the others: the threshold, and how it was learnt.

    Stored in the manifest (`calibration`); `nearest_else` and `same_label` summarise the scores
    it was learnt from (5th percentile, median, 95th), for people.
    """

    threshold: float
    method: str = "stored threshold"
    queries: int = 0
    nearest_else: Mapping[str, float] | None = None
    same_label: Mapping[str, float] | None = None
    #: Too few catalog scores to be sure (fewer than `SMALL_CATALOG`): answers say so.
    small: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold, "method": self.method, "queries": self.queries}
        if self.small:
            out["small"] = True
        if self.nearest_else is not None:
            out["nearest_else"] = dict(self.nearest_else)
        if self.same_label is not None:
            out["same_label"] = dict(self.same_label)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        """Parse a manifest's `calibration`; `ValueError` unless the threshold is a finite number."""
        threshold = data.get("threshold") if isinstance(data, dict) else None
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise ValueError("bad calibration threshold")
        summaries = {key: data.get(key) for key in ("nearest_else", "same_label")}
        if not all(value is None or _is_summary(value) for value in summaries.values()):
            raise ValueError("bad calibration summary")
        queries = data.get("queries", 0)
        return cls(
            threshold=float(threshold),
            method=str(data.get("method", "stored threshold"))[:200],
            queries=queries if isinstance(queries, int) and not isinstance(queries, bool) else 0,
            **summaries,
            small=data.get("small") is True,
        )


def _is_summary(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    )


def calibrate(
    embeddings: np.ndarray,
    labels: Sequence[str | None],
    *,
    queries: int = CALIBRATION_QUERIES,
    seed: int = 0,
    quantile: float = OUTSIDE_QUANTILE,
    prior: float | None = None,
) -> Calibration:
    """The score above which a picture counts as "from this catalog's universe", learnt from the catalog.

    Each sampled catalog item is matched against all the others, leaving out itself and, in a
    labeled catalog, every item of its own label: its best remaining score is how close a
    picture of *something else of the same kind* comes to the catalog. The threshold is the 5th
    percentile of those scores: a query that matches the catalog worse than 95% of its own items
    match their nearest different neighbour is "from another universe".

    Why not a cut between same-label and other-label scores? A catalog whose labels hold one
    picture per view (the Pokémon catalog: a sprite and an artwork) has no same-view peer to
    learn from; measured on held-out Pokémon sprites and non-Pokémon drawings, this rule kept
    98.5% of Pokémon and refused 100% of the drawings, within 0.2% of the best possible cut.
    `quantile` replaces the 5% for comparisons (`evaluate` measures other rules with it).

    `prior` is the backbone's threshold on a large reference catalog (`Backbone.threshold_prior`):
    the catalog's own quantile and the prior are averaged, the prior counting as `PRIOR_WEIGHT`
    scores, so that a catalog of tens of pictures (whose 5% quantile is one or two scores) gets a
    sane threshold and a large one keeps its own. Fewer than `SMALL_CATALOG` scores mark the
    calibration `small`.
    """
    n = len(labels)
    if n < 2:
        threshold = 0.5 if prior is None else prior
        return Calibration(threshold=threshold, method="default (fewer than two items)", small=True)
    codes = LabelGroups.of(labels).codes  # (N,) label position or -1
    picked = np.sort(np.random.default_rng(seed).choice(n, size=min(n, queries), replace=False))  # (Q,)
    inside, outside, _ = _leave_one_out(embeddings, codes, picked)
    labeled = bool(np.isfinite(outside).any() and (codes[picked] >= 0).any())
    if labeled:
        # Items whose label covers the whole catalog have no "something else" to match.
        nearest_else = outside[np.isfinite(outside)]
        method = "nearest item of another label"
    else:
        nearest_else = np.maximum(inside, outside)
        method = "nearest other item (unlabeled catalog)"
    threshold = float(np.quantile(nearest_else, quantile))
    method = f"{quantile:.0%} quantile of each item's score to its {method}"
    if prior is not None:
        m = len(nearest_else)
        threshold = (m * threshold + PRIOR_WEIGHT * prior) / (m + PRIOR_WEIGHT)
        method += f", averaged with the backbone's prior {prior:.3f} (worth {PRIOR_WEIGHT} scores)"
    same = inside[np.isfinite(inside)] if labeled else inside[:0]
    return Calibration(
        threshold=round(threshold, 4),
        small=len(nearest_else) < SMALL_CATALOG,
        method=method,
        queries=len(picked),
        nearest_else=_summary(nearest_else),
        same_label=_summary(same) if len(same) else None,  # for information: how alike labels are
    )


def _leave_one_out(
    embeddings: np.ndarray,
    codes: np.ndarray,
    picked: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each picked item: best score to another item of its label, to another label, and to any other item.

    Blocks of queries against blocks of items, so that memory stays small for millions of items.
    """
    q_block, n_block = 256, 1 << 16
    inside = np.full(len(picked), -np.inf, dtype=np.float32)
    outside = np.full(len(picked), -np.inf, dtype=np.float32)
    for q0 in range(0, len(picked), q_block):
        rows = picked[q0 : q0 + q_block]
        queries = np.asarray(embeddings[rows], dtype=np.float32)  # (b, D)
        qcodes = codes[rows]
        for n0 in range(0, len(codes), n_block):
            block = np.asarray(embeddings[n0 : n0 + n_block], dtype=np.float32)  # (c, D)
            sims = queries @ block.T  # (b, c)
            own = rows - n0
            hit = (own >= 0) & (own < len(block))
            sims[np.flatnonzero(hit), own[hit]] = -np.inf  # not itself
            same = (qcodes[:, None] == codes[None, n0 : n0 + len(block)]) & (qcodes[:, None] >= 0)
            inside[q0 : q0 + len(rows)] = np.maximum(
                inside[q0 : q0 + len(rows)], np.where(same, sims, -np.inf).max(axis=1)
            )
            outside[q0 : q0 + len(rows)] = np.maximum(
                outside[q0 : q0 + len(rows)], np.where(same, -np.inf, sims).max(axis=1)
            )
    return inside, outside, np.maximum(inside, outside)


def _summary(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.05, 0.5, 0.95])
    return {"p05": round(float(q[0]), 4), "median": round(float(q[1]), 4), "p95": round(float(q[2]), 4)}
