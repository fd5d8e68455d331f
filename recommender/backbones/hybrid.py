"""Hybrids: concatenated unit-length parts scaled by sqrt(weight), so that cosine = sum(weight_i * cosine_i)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..images import Fit
from .base import Backbone, BackboneSpec


class Hybrid(Backbone):
    """Several backbones as one: each part's unit vector scaled by the square root of its weight."""

    def __init__(
        self,
        parts: Sequence[Backbone],
        weights: Sequence[float],
        *,
        alias: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        total = float(sum(weights))
        self.options = dict(options or {})  # pooling, image_size, fit: shared by the parts
        self._parts = tuple(parts)
        self.weights = [w / total for w in weights]
        self.name = alias or "+".join(p.name for p in parts)
        self.alias = alias
        self.dim = sum(p.dim for p in parts)
        self.image_size = max(p.image_size for p in parts)
        self.batch_size = min(p.batch_size for p in parts)
        self.fit = self.options.get("fit", parts[0].fit)
        self.device = parts[0].device
        precisions = {p.precision for p in parts}
        self.precision = precisions.pop() if len(precisions) == 1 else "mixed"
        self.spatial = any(p.spatial for p in parts)
        self.forward = "+".join(p.forward for p in parts)
        self._scales = [math.sqrt(w) for w in self.weights]

    @property
    def parts(self) -> tuple[Backbone, ...]:
        return self._parts

    @property
    def part_weights(self) -> tuple[float, ...]:
        return tuple(self.weights)

    @property
    def spec(self) -> BackboneSpec:
        weights = None if self.alias else tuple(round(w, 6) for w in self.weights)
        return BackboneSpec(self.alias or self.name, weights=weights, **self.options)

    @property
    def identity(self) -> str:
        return "+".join(p.identity for p in self.parts)

    def prepare(self, image: Image.Image) -> tuple[Any, ...]:
        return tuple(part.prepare(image) for part in self.parts)

    def preparer(self) -> Callable[[Image.Image], Any]:
        return _PrepareParts(tuple(part.preparer() for part in self.parts))

    @property
    def decode_size(self) -> tuple[int, Fit] | None:
        sizes = [part.decode_size for part in self.parts]
        if None in sizes:
            return None
        # Covering the largest square with its short side, when any part crops, covers every part.
        fit: Fit = "crop" if any(f == "crop" for _, f in sizes) else "pad"  # type: ignore[misc]
        return max(size for size, _ in sizes), fit  # type: ignore[misc]

    def embed_prepared(self, batch: Sequence[tuple[Any, ...]]) -> np.ndarray:
        pieces = [
            part.embed_prepared([item[i] for item in batch]) * scale
            for i, (part, scale) in enumerate(zip(self.parts, self._scales))
        ]
        return np.concatenate(pieces, axis=1).astype(np.float32)

    def patch_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        part = self.spatial_part
        return part.patch_features(images) if part is not None else super().patch_features(images)


@dataclass(frozen=True)
class _PrepareParts:
    """A hybrid's `preparer`: every part's, in order."""

    parts: tuple[Callable[[Image.Image], Any], ...]

    def __call__(self, image: Image.Image) -> tuple[Any, ...]:
        return tuple(prepare(image) for prepare in self.parts)
