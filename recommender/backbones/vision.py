"""Vision transformers through transformers (DINOv2, DINOv3, SigLIP 2, CLIP image towers): loading and pooling."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..images import Fit
from .base import BackboneSpec, check_image_size
from .families import Family, family_of
from .hub import HubRevision, hub_revision, local_model_folder, weights_identity
from .lean import LeanDinov2, supports
from .torch_backbone import TorchBackbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedVision:
    """A loaded image tower: the model and what the wrapper needs to know about it."""

    model: Any
    family: Family
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    hidden_size: int
    registers: int  # register tokens between the CLS token and the patches
    native_size: int  # the input side the position embeddings were trained at
    pooled: bool  # whether `pooler_output` is there and is the global descriptor of `cls` pooling
    identity: str
    hub: HubRevision | None


class VisionTransformer(TorchBackbone):
    """A transformers image tower: the CLS token (or the model's pooled output), the mean of patch tokens, or both.

    What it can do is declared, not probed: `patch_size`, `registers`, `spatial` (patch features
    for heatmaps), `hub` (the repository and commit its weights came from) and `forward`.
    """

    def __init__(
        self,
        name: str,
        source: str,
        *,
        pooling: str,
        image_size: int,
        fit: Fit,
        device: str,
        precision: str,
        revision: str | None = None,
    ) -> None:
        loaded = load_vision(source, device, revision)
        check_image_size(image_size, loaded.patch_size)
        if pooling != "mean" and not (loaded.family.cls_token or loaded.pooled):
            raise ModelError(f"{name} has neither a CLS token nor a pooling head: use --pooling mean")
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
        self.family = loaded.family
        self.patch_size = loaded.patch_size
        self.registers = loaded.registers
        self.hub = loaded.hub
        self._loaded = loaded
        self._prefix = int(loaded.family.cls_token) + loaded.registers  # tokens before the patches
        hidden = loaded.hidden_size
        self.dim = 2 * hidden if pooling == "cls+mean" else hidden
        self.forward = f"lean-{self.precision}" if self._lean is not None else f"transformers-{self.precision}"

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec(self.name, pooling=self.pooling, image_size=self.image_size, fit=self.fit)

    @property
    def identity(self) -> str:
        return self._loaded.identity

    @functools.cached_property
    def _lean(self) -> LeanDinov2 | None:
        """The lean CPU forward (see `lean`), or None where transformers' own forward is used (GPUs, not DINOv2)."""
        import torch

        if not self.family.lean or not self.device.startswith("cpu"):
            return None
        if not supports(self.model):
            # Said out loud (and recorded as `forward` in the build's stats): this is 1.5-2x slower.
            log.warning("%s: the lean CPU forward does not fit this model's modules; transformers' forward runs", self)
            return None
        return LeanDinov2(self.model, torch.bfloat16 if self.precision == "bf16" else torch.float32)

    def _inputs(self, pixels: Any) -> dict[str, Any]:
        """The model's keyword arguments for (N, 3, S, S) normalised pixels."""
        import torch

        n, c, side = pixels.shape[0], pixels.shape[1], pixels.shape[-1] // self.patch_size
        if self.family.patchified:
            # NaFlex takes patches in rows, each flattened (p, p, C) as its image processor does, with
            # their grid; a square picture is one full grid, so every patch is real (mask of ones).
            p = self.patch_size
            patches = pixels.reshape(n, c, side, p, side, p).permute(0, 2, 4, 3, 5, 1).reshape(n, side * side, -1)
            return {
                "pixel_values": patches,  # (N, P, p·p·C)
                "pixel_attention_mask": torch.ones(n, side * side, dtype=torch.long, device=pixels.device),
                "spatial_shapes": torch.tensor([[side, side]] * n, dtype=torch.long, device=pixels.device),
            }
        if self.family.interpolates and pixels.shape[-1] != self._loaded.native_size:
            return {"pixel_values": pixels, "interpolate_pos_encoding": True}
        return {"pixel_values": pixels}

    def _outputs(self, pixels: Any, *, cls_only: bool = False) -> tuple[Any, Any | None]:
        """(N, T, D) tokens after the final norm, and the (N, D) pooled output where it is the descriptor."""
        if self._lean is not None:
            return self._lean(pixels, cls_only=cls_only), None  # T is 1 when `cls_only`
        out = self.model(**self._inputs(pixels))
        return out.last_hidden_state, out.pooler_output if self._loaded.pooled else None

    def _global(self, pixels: Any) -> Any:
        import torch

        tokens, pooled = self._outputs(pixels, cls_only=self.pooling == "cls")
        head = pooled if pooled is not None else tokens[:, 0]  # (N, D)
        if self.pooling == "cls":
            return head
        mean = tokens[:, self._prefix :].mean(dim=1)  # (N, D) over the patch tokens only
        if self.pooling == "mean":
            return mean
        # cls+mean: each half normalised first so that neither dominates the cosine
        f = torch.nn.functional.normalize
        return torch.cat([f(head.float(), dim=-1), f(mean.float(), dim=-1)], dim=-1)

    def _spatial(self, pixels: Any) -> Any:
        tokens, _ = self._outputs(pixels)
        patches = tokens[:, self._prefix :]  # (N, P, D): registers and CLS are not patches
        side = self.image_size // self.patch_size
        return patches.reshape(patches.shape[0], side, side, patches.shape[-1])  # (N, H, W, D)


@functools.lru_cache(maxsize=4)
def load_vision(source: str, device: str, revision: str | None = None) -> LoadedVision:
    """Load an image tower once per (source, device, revision); torch and transformers are imported here.

    A full CLIP or SigLIP checkpoint holds a text tower too: only the image tower is built and read.
    """
    folder = local_model_folder(source, revision=revision)
    family = family_of(_model_type(folder, source), source)
    import torch
    import transformers

    # On CPUs the plain attention (two matmuls) beats the flash kernel at DINOv2's ~257 tokens
    # (measured 24 vs 21 images/s in bf16); GPUs want SDPA.
    attention = "sdpa" if device.startswith("cuda") else "eager"
    try:
        with _quiet_transformers():  # a full checkpoint's text weights are "unexpected": expected here
            model_class = getattr(transformers, family.model_class)
            model = model_class.from_pretrained(folder, dtype=torch.float32, attn_implementation=attention)
    except Exception as exc:  # transformers raises many kinds for bad folders
        raise ModelError(f"{source}: cannot load the model from {folder} ({str(exc).splitlines()[0][:200]})") from None
    model.eval().to(device)
    config = model.config
    mean, std = processor_stats(folder, family)
    patch = int(config.patch_size)
    return LoadedVision(
        model=model,
        family=family,
        mean=mean,
        std=std,
        patch_size=patch,
        hidden_size=int(config.hidden_size),
        registers=int(getattr(config, "num_register_tokens", 0) or 0),
        native_size=int(getattr(config, "image_size", 0) or 0),  # NaFlex resizes its own to every grid
        pooled=family.pooled and bool(getattr(getattr(model, "vision_model", model), "use_head", True)),
        identity=weights_identity(folder),
        hub=hub_revision(source, folder),
    )


def _model_type(folder: Path, source: str) -> Any:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"{source}: no readable config.json in {folder} ({exc})") from None


def processor_stats(folder: Path, family: Family) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and standard deviation from the model's image processor (`AutoImageProcessor`).

    Pictures are fitted to the square by `images.fit_square` (pad or crop, the project's choice);
    the processor says how to normalise them. Where its class needs torchvision (DINOv3's), the
    same file is read by transformers' own reader; with no processor config, the family's defaults.
    """
    from transformers import AutoImageProcessor
    from transformers.image_processing_base import ImageProcessingMixin

    with _quiet_transformers():
        try:
            processor = AutoImageProcessor.from_pretrained(folder)
            settings = {key: getattr(processor, key, None) for key in ("do_normalize", "image_mean", "image_std")}
        except Exception:  # a processor class this install cannot build (torchvision only), or no config at all
            try:
                settings, _ = ImageProcessingMixin.get_image_processor_dict(folder)
            except Exception:  # no (readable) preprocessor_config.json
                return family.stats
    if settings.get("do_normalize") is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    try:
        return tuple(map(float, settings["image_mean"])), tuple(map(float, settings["image_std"]))
    except (KeyError, TypeError, ValueError):
        return family.stats


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own progress bars and load reports off while loading: our messages say what happens."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
