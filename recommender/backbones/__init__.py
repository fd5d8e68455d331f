"""The embedders behind one interface: vision transformers (DINOv2 ...), the offline CNN, a histogram, hybrids.

`load_backbone(name, ...)` builds one from the registry (`register_backbone` adds names); every
backbone declares what it can do (`parts`, `dim`, `spatial`, `fit`, `precision`, `device`) so that
callers never need to ask what type it is.
"""

from __future__ import annotations

from .base import DEFAULT_IMAGE_SIZE, FITS, POOLINGS, PRECISIONS, Backbone, BackboneSpec, Options, normalise
from .cnn import CNN
from .families import CLIP_MODELS, DINOV2_MODELS, DINOV3_MODELS, HUB_MODELS, MODEL_TYPES, SIGLIP2_MODELS
from .histogram import HISTOGRAM
from .hub import OFFLINE, HubRevision
from .hybrid import Hybrid
from .registry import (
    OFFLINE_PARTS,
    OFFLINE_WEIGHTS,
    hub_repo,
    load_backbone,
    parse_weights,
    register_backbone,
    registered_backbones,
)

__all__ = [
    "CLIP_MODELS",
    "CNN",
    "DEFAULT_IMAGE_SIZE",
    "DINOV2_MODELS",
    "DINOV3_MODELS",
    "FITS",
    "HISTOGRAM",
    "HUB_MODELS",
    "MODEL_TYPES",
    "OFFLINE",
    "OFFLINE_PARTS",
    "OFFLINE_WEIGHTS",
    "POOLINGS",
    "PRECISIONS",
    "SIGLIP2_MODELS",
    "Backbone",
    "BackboneSpec",
    "HubRevision",
    "Hybrid",
    "Options",
    "hub_repo",
    "load_backbone",
    "normalise",
    "parse_weights",
    "register_backbone",
    "registered_backbones",
]
