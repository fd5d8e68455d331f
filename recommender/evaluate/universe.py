"""Protocol 4, the another-universe decision: the calibrated threshold on pictures known to be in or out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import calibrate
from ..catalog import Skip
from ..errors import CatalogError
from ..index import Index
from .metrics import best_cut, decision_metrics, rounded
from .sheet import SheetRow
from .vectors import Vectors

#: Other another-universe rules measured beside the index's own (quantiles of `calibration.calibrate`).
RULE_QUANTILES = (0.01, 0.02, 0.10)
_BLOCK = 256


@dataclass(frozen=True)
class Decision:
    """One picture of the another-universe protocol: its best score, best match, and which side it is from."""

    path: Path
    inside: bool
    score: float
    top: Path
    label: str | None
    set: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "inside": self.inside,
            "score": round(self.score, 4),
            "top": str(self.top),
            "label": self.label,
            "set": self.set,
        }


@dataclass
class UniverseEvaluation:
    """The index's calibrated in-catalog decision on pictures known to be inside or outside its universe."""

    index: str
    threshold: float
    decisions: list[Decision]
    rules: list[dict[str, Any]]  # the calibrated rule first, then other quantiles and the best cut
    skipped: list[Skip] = field(default_factory=list)
    ms_per_image: float | None = None
    index_mb: float = 0.0

    def to_dict(self, *, worst: int = 0) -> dict[str, Any]:
        """The decision's metrics and skips as JSON; `worst` adds the `worst` decisions."""
        return {
            "protocol": "another-universe",
            "index": self.index,
            "inside": sum(d.inside for d in self.decisions),
            "outside": sum(not d.inside for d in self.decisions),
            **self.rules[0],
            "rules": self.rules,
            "skipped": [str(s) for s in self.skipped],
            "ms_per_image": rounded(self.ms_per_image, 2),
            "index_mb": round(self.index_mb, 3),
            **({"worst": [d.to_dict() for d in self.worst(worst)]} if worst else {}),
        }

    def worst(self, n: int = 10) -> list[Decision]:
        """Wrong decisions first, the most confident first: refused catalog pictures, accepted outsiders."""
        return sorted(
            self.decisions, key=lambda d: -((self.threshold - d.score) if d.inside else (d.score - self.threshold))
        )[:n]

    def sheet_rows(self, n: int, title: str) -> list[SheetRow]:
        rows = []
        for d in self.worst(n):
            verdict = "kept" if d.score >= self.threshold else "refused"
            sign = ">=" if d.score >= self.threshold else "<"
            rows.append(
                SheetRow(
                    title,
                    (
                        (d.path, f"{d.set}: {verdict}"),
                        (d.top, f"{d.label or ''} {d.score:.2f} {sign} {self.threshold:.2f}"),
                    ),
                )
            )
        return rows


def evaluate_universe(index: Index, inside: Sequence[Vectors], outside: Sequence[Vectors]) -> UniverseEvaluation:
    """Precision, recall and accuracy of "another universe" with the index's calibrated threshold.

    Beside the calibrated rule, the same calibration at other quantiles and the best cut on these
    very pictures (an oracle) show whether the rule is well placed.
    """
    if not inside or not outside:
        raise CatalogError("the another-universe decision needs pictures from inside the catalog and from outside")
    gallery = Vectors.of_index(index)
    decisions = []
    for sets, is_inside in ((inside, True), (outside, False)):
        for vectors in sets:
            for start in range(0, len(vectors.items), _BLOCK):
                rows = np.arange(start, min(start + _BLOCK, len(vectors.items)))
                scores = gallery.scores(vectors.block(rows))
                best = scores.argmax(axis=1)
                decisions += [
                    Decision(
                        vectors.path(r),
                        is_inside,
                        float(scores[i, best[i]]),
                        gallery.path(best[i]),
                        index.items[best[i]].label,
                        vectors.name,
                    )
                    for i, r in enumerate(rows)
                ]
    ins = np.array([d.score for d in decisions if d.inside])
    outs = np.array([d.score for d in decisions if not d.inside])
    calibration = index.calibration
    threshold = calibration.threshold
    rules = [{"rule": f"index calibration ({calibration.method})", **decision_metrics(ins, outs, threshold)}]
    embeddings, labels = np.asarray(index.embeddings), [item.label for item in index.items]
    for q in RULE_QUANTILES:
        other = calibrate(embeddings, labels, quantile=q)
        rules.append({"rule": f"{q:.0%} quantile", **decision_metrics(ins, outs, other.threshold)})
    rules.append({"rule": "best cut on these pictures (oracle)", **decision_metrics(ins, outs, best_cut(ins, outs))})
    embedded = [v for v in (*inside, *outside) if v.seconds]
    ms = 1000 * sum(v.seconds for v in embedded) / sum(len(v.items) for v in embedded) if embedded else None
    return UniverseEvaluation(
        index=index.name,
        threshold=threshold,
        decisions=decisions,
        rules=rules,
        skipped=[s for v in (*inside, *outside) for s in v.skipped],
        ms_per_image=ms,
        index_mb=index.size_bytes / 1e6,
    )
