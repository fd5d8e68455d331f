"""The embedders behind one interface: DINOv2, the offline CNN, a colour histogram, and hybrids of them.

`load_backbone(name, ...)` builds one from the registry (`register_backbone` adds names); every
backbone declares what it can do (`parts`, `dim`, `spatial`, `fit`, `precision`, `device`) so that
callers never need to ask what type it is.
"""

from __future__ import annotations

from .base import DEFAULT_IMAGE_SIZE, FITS, POOLINGS, PRECISIONS, Backbone, BackboneSpec, Options, normalise
from .cnn import CNN
from .dinov2 import DINOV2_MODELS
from .histogram import HISTOGRAM
from .hub import OFFLINE
from .hybrid import Hybrid
from .registry import (
    OFFLINE_PARTS,
    OFFLINE_WEIGHTS,
    load_backbone,
    parse_weights,
    register_backbone,
    registered_backbones,
)

__all__ = [
    "CNN",
    "DEFAULT_IMAGE_SIZE",
    "DINOV2_MODELS",
    "FITS",
    "HISTOGRAM",
    "OFFLINE",
    "OFFLINE_PARTS",
    "OFFLINE_WEIGHTS",
    "POOLINGS",
    "PRECISIONS",
    "Backbone",
    "BackboneSpec",
    "Hybrid",
    "Options",
    "load_backbone",
    "normalise",
    "parse_weights",
    "register_backbone",
    "registered_backbones",
]
