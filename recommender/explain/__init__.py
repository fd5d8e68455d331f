"""Pictures that explain: the catalog's similarity matrix, its 2-D map, and where a query matches an item.

`pca` (the catalog's principal axes) serves both the matrix's `features=K` and the map;
`matrix` chooses, orders and draws the similarity matrix; `patches` overlays where two pictures
match; `maps` places every item (and a query) on the catalog's first two axes.
"""

from __future__ import annotations

from .maps import HOVER_SCRIPT, CatalogMap, catalog_map, map_figure, write_map
from .matrix import DEFAULT_LIMIT, MAX_LIMIT, SimilarityMatrix, catalog_heatmap, similarity_matrix
from .patches import Explanation, PatchPair, explain
from .pca import PrincipalComponents, principal_components

__all__ = [
    "DEFAULT_LIMIT",
    "HOVER_SCRIPT",
    "MAX_LIMIT",
    "CatalogMap",
    "Explanation",
    "PatchPair",
    "PrincipalComponents",
    "SimilarityMatrix",
    "catalog_heatmap",
    "catalog_map",
    "explain",
    "map_figure",
    "principal_components",
    "similarity_matrix",
    "write_map",
]
