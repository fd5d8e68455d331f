"""The shared part of torch backbones: square uint8 pictures in, normalised on the device, bf16 autocast."""

from __future__ import annotations

import contextlib
import functools
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..hardware import resolve_precision
from ..images import Fit, fit_square
from .base import Backbone, normalise


def square_pixels(image: Image.Image, size: int, fit: Fit) -> np.ndarray:
    """(S, S, 3) uint8: the picture fitted to the model's square; small to queue and to send between processes."""
    return np.asarray(fit_square(image, size, fit=fit), dtype=np.uint8)


class TorchBackbone(Backbone):
    """A torch model behind `Backbone`: DINOv2 and the CNN. Subclasses give `_global` and `_spatial`."""

    cpu_batch_size = 16
    spatial = True
    channels_last = False

    def __init__(
        self,
        *,
        model: Any,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        fit: Fit,
        device: str,
        precision: str,
    ) -> None:
        import torch

        self.model = model
        self.image_size = image_size
        self.fit = fit
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.batch_size = 256 if device.startswith("cuda") else self.cpu_batch_size
        # (1, 3, 1, 1) so that they broadcast over (N, 3, S, S) batches
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0

    def prepare(self, image: Image.Image) -> np.ndarray:
        return square_pixels(image, self.image_size, self.fit)

    def preparer(self) -> Callable[[Image.Image], Any]:
        return functools.partial(square_pixels, size=self.image_size, fit=self.fit)

    @property
    def decode_size(self) -> tuple[int, Fit]:
        return self.image_size, self.fit

    def _pixels(self, batch: Sequence[np.ndarray]) -> Any:
        import torch

        x = torch.from_numpy(np.stack(batch)).to(self.device)  # (N, S, S, 3) uint8
        x = x.permute(0, 3, 1, 2).float()  # (N, 3, S, S), channels-last in memory
        x = (x - self._mean) / self._std
        return x if self.channels_last else x.contiguous()

    def _run(self) -> contextlib.ExitStack:
        """No autograd, and bf16 autocast when this backbone runs in bf16 (weights stay fp32)."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16))
        return stack

    def embed_prepared(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        with self._run():
            vectors = self._global(self._pixels(batch))
        return normalise(vectors.float().cpu().numpy())

    def patch_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        with self._run():
            grid = self._spatial(self._pixels([self.prepare(img) for img in images]))  # (N, H, W, C)
            grid = torch.nn.functional.normalize(grid.float(), dim=-1)
        return grid.cpu().numpy()

    @abstractmethod
    def _global(self, pixels: Any) -> Any:
        """(N, 3, S, S) normalised pixels -> (N, D) vectors."""

    @abstractmethod
    def _spatial(self, pixels: Any) -> Any:
        """(N, 3, S, S) normalised pixels -> (N, H, W, C) features."""
