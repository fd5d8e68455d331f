"""The transformers vision families this library loads, what their tokens are, and their short hub names."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError

# Mean and standard deviation by family, used only when a model folder has no image processor config.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class Family:
    """One architecture: which transformers class holds its image tower and how its output is read.

    The token layout of `last_hidden_state` is [CLS] [registers] patches, the CLS token present
    when `cls_token`; the number of registers is read from the config (`num_register_tokens`).
    """

    name: str  # for people: DINOv2, SigLIP 2 ...
    model_types: tuple[str, ...]  # config.json `model_type` values (full checkpoints and bare image towers)
    model_class: str  # the transformers class that loads only the image tower
    cls_token: bool  # whether token 0 is a CLS token
    pooled: bool  # whether `pooler_output` is the global descriptor of `--pooling cls` (CLIP, SigLIP)
    patchified: bool = False  # NaFlex: the model takes (N, P, 3·p·p) patches with their grid, not pixels
    interpolates: bool = False  # whether other input sizes need `interpolate_pos_encoding=True`
    lean: bool = False  # whether the lean CPU forward (`lean.LeanDinov2`) may run it
    stats: tuple[tuple[float, ...], tuple[float, ...]] = _IMAGENET


FAMILIES = (
    Family("DINOv2", ("dinov2", "dinov2_with_registers"), "AutoModel", cls_token=True, pooled=False, lean=True),
    Family("DINOv3", ("dinov3_vit",), "DINOv3ViTModel", cls_token=True, pooled=False),
    Family(
        "SigLIP / SigLIP 2",
        ("siglip", "siglip_vision_model"),
        "SiglipVisionModel",
        cls_token=False,
        pooled=True,
        interpolates=True,
        stats=_HALF,
    ),
    Family(
        "SigLIP 2 NaFlex",
        ("siglip2", "siglip2_vision_model"),
        "Siglip2VisionModel",
        cls_token=False,
        pooled=True,
        patchified=True,
        stats=_HALF,
    ),
    Family(
        "CLIP",
        ("clip", "clip_vision_model"),
        "CLIPVisionModel",
        cls_token=True,
        pooled=True,
        interpolates=True,
        stats=_OPENAI,
    ),
)
#: Every config `model_type` the loader accepts.
MODEL_TYPES = tuple(t for family in FAMILIES for t in family.model_types)


def family_of(model_type: object, source: str) -> Family:
    """The family of a config's `model_type`, or `ModelError` listing what is supported."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)
    raise ModelError(f"{source}: model type {str(model_type)[:60]!r} is not supported; supported: {supported}")


#: Short names and the hub repositories they stand for, by family (the README's backbone table).
DINOV2_MODELS = {f"dinov2-{size}": f"facebook/dinov2-{size}" for size in ("small", "base", "large", "giant")} | {
    f"dinov2-{size}-reg": f"facebook/dinov2-with-registers-{size}" for size in ("small", "base", "large", "giant")
}
DINOV3_MODELS = {
    f"dinov3-{name}": f"facebook/dinov3-vit{code}-pretrain-lvd1689m"
    for name, code in (
        ("small", "s16"),
        ("small-plus", "s16plus"),
        ("base", "b16"),
        ("large", "l16"),
        ("huge-plus", "h16plus"),
    )
}
SIGLIP2_MODELS = {
    "siglip2-base": "google/siglip2-base-patch16-224",
    "siglip2-large": "google/siglip2-large-patch16-256",
    "siglip2-so400m": "google/siglip2-so400m-patch14-224",
    "siglip2-base-naflex": "google/siglip2-base-patch16-naflex",
}
CLIP_MODELS = {
    "clip-base": "openai/clip-vit-base-patch32",
    "clip-base-16": "openai/clip-vit-base-patch16",
    "clip-large": "openai/clip-vit-large-patch14",
}
#: Every short hub name with the family it belongs to, in the order help and docs list them.
HUB_MODELS = {
    family: names
    for family, names in (
        ("DINOv2", DINOV2_MODELS),
        ("DINOv3", DINOV3_MODELS),
        ("SigLIP 2", SIGLIP2_MODELS),
        ("CLIP", CLIP_MODELS),
    )
}
