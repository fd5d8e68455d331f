"""A joint RGB colour histogram without the background's bin: the naive baseline, and half of `offline`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..images import Fit
from .base import DEFAULT_IMAGE_SIZE, Backbone, BackboneSpec, normalise

HISTOGRAM = "colour-histogram"


class ColourHistogram(Backbone):
    """8 bins a channel (512-d), the background's bin dropped, square-rooted (Hellinger)."""

    name = HISTOGRAM
    bins = 8
    dim = bins**3
    batch_size = 256
    threshold_prior = 0.492  # its calibrated threshold on the shipped Pokémon catalog (docs/evaluation.md)
    _work_side = 128  # histograms need no detail; shrinking first makes them cheap

    def __init__(self, *, image_size: int = DEFAULT_IMAGE_SIZE) -> None:
        self.image_size = image_size  # unused: kept so that every backbone reports one

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(self.name)

    @property
    def decode_size(self) -> tuple[int, Fit]:
        return self._work_side, "pad"  # `thumbnail` keeps the long side

    @property
    def identity(self) -> str:
        return f"{self.name}:bins={self.bins}"

    def prepare(self, image: Image.Image) -> np.ndarray:
        small = image.copy()
        small.thumbnail((self._work_side, self._work_side), Image.Resampling.BILINEAR)
        px = np.asarray(small, dtype=np.uint8) // (256 // self.bins)  # (h, w, 3) bin per channel
        codes = (px[..., 0].astype(np.int32) * self.bins + px[..., 1]) * self.bins + px[..., 2]  # (h, w)
        hist = np.bincount(codes.ravel(), minlength=self.dim).astype(np.float32)
        # The background is whatever fills most of the picture's outer ring (white for sprites and products).
        ring = np.concatenate([codes[0], codes[-1], codes[:, 0], codes[:, -1]])
        background = np.bincount(ring, minlength=self.dim).argmax()
        if hist.sum() > hist[background]:  # keep it when it is all there is (a blank picture)
            hist[background] = 0.0
        return np.sqrt(hist / hist.sum())

    def embed_prepared(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        return normalise(np.stack(batch))
