"""What every backbone is and says about itself: the `Backbone` interface and its declared capabilities."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ModelError
from ..images import Fit
from .hub import HubRevision

POOLINGS = ("cls", "mean", "cls+mean")
PRECISIONS = ("auto", "bf16", "fp32")
FITS = ("pad", "crop")
DEFAULT_IMAGE_SIZE = 224
#: The largest model input side any backbone accepts.
MAX_IMAGE_SIZE = 1036


@dataclass(frozen=True)
class BackboneSpec:
    """What rebuilds a backbone: `load_backbone(**spec.as_kwargs())`; an index's manifest records it.

    Only the options that change the vectors: the device and precision belong to the machine.
    """

    model: str
    weights: tuple[float, ...] | None = None  # a hybrid's part weights
    pooling: str | None = None
    image_size: int | None = None
    fit: str | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `load_backbone`, without the options left at their defaults."""
        return {name: list(value) if name == "weights" else value for name, value in self._set()}

    def to_json(self) -> dict[str, Any]:
        """The manifest's `backbone` object (the same keys, in the same order, as earlier versions wrote)."""
        return self.as_kwargs()

    @classmethod
    def from_json(cls, data: Any) -> BackboneSpec:
        """Parse a manifest's `backbone` object; `ValueError` for anything `load_backbone` would not take."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), str) or not set(data) <= set(_SPEC_FIELDS):
            raise ValueError("not a backbone spec")
        weights = data.get("weights")
        if weights is not None and not (
            isinstance(weights, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
        ):
            raise ValueError("bad hybrid weights")
        for key, kind in (("pooling", str), ("image_size", int), ("fit", str)):
            value = data.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise ValueError(f"bad {key}")
        return cls(
            model=data["model"],
            weights=None if weights is None else tuple(float(w) for w in weights),
            pooling=data.get("pooling"),
            image_size=data.get("image_size"),
            fit=data.get("fit"),
        )

    def replace(self, **changes: Any) -> BackboneSpec:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for messages: `model=..., pooling=...`."""
        return ", ".join(f"{name}={value}" for name, value in self.as_kwargs().items())

    def _set(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in _SPEC_FIELDS if getattr(self, name) is not None]


_SPEC_FIELDS = ("model", "weights", "pooling", "image_size", "fit")


@dataclass(frozen=True)
class Options:
    """The keyword options of `load_backbone`, checked: what every factory receives."""

    pooling: str = "cls"
    image_size: int = DEFAULT_IMAGE_SIZE
    fit: Fit = "pad"
    device: str = "cpu"
    precision: str = "auto"
    revision: str | None = None  # the hub commit, branch or tag to load (hub models only)

    def shared(self) -> dict[str, Any]:
        """The options a hybrid records in its spec (the device is a property of the machine, not the index)."""
        return {"pooling": self.pooling, "image_size": self.image_size, "fit": self.fit}


class Backbone(ABC):
    """Turns pictures into L2-normalised vectors and declares what else it can do.

    `prepare` is cheap CPU work on one picture (resize, pad) and may run in worker threads;
    `embed_prepared` runs the model on a batch of prepared pictures. Callers read the declared
    capabilities (`parts`, `spatial`, `patch_size`, `registers`, `hub`, `fit`, `precision`,
    `device`, `explain_detail`) instead of probing the object's type.
    """

    name: str
    dim: int
    image_size: int
    batch_size: int = 32
    #: How pictures are fitted to the model's square (`images.fit_square`).
    fit: Fit = "pad"
    #: `bf16` or `fp32`: what the matrix products run in (no-model backbones compute in fp32).
    precision: str = "fp32"
    device: str = "cpu"
    #: Whether `patch_features` gives a spatial grid (DINOv2 and the CNN do, a colour histogram does not).
    spatial: bool = False
    #: How many times larger `explain` runs this backbone's pictures for a finer grid (the CNN's 7 x 7 is coarse).
    explain_detail: int = 1
    #: Which forward pass computes the vectors, for build reports (e.g. "lean-bf16" or "transformers").
    forward: str = "numpy"
    #: The side of one patch in input pixels, for models that work on patches (None otherwise).
    patch_size: int | None = None
    #: Register tokens the model carries besides its patches (DINOv2/v3 with registers); never in patch features.
    registers: int = 0
    #: The hub repository and commit the weights were read at; None for local folders and shipped weights.
    hub: HubRevision | None = None
    #: The in-catalog threshold this backbone learns on the shipped Pokémon catalog (measured), a prior
    #: for catalogs too small to place their own (`calibration.calibrate(prior=...)`); None: unmeasured.
    threshold_prior: float | None = None

    @property
    @abstractmethod
    def spec(self) -> BackboneSpec:
        """Everything needed to rebuild this backbone (`load_backbone(**spec.as_kwargs())`); stored in manifests."""

    @property
    @abstractmethod
    def identity(self) -> str:
        """What the weights are (a hash), so that an index is never searched with other weights."""

    @property
    def parts(self) -> tuple[Backbone, ...]:
        """The concrete backbones whose vectors this one concatenates: itself, or a hybrid's parts."""
        return (self,)

    @property
    def part_weights(self) -> tuple[float, ...]:
        """Each part's weight in the cosine (they sum to 1)."""
        return (1.0,)

    @property
    def hub_revisions(self) -> tuple[HubRevision, ...]:
        """Where each part's weights came from on the hub (what an index manifest pins)."""
        return tuple(part.hub for part in self.parts if part.hub is not None)

    @property
    def revisions(self) -> dict[str, str] | None:
        """`{repo: commit}` of the hub parts, as `load_backbone(revision=...)` takes it; None when none."""
        return {pin.repo: pin.revision for pin in self.hub_revisions} or None

    @property
    def adapter(self) -> Any:
        """A catalog's `AdapterHead` its vectors pass through (`backbones.adapted`), or None (every plain backbone)."""
        return None

    @property
    def spatial_part(self) -> Backbone | None:
        """The backbone whose patch features `explain` overlays, or None when there is none."""
        return next((part for part in self.parts if part.spatial), None)

    @abstractmethod
    def prepare(self, image: Image.Image) -> Any:
        """One RGB picture -> whatever `embed_prepared` takes (thread-safe, no model involved)."""

    def preparer(self) -> Callable[[Image.Image], Any]:
        """`prepare` as a small picklable function without the model, to decode in other processes (Ray)."""
        return self.prepare  # backbones without a model are small themselves

    @property
    def decode_size(self) -> tuple[int, Fit] | None:
        """(size, fit): the square `prepare` shrinks pictures into, so that JPEGs decode no larger
        (`load_image(fit_to=...)`); None when it needs them whole."""
        return None

    @abstractmethod
    def embed_prepared(self, batch: Sequence[Any]) -> np.ndarray:
        """A batch of prepared pictures -> (N, D) float32, each row of unit length."""

    def embed(self, images: Sequence[Image.Image], *, batch_size: int | None = None) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of RGB pictures, computed in batches."""
        size = batch_size or self.batch_size
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            out[start : start + len(chunk)] = self.embed_prepared([self.prepare(img) for img in chunk])
        return out

    def patch_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, H, W, C) float32 unit-length features per patch or cell, for heatmaps (when `spatial`)."""
        raise ModelError(f"{self.name} has no spatial features; use a vision transformer or CNN backbone for heatmaps")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim}>"


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero); float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def check_image_size(size: int, multiple: int) -> None:
    """A clear error unless `size` is a multiple of the model's patch (or stride) within the accepted range."""
    if size % multiple or not 2 * multiple <= size <= MAX_IMAGE_SIZE:
        raise ModelError(
            f"image size {size} is not allowed: use a multiple of {multiple} between {2 * multiple} and "
            f"{MAX_IMAGE_SIZE} (224 is the default; 336, 448 and 518 also suit DINOv2)"
        )
