"""CLIP's pixel normalisation, wherever the pixels are: in a loader worker or, for uint8 batches, on the device.

Loaders normally hand models normalised float32 frames. With ``pixels="uint8"`` (the runner's choice on CUDA)
they hand over the uint8 frames instead, a quarter of the bytes to pin and copy, and :func:`model_pixels`
normalises them after the copy with the same three correctly rounded float32 operations, so the model sees the
same values (``tests/test_transforms.py`` checks it).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from psbench.backbone.clip import CLIP_MEAN, CLIP_STD


def normalize(frames: Tensor) -> Tensor:
    """(F, 3, S, S) or (B, F, 3, S, S) uint8 -> float32 in CLIP units ``(x / 255 - mean) / std``, same layout.

    The same three correctly rounded float32 operations as torchvision's ``ToTensor`` + ``Normalize``, so the
    values are bit-identical, and the layout is the one ``frames.float()`` has (channels-last after a resize),
    which the model's patch convolution sees. Done on one buffer, in place, and never across the layout:
    channels-last frames are read as (F, S*S*3) rows against a repeated per-channel (S*S*3,) pattern, where
    broadcasting a (1, 3, 1, 1) mean would be torch's slow path (``benchmarks/video_input.py``).
    """
    out = frames.div(255.0)  # (F, 3, S, S) float32, the layout of frames.float()
    if out.dim() == 4 and not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last):
        rows = out.permute(0, 2, 3, 1).view(out.shape[0], -1)  # (F, S*S*3), channel fastest
        mean, std = _channel_patterns(rows.shape[1] // 3, str(out.device))
        rows.sub_(mean).div_(std)
    else:
        mean, std = _channel_patterns(1, str(out.device))
        out.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))  # any leading dims: (..., 3, S, S)
    return out


@functools.lru_cache(maxsize=8)
def _channel_patterns(pixels: int, device: str) -> tuple[Tensor, Tensor]:
    """The CLIP mean and std repeated for ``pixels`` channel-last pixels: two (pixels * 3,) float32 tensors."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).repeat(pixels).to(device)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).repeat(pixels).to(device)
    return mean, std


def model_pixels(frames: Tensor) -> Tensor:
    """What a method takes: ``frames`` itself if already normalised (float), else :func:`normalize` of the uint8."""
    return normalize(frames) if frames.dtype == torch.uint8 else frames
