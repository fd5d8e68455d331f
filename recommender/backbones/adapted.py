"""A catalog's adaptation of a backbone: a small residual head on its frozen vectors, and the backbone it makes.

The head is `y = normalise(x + gelu(x @ U + c) @ V)`: a low-rank residual MLP (D -> r -> D) that
starts as the identity (V = 0) and is trained by `recommender.adapt` on the catalog's own pictures.
It runs in NumPy (a (N, D) x (D, r) product: microseconds a query), so an adapted index needs
nothing the plain one does not. The weights are a safetensors file beside the index; the
manifest records its name and sha256, and the adapted backbone's identity includes the hash, so
an index is never searched through another head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ModelError
from ..images import Fit
from .base import Backbone, BackboneSpec, normalise

_KEYS = ("U", "c", "V")


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form (what the head is trained with, so that NumPy and torch agree)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@dataclass(frozen=True)
class AdapterHead:
    """The residual head's weights: U (D, r), c (r,), V (r, D), float32."""

    U: np.ndarray
    c: np.ndarray
    V: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.U.shape[0])

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) unit vectors -> (N, D) adapted unit vectors."""
        x = np.asarray(x, dtype=np.float32)
        return normalise(x + gelu(x @ self.U + self.c) @ self.V)

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({key: np.ascontiguousarray(getattr(self, key), dtype=np.float32) for key in _KEYS})

    @classmethod
    def from_bytes(cls, data: bytes, *, dim: int, label: str) -> AdapterHead:
        """Parse and check a head file: `ModelError` unless it holds U, c, V of matching shapes for `dim`."""
        from safetensors.numpy import load

        try:
            tensors = load(data)
            head = cls(**{key: np.asarray(tensors[key], dtype=np.float32) for key in _KEYS})
        except Exception as exc:
            raise ModelError(f"{label}: not an adapter head ({str(exc).splitlines()[0][:160]})") from None
        r = head.U.shape[1] if head.U.ndim == 2 else -1
        if head.U.shape != (dim, r) or head.c.shape != (r,) or head.V.shape != (r, dim):
            raise ModelError(f"{label}: adapter head shapes {head.U.shape}/{head.V.shape} do not fit {dim}-d vectors")
        if not all(np.isfinite(getattr(head, key)).all() for key in _KEYS):
            raise ModelError(f"{label}: adapter head holds numbers that are not finite")
        return head


class Adapted(Backbone):
    """A backbone whose vectors pass through a catalog's `AdapterHead`: the same pictures in, adapted vectors out."""

    def __init__(self, base: Backbone, head: AdapterHead, *, digest: str) -> None:
        if head.dim != base.dim:
            raise ModelError(f"an adapter head for {head.dim}-d vectors cannot adapt {base.name} ({base.dim}-d)")
        self.base = base
        self.head = head
        self.digest = digest  # the head file's sha256
        self.name = f"{base.name} (adapted)"
        self.dim = base.dim
        self.image_size = base.image_size
        self.batch_size = base.batch_size
        self.fit = base.fit
        self.device = base.device
        self.precision = base.precision
        self.spatial = base.spatial
        self.explain_detail = base.explain_detail
        self.forward = base.forward + "+adapter"

    @property
    def spec(self) -> BackboneSpec:
        return self.base.spec  # the head is the index's, not a loadable name: the manifest records it

    @property
    def identity(self) -> str:
        return f"{self.base.identity}+adapter:{self.digest[:16]}"

    @property
    def adapter(self) -> AdapterHead | None:
        return self.head

    @property
    def spatial_part(self) -> Backbone | None:
        return self.base.spatial_part

    def prepare(self, image: Image.Image) -> Any:
        return self.base.prepare(image)

    def preparer(self) -> Callable[[Image.Image], Any]:
        return self.base.preparer()

    @property
    def decode_size(self) -> tuple[int, Fit] | None:
        return self.base.decode_size

    def embed_prepared(self, batch: Sequence[Any]) -> np.ndarray:
        return self.head.apply(self.base.embed_prepared(batch))

    def patch_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.base.patch_features(images)
