"""DINOv2 through transformers (`AutoModel`): CLS token, mean of patch tokens, or both; the lean CPU forward."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..images import Fit
from .base import BackboneSpec, check_image_size
from .hub import local_model_folder, weights_identity
from .lean import LeanDinov2, supports
from .torch_backbone import TorchBackbone

#: Short DINOv2 names and the hub repositories they stand for.
DINOV2_MODELS = {f"dinov2-{size}": f"facebook/dinov2-{size}" for size in ("small", "base", "large", "giant")} | {
    f"dinov2-{size}-reg": f"facebook/dinov2-with-registers-{size}" for size in ("small", "base", "large", "giant")
}
#: The architectures (config `model_type`) this module loads from hub ids and local folders.
MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# ImageNet statistics, the fallback when a model folder has no preprocessor_config.json.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LoadedDinov2:
    """A loaded DINOv2: the model and what the wrapper needs to know about it."""

    model: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    hidden_size: int
    registers: int
    identity: str


class DinoV2(TorchBackbone):
    """DINOv2 through transformers' AutoModel: CLS token, mean of patch tokens, or both."""

    def __init__(
        self, name: str, source: str, *, pooling: str, image_size: int, fit: Fit, device: str, precision: str
    ) -> None:
        loaded = load_dinov2(source, device)
        check_image_size(image_size, loaded.patch_size)
        super().__init__(
            model=loaded.model,
            mean=loaded.mean,
            std=loaded.std,
            image_size=image_size,
            fit=fit,
            device=device,
            precision=precision,
        )
        self.name = name
        self.source = source
        self.pooling = pooling
        self.patch_size = loaded.patch_size
        self.registers = loaded.registers
        self._identity = loaded.identity
        hidden = loaded.hidden_size
        self.dim = 2 * hidden if pooling == "cls+mean" else hidden
        self.forward = f"lean-{self.precision}" if self._lean is not None else f"transformers-{self.precision}"

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(self.name, pooling=self.pooling, image_size=self.image_size, fit=self.fit)

    @property
    def identity(self) -> str:
        return self._identity

    @functools.cached_property
    def _lean(self) -> LeanDinov2 | None:
        """The lean CPU forward (see `lean`), or None where transformers' own forward is used (GPUs)."""
        import torch

        if not self.device.startswith("cpu") or not supports(self.model):
            return None
        return LeanDinov2(self.model, torch.bfloat16 if self.precision == "bf16" else torch.float32)

    def _forward(self, pixels: Any, *, cls_only: bool = False) -> Any:
        if self._lean is not None:
            return self._lean(pixels, cls_only=cls_only)
        return self.model(pixel_values=pixels).last_hidden_state  # (N, 1 + R + P, D), after the final norm

    def _tokens(self, pixels: Any) -> tuple[Any, Any]:
        hidden = self._forward(pixels)  # (N, 1 + R + P, D)
        return hidden[:, 0], hidden[:, 1 + self.registers :]  # (N, D) CLS, (N, P, D) patch tokens

    def _global(self, pixels: Any) -> Any:
        import torch

        if self.pooling == "cls":
            return self._forward(pixels, cls_only=True)[:, 0]  # (N, D)
        cls, patches = self._tokens(pixels)
        mean = patches.mean(dim=1)
        if self.pooling == "mean":
            return mean
        # cls+mean: each half normalised first so that neither dominates the cosine
        f = torch.nn.functional.normalize
        return torch.cat([f(cls.float(), dim=-1), f(mean.float(), dim=-1)], dim=-1)

    def _spatial(self, pixels: Any) -> Any:
        _, patches = self._tokens(pixels)
        side = self.image_size // self.patch_size
        return patches.reshape(patches.shape[0], side, side, patches.shape[-1])  # (N, H, W, D)


@functools.lru_cache(maxsize=4)
def load_dinov2(source: str, device: str) -> LoadedDinov2:
    """Load a DINOv2 model once per (source, device); torch and transformers are imported here."""
    folder = local_model_folder(source)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{source}: no readable config.json in {folder} ({exc})") from None
    if config.get("model_type") not in MODEL_TYPES:
        raise ModelError(f"{source}: model type {config.get('model_type')!r} is not DINOv2 ({', '.join(MODEL_TYPES)})")
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars say what is happening; theirs would interleave
    # On CPUs the plain attention (two matmuls) beats the flash kernel at DINOv2's ~257 tokens
    # (measured 24 vs 21 images/s in bf16); GPUs want SDPA.
    attention = "sdpa" if device.startswith("cuda") else "eager"
    try:
        model = AutoModel.from_pretrained(folder, dtype=torch.float32, attn_implementation=attention)
    except Exception as exc:  # transformers raises many kinds for bad folders
        raise ModelError(f"{source}: cannot load the model from {folder} ({str(exc).splitlines()[0][:200]})") from None
    model.eval().to(device)
    mean, std = _processor_stats(folder)
    return LoadedDinov2(
        model=model,
        mean=mean,
        std=std,
        patch_size=int(config.get("patch_size", 14)),
        hidden_size=int(config["hidden_size"]),
        registers=int(config.get("num_register_tokens", 0)),
        identity=weights_identity(folder),
    )


def _processor_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        return tuple(map(float, cfg["image_mean"])), tuple(map(float, cfg["image_std"]))
    except (OSError, ValueError, KeyError, TypeError):
        return _IMAGENET_MEAN, _IMAGENET_STD
