"""The RetrievalMethod contract: what is timed is what ranks.

``encode_video`` runs offline, once per gallery video, and never sees text. ``encode_text`` runs
online per query. ``similarity`` is the online scoring stage the engine calls block by block, and
the very function the efficiency benchmark times. ``Encoded`` is a dict of tensors whose leading
dimension is the number of items, so the engine can slice, concatenate, cache and shard it without
knowing the method.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psbench.backbone.flops import text_tower_flops
from psbench.backbone.pixels import model_pixels
from psbench.distributed import gather_encoded
from psbench.ops import linear as cpu_linear

Encoded = dict[str, Tensor]

LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class Batch:
    """One training batch.

    frames: (B, F, 3, H, W) normalised pixels (uint8 from a loader with ``pixels="uint8"``: :meth:`to` normalises
    them on the device); mask: (B, F) bool, True for a real frame;
    tokens: (B, L) int64 token ids (also the targets of Prompt Switch's captioner);
    video_ids: B ids (for de-duplication and error messages);
    skipped: "video_id: reason" of corrupt items left out of this batch (``train.skip_corrupt``).
    """

    frames: Tensor
    mask: Tensor
    tokens: Tensor
    video_ids: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            model_pixels(self.frames.to(device, non_blocking=True)),  # (B, F, 3, H, W) float32
            self.mask.to(device, non_blocking=True),
            self.tokens.to(device, non_blocking=True),
            list(self.video_ids),
            list(self.skipped),
        )


#: how the two directions of the symmetric InfoNCE are combined (protocol ``train.infonce_reduction``)
INFONCE_REDUCTIONS = ("mean", "sum")


def symmetric_infonce(logits: Tensor, reduction: str = "mean") -> Tensor:
    """Symmetric InfoNCE over a (B_text, B_video) logit matrix with the diagonal as positives.

    ``mean`` averages the two directions (CLIP4Clip, X-Pool, Prompt Switch, TS2-Net); ``sum`` adds
    them (CLIP-ViP ``NCELearnableTempLoss``).
    """
    if reduction not in INFONCE_REDUCTIONS:
        raise ValueError(f"infonce reduction {reduction!r}; valid: {', '.join(INFONCE_REDUCTIONS)}")
    targets = torch.arange(logits.shape[0], device=logits.device)
    total = F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)
    return total if reduction == "sum" else 0.5 * total


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    return F.normalize(x, dim=dim, eps=1e-6)


def masked_mean_of_normalized(frame_features: Tensor, mask: Tensor) -> Tensor:
    """CLIP4Clip meanP: L2-normalise frames, average valid frames, L2-normalise again.

    frame_features: (B, F, D); mask: (B, F) bool -> (B, D). A zero mask count is replaced by 1.
    """
    frames = l2_normalize(frame_features)  # (B, F, D)
    weights = mask.to(frames.dtype).unsqueeze(-1)  # (B, F, 1)
    pooled = (frames * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, D)
    return l2_normalize(pooled)


class RetrievalMethod(nn.Module, ABC):
    """Base class of every text-video retrieval method.

    Subclasses receive an open_clip ``CLIP`` model and their options (from the protocol's
    ``[method]`` table; unknown options are an error). They must keep the pretrained CLIP
    parameters under ``self.clip`` so that parameter groups can tell CLIP from new parameters.
    """

    #: False for a method with nothing to learn (the chance floor): the runner records that and skips training
    trainable: ClassVar[bool] = True
    #: symmetric InfoNCE reduction ("mean" | "sum"); the runner sets it from ``train.infonce_reduction``
    infonce_reduction: str = "mean"
    #: segments for segment-based frame samplers when the protocol leaves it to the method (0/None: sampler default)
    sampler_segments: int | None = None

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    # -- the contract ---------------------------------------------------------------------------
    def encode_text(self, tokens: Tensor) -> Encoded:
        """tokens (Q, L) -> {"text": (Q, D) L2-normalised EOT embedding}."""
        return {"text": l2_normalize(self.clip.encode_text(tokens))}

    @abstractmethod
    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        """frames (N, F, 3, H, W), mask (N, F) -> Encoded with leading dim N. Never sees text."""

    def similarity(self, text: Encoded, video: Encoded) -> Tensor:
        """(Q, N) cosine scores; default: dot product of normalised vectors (oneDNN on CPU at inference)."""
        return cpu_linear.linear(text["text"], video["video"])  # (Q, D) @ (D, N) -> (Q, N)

    def inner_product_operands(self, text: Encoded, video: Encoded) -> tuple[Tensor, Tensor] | None:
        """(A (Q, D), B (N, D)) with ``similarity(text, video) == A @ B.T``, or None if it is not one.

        The default ``similarity`` qualifies; a subclass that overrides ``similarity`` opts out unless
        it overrides this too. ``engine.topk`` uses it for its exact bfloat16 prefilter.
        """
        if type(self).similarity is not RetrievalMethod.similarity:
            return None
        return text["text"], video["video"]

    @classmethod
    def frame_count_error(cls, frames: int, options: dict[str, Any]) -> str | None:
        """Why videos of ``frames`` frames cannot be encoded with constructor ``options`` (None: they can).
        Commands check it for every method before any work starts."""
        return None

    @classmethod
    def is_inner_product(cls) -> bool:
        """One stored vector per video, scored by a dot product (the default ``similarity``)."""
        return cls.similarity is RetrievalMethod.similarity

    # -- closed-form cost (optional hooks; ``psbench efficiency`` checks them against fvcore) ---------------
    def offline_flops_per_video(self, frames: int) -> int | None:
        """FLOPs of ``encode_video`` for one video of ``frames`` frames, or None if no closed form is known."""
        return None

    def online_flops_per_pair(self, frames: int, dim: int) -> float | None:
        """FLOPs of ``similarity`` per (query, video) pair: 2 D for a dot product; None if unknown."""
        return 2.0 * dim if self.is_inner_product() else None

    def text_flops_per_query(self) -> int:
        """FLOPs of ``encode_text`` per query: the text tower (a method with a query head adds it)."""
        return text_tower_flops(self.clip)

    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Symmetric InfoNCE over the batch; returns {"loss": total, ...components}.

        Under torch.distributed the Encoded dicts of all ranks are gathered first (local items keep
        their gradient), so the loss is the one of the effective batch on every rank. Contract for
        overrides: the rank average of each returned term must equal the single-process term
        (see ``psbench.distributed``).
        """
        text = gather_encoded(self.encode_text(batch.tokens))
        video = gather_encoded(self.encode_video(batch.frames, batch.mask))
        logits = self.logit_scale.exp() * self.similarity(text, video)  # (B, B), B = effective batch
        loss = symmetric_infonce(logits, self.infonce_reduction)
        return {"loss": loss, "contrastive": loss.detach()}

    # -- shared helpers ------------------------------------------------------------------------
    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale

    def clamp_logit_scale(self) -> None:
        """Clamp the learnable temperature to at most ln(100) (after each optimiser step)."""
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def new_parameter_names(self) -> set[str]:
        """Names of parameters that are not pretrained CLIP weights (trained at the 'new' lr)."""
        return {n for n, _ in self.named_parameters() if not n.startswith("clip.")}

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Split trainable parameters into {"clip": [...], "new": [...]} by name."""
        new = self.new_parameter_names()
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"clip": [], "new": []}
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups["new" if name in new else "clip"].append((name, param))
        return groups

    def extra_state(self) -> dict[str, Any]:
        """Method-specific facts recorded in the run directory (e.g. deviations in effect)."""
        return {}
