"""The user's questions of an index: what looks like this, which one is it, or is it from another universe."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backbones import Backbone
from .catalog import quoted
from .errors import RecommenderError
from .images import DECODE_MAX_SIDE, ImageSource, describe, load_image, read_bytes
from .index import Index, Match

# Scores this close to 1 mean "the same picture" (float16 storage loses the last digits).
_SAME_PICTURE = 0.9995


@dataclass(frozen=True)
class LabelScore:
    """A label's score for a query: the best score among its items, and that item."""

    label: str
    score: float
    best: Match


@dataclass(frozen=True)
class Identification:
    """The answer to "which one is this?": the label, its score, the decision, and the evidence."""

    label: str | None
    score: float
    in_catalog: bool
    threshold: float
    message: str
    another_image: Path | None
    matches: list[Match]
    labels: list[LabelScore] = field(default_factory=list)
    named_with: str | None = None
    named_score: float | None = None
    shared_with: list[str] = field(default_factory=list)  # other labels whose best match is the very same picture

    def ranked(self) -> list[tuple[str, float]]:
        """(name, score) best first, each name once: the ranked labels, else (unlabeled) the look-alikes.

        A look-alike's name is its label or, without one, its id; a name met again keeps its first
        (best) score, so a catalog with many pictures of one label lists that label once.
        """
        if self.labels:
            return [(ranked.label, ranked.score) for ranked in self.labels]
        best: dict[str, float] = {}
        for match in self.matches:
            best.setdefault(match.label or match.item.id, match.score)
        return list(best.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": round(self.score, 6),
            "in_catalog": self.in_catalog,
            "threshold": round(self.threshold, 6),
            "message": self.message,
            "another_image": str(self.another_image) if self.another_image else None,
            "matches": [m.to_dict() for m in self.matches],
            "labels": [{"label": ls.label, "score": round(ls.score, 6), "id": ls.best.item.id} for ls in self.labels],
            "named_with": self.named_with,
            "named_score": None if self.named_score is None else round(self.named_score, 6),
            "shared_with": self.shared_with,
        }


def look_alikes(
    image: ImageSource,
    index: Index,
    *,
    k: int = 10,
    where: Mapping[str, str | Sequence[str]] | None = None,
    backbone: Backbone | None = None,
    liked: Sequence[str] = (),
    disliked: Sequence[str] = (),
    name: str | None = None,
) -> list[Match]:
    """The k catalog items that look most like `image`, best first.

    The picture is embedded with the index's own backbone (loaded once and cached) unless one is
    given, in which case it must match the index's (`IndexMismatchError` otherwise). `liked` and
    `disliked` item ids steer the ranking (see `refine`); disliked items are left out. `name` is
    how errors call the picture (for bytes).
    """
    query = refine(embed_query(image, index, backbone=backbone, name=name), index, liked=liked, disliked=disliked)
    return index.search(query, k=k, where=where, exclude=disliked)


#: Rocchio's weights for the query, the mean of liked items and the mean of disliked items.
#: Chosen with benchmarks/feedback.py (a simulated user on held-out Pokémon sprites): 64% of wrong answers fixed
#: in one round, against 62% with (1, 0.75, 0.25) and 22% for merely dropping the disliked item; see the README.
FEEDBACK_WEIGHTS = (1.0, 1.0, 0.5)


def refine(
    query: np.ndarray,
    index: Index,
    *,
    liked: Sequence[str] = (),
    disliked: Sequence[str] = (),
    weights: tuple[float, float, float] = FEEDBACK_WEIGHTS,
) -> np.ndarray:
    """Move a (D,) query vector toward the liked items and away from the disliked ones (Rocchio).

    q' = a*q + b*mean(liked) - c*mean(disliked), renormalised; ids unknown to the index are an error.
    """
    a, b, c = weights
    moved = a * np.asarray(query, dtype=np.float32)
    if liked:
        moved = moved + b * np.mean([index.vector(i) for i in liked], axis=0)
    if disliked:
        moved = moved - c * np.mean([index.vector(i) for i in disliked], axis=0)
    norm = float(np.linalg.norm(moved))
    if norm < 1e-6:  # everything cancelled out: keep the original question
        return np.asarray(query, dtype=np.float32)
    return (moved / norm).astype(np.float32)


def embed_query(
    image: ImageSource, index: Index, *, backbone: Backbone | None = None, name: str | None = None
) -> np.ndarray:
    """(D,) unit vector of a query picture, with the backbone the index was built with."""
    if backbone is None:
        backbone = index.backbone()
    else:
        index.check_backbone(backbone)
    # Decoded like catalog pictures, no larger than the model needs: the same pixels for the same
    # file, and a 9000x9000 upload costs a fraction of a second.
    picture = load_image(image, name=name, max_side=DECODE_MAX_SIDE, fit_to=backbone.decode_size)
    vector = backbone.embed([picture])[0]
    if not np.isfinite(vector).all():  # a NaN query would match nothing, silently
        raise RecommenderError(
            f"{name or describe(image)}: {backbone.name} gave no usable vector for this picture "
            "(not a number); check the model's weights"
        )
    return vector


def identify(
    image: ImageSource,
    index: Index,
    *,
    k: int = 10,
    reference: Index | None = None,
    backbone: Backbone | None = None,
    name: str | None = None,
    liked: Sequence[str] = (),
    disliked: Sequence[str] = (),
    top_labels: int = 5,
) -> Identification:
    """Which catalog item (label) is this picture, or is it from another universe?

    Labeled index: labels are ranked by their best-matching item, and the answer carries the
    label, its score, the calibrated in-catalog decision and *another* picture of that label.
    Unlabeled index: the closest picture is found; with a labeled `reference` index (built
    with any backbone) that picture is named through it. `name` is how errors call the picture;
    `liked` and `disliked` item ids steer the look-alikes (`matches`, see `refine`) and nothing
    else: the label, its score and the decision answer the picture itself. `top_labels` is how
    many labels the answer ranks.
    """
    name = name or describe(image)
    if isinstance(image, (str, os.PathLike)):
        image = read_bytes(image)  # once: hashed to recognise catalog pictures, then decoded
    digest = hashlib.sha256(image).hexdigest() if isinstance(image, bytes) else None
    query = embed_query(image, index, backbone=backbone, name=name)  # (D,)
    # What the picture *is* comes from the picture alone: feedback steers the look-alikes, and the
    # calibrated threshold was fitted on unsteered scores (a 👍 on another item must not rename it).
    steered = refine(query, index, liked=liked, disliked=disliked)
    scores = index.scores(query)[0]  # (N,)
    matches = index.search(steered, k=k, exclude=disliked)
    threshold = index.calibration.threshold
    best_score = float(scores.max())
    in_catalog = best_score >= threshold
    closest = best_match(index, scores)
    if reference is None:
        if not index.labeled:
            answer = _unlabeled_answer(closest, in_catalog, threshold)
            return dataclasses.replace(answer, message=_unsure(index, answer.message), matches=matches)
        labels = rank_labels(index, scores, top=top_labels)
        top = labels[0]
        shared = same_picture_labels(index, scores, top)
        another = another_picture(index, top.label, scores, exclude_sha256=digest)
        return Identification(
            label=top.label,
            score=top.score,
            in_catalog=in_catalog,
            threshold=threshold,
            message=_unsure(index, _message([top.label, *shared], top.score, in_catalog, index.domain)),
            another_image=another,
            matches=matches,
            labels=labels,
            shared_with=shared,
        )
    if not reference.labeled:
        raise RecommenderError(f"index {reference.name!r} has no labels, so it cannot name pictures")
    # Name the closest picture of this catalog (unsteered) through the reference catalog.
    named = identify(closest.path, reference, k=k, top_labels=top_labels)
    return Identification(
        label=named.label,
        score=best_score,
        in_catalog=in_catalog,
        threshold=threshold,
        message=_message(
            [named.label, *named.shared_with] if named.label else [],
            best_score,
            in_catalog,
            reference.domain,
            closest=closest,
            named_score=named.score,
        ),
        another_image=named.another_image,
        matches=matches,
        labels=named.labels,
        named_with=reference.name,
        named_score=named.score,
        shared_with=named.shared_with,
    )


def rank_labels(index: Index, scores: np.ndarray, *, top: int = 5) -> list[LabelScore]:
    """Labels ranked by their best item's score (one (N,) score vector -> the `top` labels)."""
    codes = index.label_codes  # (N,) label position or -1
    best = index.label_scores(scores[None, :])[0]  # (L,)
    order = np.argsort(-best, kind="stable")[:top]
    ranked = []
    for rank, code in enumerate(order, start=1):
        members = np.flatnonzero(codes == code)
        i = int(members[np.argmax(scores[members])])
        item = index.items[i]
        ranked.append(
            LabelScore(
                label=index.label_names[code],
                score=float(best[code]),
                best=Match(rank=rank, score=float(scores[i]), item=item, path=index.path_of(item)),
            )
        )
    return ranked


def same_picture_labels(index: Index, scores: np.ndarray, top: LabelScore) -> list[str]:
    """The other labels with an item that is the very picture (same bytes) of `top`'s best match, sorted.

    Two labels may share one picture (an artist drew two flags alike): the answer is then either,
    and says so, rather than one of them picked by the order of their names. Only the items scoring
    what that picture scores are looked at (one (N,) comparison), however many labels tie.
    """
    sha = top.best.item.sha256
    if sha is None:
        return []
    tied = (index.items[i] for i in np.flatnonzero(scores >= top.score - 1e-6))  # the same vector scores the same
    return sorted({item.label for item in tied if item.sha256 == sha and item.label not in (None, top.label)})


def another_picture(index: Index, label: str, scores: np.ndarray, *, exclude_sha256: str | None = None) -> Path | None:
    """A catalog picture of `label` other than the query and, where there is one, other than its best match.

    The seed paper's "find the name ... and return with another image of it": the best match is
    already on screen, so a second picture of the same thing tells the user more.
    """
    members = np.flatnonzero(index.label_codes == index.label_names.index(label))
    # Not the query itself: recognised by its bytes when known, else by a score of ~1 (a PIL image).
    if exclude_sha256 is not None:
        members = [i for i in members if index.items[i].sha256 != exclude_sha256]
    else:
        members = [i for i in members if scores[i] < _SAME_PICTURE]
    if not members:
        return None
    members.sort(key=lambda i: -scores[i])
    shown = int(np.argmax(scores))  # the best match, already on screen
    pick = members[1] if members[0] == shown and len(members) > 1 else members[0]
    return index.path_of(index.items[pick])


def best_match(index: Index, scores: np.ndarray) -> Match:
    """The item scoring highest in (N,) `scores`, as a first-ranked match."""
    i = int(np.argmax(scores))
    item = index.items[i]
    return Match(rank=1, score=float(scores[i]), item=item, path=index.path_of(item))


def _unlabeled_answer(closest: Match, in_catalog: bool, threshold: float) -> Identification:
    score = closest.score
    if in_catalog:
        message = f"The closest picture is {quoted(closest.item.id)} ({score:.2f})"
    else:
        message = (
            f"You gave a picture from another universe; the closest picture in the catalog is "
            f"{quoted(closest.item.id)} ({score:.2f})"
        )
    return Identification(
        label=None,
        score=score,
        in_catalog=in_catalog,
        threshold=threshold,
        message=message,
        another_image=None,
        matches=[],
    )


def _unsure(index: Index, message: str) -> str:
    """The answer, and a warning when the catalog was too small to learn where its universe ends."""
    if not index.calibration.small:
        return message
    return (
        f"{message}; the catalog is too small to be sure ({len(index)} pictures): add pictures to firm up the decision"
    )


def _message(
    labels: Sequence[str],
    score: float,
    in_catalog: bool,
    domain: str | None,
    *,
    closest: Match | None = None,
    named_score: float | None = None,
) -> str:
    """The answer in words; labels are quoted so that any label reads right ("This is “it” (0.80)")."""
    thing = domain or "catalog item"
    named = either(labels)
    same = f": the catalog has the same picture for {'both' if len(labels) == 2 else 'each'}" if len(labels) > 1 else ""
    if closest is not None:
        found = (
            f"the closest picture is {quoted(closest.item.id)} ({score:.2f}), which looks like {named} "
            f"({named_score:.2f}){same}"
        )
        return f"{found[0].upper()}{found[1:]}" if in_catalog else f"You gave a picture from another universe; {found}"
    if in_catalog:
        return f"This is {named} ({score:.2f}){same}"
    return (
        f"You gave a picture from another universe; the {thing} that looks most like it is {named} ({score:.2f}){same}"
    )


def either(labels: Sequence[str]) -> str:
    """Labels quoted and joined by "or": `“A”`, `“A” or “B”`, `“A”, “B” or “C”`."""
    names = [quoted(label) for label in labels] or ["nothing"]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
