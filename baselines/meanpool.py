"""Mean-pool CLIP4Clip ("meanP", Luo et al. 2021), spec §2.

Each frame goes through the unmodified CLIP image encoder; frame embeddings are L2-normalised,
averaged over valid frames and normalised again. The score is the cosine with the text EOT
embedding. No new parameters; the video embedding is computed offline, similarity is a dot product.
"""

from __future__ import annotations

from torch import Tensor, nn

from psbench.backbone.clip import frame_features
from psbench.backbone.flops import frame_passes_flops
from psbench.method import Encoded, RetrievalMethod, masked_mean_of_normalized


class MeanPool(RetrievalMethod):
    """CLIP4Clip with parameter-free mean pooling."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__(clip)

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        n, f = frames.shape[:2]
        feats = frame_features(self.clip.visual, frames.flatten(0, 1))  # (N*F, D)
        feats = feats.view(n, f, -1)  # (N, F, D)
        return {"video": masked_mean_of_normalized(feats, mask)}  # (N, D)

    def offline_flops_per_video(self, frames: int) -> int:
        """F independent CLIP frame passes (the mean is element-wise)."""
        return frame_passes_flops(self.clip.visual, frames)
