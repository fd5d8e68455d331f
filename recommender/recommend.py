"""The user's questions of an index: which catalog items look most like this picture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .backbones import Backbone
from .images import ImageSource, load_image
from .index import Index, Match


def look_alikes(
    image: ImageSource,
    index: Index,
    *,
    k: int = 10,
    where: Mapping[str, str | Sequence[str]] | None = None,
    backbone: Backbone | None = None,
) -> list[Match]:
    """The k catalog items that look most like `image`, best first.

    The picture is embedded with the index's own backbone (loaded once and cached) unless one is
    given, in which case it must match the index's (`IndexMismatchError` otherwise).
    """
    if backbone is None:
        backbone = index.backbone()
    else:
        index.check_backbone(backbone)
    query = backbone.embed([load_image(image)])[0]  # (D,)
    return index.search(query, k=k, where=where)
