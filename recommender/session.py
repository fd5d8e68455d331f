"""What one visitor's page remembers between events: the last question, its answer, and the feedback given.

A `Visit` is small and immutable: every event starts from the one its page holds and returns the
next (`answered`, `steered`). Item ids in it come from answers the server gave this page, and
handlers still look every item up in the index they search, so a client cannot make it name
something else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .images import ImageSource
from .recommend import Identification

Feedback = Literal["like", "dislike", "reset"]


@dataclass(frozen=True)
class Shown:
    """A look-alike as the page shows it: which item, its picture, its name and its score."""

    id: str
    path: str
    label: str
    score: float

    @property
    def title(self) -> str:
        """Its name and score, as the selection line shows them."""
        return f"**{self.label}** · {self.score:.2f}"


@dataclass(frozen=True)
class Visit:
    """A page's state: the question last asked (`query`, in `index`), what it was named, what was shown,
    and the items liked and disliked since."""

    query: ImageSource | None = None
    index: str | None = None  # the index reference searched; None: the default catalog
    label: str | None = None
    matches: tuple[Shown, ...] = ()
    liked: tuple[str, ...] = ()
    disliked: tuple[str, ...] = ()

    @property
    def asked(self) -> bool:
        return self.query is not None

    @property
    def steering(self) -> str | None:
        """How the look-alikes are steered, in words; None without feedback (the answer never is)."""
        if not (self.liked or self.disliked):
            return None
        return f"Look-alikes steered by your feedback: {len(self.liked)} more like, {len(self.disliked)} less like"

    def answered(self, query: ImageSource, index: str | None, result: Identification) -> Visit:
        """The state after `result` answered `query` in `index` (the feedback it was steered by is kept)."""
        shown = tuple(Shown(m.item.id, str(m.path), m.label or m.item.id, m.score) for m in result.matches)
        return replace(self, query=query, index=index, label=result.label, matches=shown)

    def asking(self, query: ImageSource, index: str | None) -> Visit:
        """A new question: no feedback yet."""
        return Visit(query=query, index=index)

    def steered(self, kind: Feedback, item: str | None) -> Visit:
        """The feedback after a 👍 (`like`), a 👎 (`dislike`) on `item`, or a `reset`.

        An item is liked or disliked, never both: the latest click wins.
        """
        if kind == "reset":
            return replace(self, liked=(), disliked=())
        assert item is not None
        liked = tuple(i for i in self.liked if i != item)
        disliked = tuple(i for i in self.disliked if i != item)
        if kind == "like":
            return replace(self, liked=(*liked, item), disliked=disliked)
        return replace(self, liked=liked, disliked=(*disliked, item))

    def shown(self, position: int) -> Shown:
        """The look-alike at `position` in the gallery last shown (an IndexError for any other)."""
        if not 0 <= position < len(self.matches):
            raise IndexError(position)
        return self.matches[position]
