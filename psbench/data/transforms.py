"""Named video transforms: uint8 frames -> CLIP-normalised float tensors (spec §1, §2.3, §4.6, §5.5).

``TRANSFORMS.get(name)(size)`` builds a transform ``t(frames, rng) -> Tensor``: ``frames`` is a
(F, H, W, 3) uint8 RGB array, the result a (F, 3, size, size) float32 tensor normalised with the
CLIP mean/std. Random transforms draw ONE set of parameters per call from ``rng``, so every frame
of a video gets the same crop and flip. Resizing runs on uint8 with antialiasing (like the PIL
pipeline of CLIP's own preprocessing), then pixels are scaled to [0, 1] and normalised.

Transforms are small picklable classes so that DataLoader workers can receive them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from psbench.backbone.pixels import normalize
from psbench.registry import Registry

BICUBIC = TF.InterpolationMode.BICUBIC
BILINEAR = TF.InterpolationMode.BILINEAR


class VideoTransform(Protocol):
    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None) -> Tensor: ...


TRANSFORMS: Registry[type] = Registry("video transform")


def to_tensor(frames: np.ndarray) -> Tensor:
    """(F, H, W, 3) uint8 array -> (F, 3, H, W) uint8 tensor."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{type(frames).__name__} {getattr(frames, 'dtype', '?')} {getattr(frames, 'shape', '?')}"
        raise ValueError(f"video transforms take (F, H, W, 3) uint8 arrays; got {got}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (F, 3, H, W)


@TRANSFORMS.register("resize_center_crop")
@dataclass(frozen=True)
class ResizeCenterCrop:
    """Resize the shorter side to ``size`` (bicubic, antialias), then center-crop ``size``.

    CLIP4Clip train and test; X-Pool and Prompt Switch test. (X-Pool resized float tensors with
    the torchvision of its time, i.e. without antialiasing; for 320x240 -> 224 the gap is small.)
    """

    size: int
    normalized: bool = True

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        x = TF.resize(to_tensor(frames), [self.size], interpolation=BICUBIC, antialias=True)  # (F, 3, h, w)
        return _finish(TF.center_crop(x, [self.size, self.size]), self.normalized)  # (F, 3, S, S)


@TRANSFORMS.register("resize_square")
@dataclass(frozen=True)
class ResizeSquare:
    """CLIP-ViP (train and test): resize to exactly (size, size), bicubic; aspect ratio not kept."""

    size: int
    normalized: bool = True

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        x = TF.resize(to_tensor(frames), [self.size, self.size], interpolation=BICUBIC, antialias=True)
        return _finish(x, self.normalized)  # (F, 3, S, S)


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> CropBox:
    """RandomResizedCrop's box: area fraction ~ U(scale), log aspect ~ U(log ratio); up to
    ``attempts`` tries to fit inside the image, else the largest centred box with a clamped aspect."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


@TRANSFORMS.register("random_resized_crop_flip")
@dataclass(frozen=True)
class RandomResizedCropFlip:
    """X-Pool / Prompt Switch training: RandomResizedCrop(size, scale=(0.5, 1)) + horizontal flip
    (p = 0.5), with one crop box and one flip decision per video. Bilinear (torchvision's default
    for RandomResizedCrop), antialias. X-Pool's ColorJitter(0, 0, 0) is a no-op and is omitted."""

    size: int
    scale: tuple[float, float] = (0.5, 1.0)
    flip_probability: float = 0.5
    normalized: bool = True

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None) -> Tensor:
        if rng is None:
            raise ValueError("transform 'random_resized_crop_flip' is random and needs an rng; got None")
        x = to_tensor(frames)  # (F, 3, H, W)
        box = random_resized_crop_box(x.shape[-2], x.shape[-1], rng, self.scale)
        x = TF.resized_crop(
            x,
            box.top,
            box.left,
            box.height,
            box.width,
            [self.size, self.size],
            interpolation=BILINEAR,
            antialias=True,
        )  # (F, 3, S, S)
        if rng.uniform() < self.flip_probability:
            x = TF.horizontal_flip(x)
        return _finish(x, self.normalized)


def make_transform(name: str, size: int, normalized: bool = True) -> VideoTransform:
    """Build the registered transform ``name`` for output resolution ``size``.

    ``normalized=False``: the transform stops before normalising and returns the (F, 3, S, S) uint8 frames;
    :func:`psbench.backbone.pixels.model_pixels` normalises them where they are used (on the GPU), with the
    same operations and so the same values.
    """
    if size < 1:
        raise ValueError(f"transform {name!r}: size must be positive, got {size}")
    return TRANSFORMS.get(name)(size, normalized=normalized)


def _finish(frames: Tensor, normalized: bool) -> Tensor:
    return normalize(frames) if normalized else frames
