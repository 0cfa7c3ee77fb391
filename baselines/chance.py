"""The chance floor: a deterministic random baseline (mteb's habit), registered as ``random``.

Every video and every caption gets a pseudo-random unit vector seeded by a hash of its own input
(the frames that are real, or the token ids), so the scores are a fixed function of the inputs that
carries no information about which caption belongs to which video. Ranks of the ground truth are then
uniform: t2v R@K = 100 K / N in expectation over N gallery videos, MnR = (N + 1) / 2; v2t likewise over
the captions. The method has nothing to train (``trainable = False``: the runner records that and
skips training), costs no FLOPs offline (hashing is not arithmetic) and 2 D per pair online, like
any inner-product method. It is a floor for reports and a zero-cost double for engine, CLI and
report tests.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

from psbench.method import Encoded, RetrievalMethod, l2_normalize


def _seeded_unit_vector(data: Tensor, dim: int, salt: bytes) -> Tensor:
    """(dim,) float32 unit vector from a hash of ``data``'s bytes (the same bytes give the same vector)."""
    digest = hashlib.blake2b(data.detach().cpu().contiguous().numpy().tobytes(), digest_size=8, key=salt).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return l2_normalize(torch.randn(dim, generator=g))


class RandomScores(RetrievalMethod):
    """Chance floor: hash-seeded random unit vectors for videos and captions (no learning)."""

    trainable = False

    def __init__(self, clip: nn.Module, dim: int = 256) -> None:
        super().__init__(clip)
        self.dim = int(dim)
        for p in self.clip.parameters():  # nothing of CLIP is used or trained
            p.requires_grad_(False)

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        # frames (N, F, 3, H, W), mask (N, F) -> (N, D): each video's real frames only (padding cannot matter)
        rows = [_seeded_unit_vector(frames[i][mask[i]], self.dim, b"video") for i in range(frames.shape[0])]
        return {"video": torch.stack(rows).to(frames.device) if rows else frames.new_zeros(0, self.dim)}

    def encode_text(self, tokens: Tensor) -> Encoded:
        # tokens (Q, L) -> (Q, D)
        rows = [_seeded_unit_vector(tokens[i], self.dim, b"text") for i in range(tokens.shape[0])]
        return {"text": torch.stack(rows).to(tokens.device) if rows else tokens.new_zeros(0, self.dim).float()}

    def offline_flops_per_video(self, frames: int) -> int:
        """No arithmetic: a hash of the frames seeds the vector."""
        return 0

    def online_flops_per_pair(self, frames: int, dim: int) -> float:
        """A dot product of this method's own width (``dim`` option), 2 D per pair."""
        return 2.0 * self.dim

    def text_flops_per_query(self) -> int:
        """No arithmetic: a hash of the token ids seeds the vector."""
        return 0

    def extra_state(self) -> dict[str, object]:
        return {"dim": self.dim, "chance_floor": "hash-seeded random unit vectors; nothing trained"}
