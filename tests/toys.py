"""The shared toys of the test suite: tiny retrieval methods with known answers, and fake run directories.

Methods: :class:`StoredEmbeddings` (stored vectors, the default inner-product similarity),
:class:`NegativeDistance` (stored vectors, not an inner product), :class:`StoredAttentionPool`
(text-conditioned softmax pooling over stored frames, X-Pool-like), and :class:`ToyMeanPool` /
:class:`ToyAttentionPool` (which also encode pixels, for the engine's end-to-end paths).
Runs: :func:`make_run` writes a structurally real finished run directory with random per-query ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from psbench.files import atomic
from psbench.method import Encoded, RetrievalMethod
from psbench.protocol import load_protocol, resolve
from psbench.retrieval.metrics import QueryRanks, metrics_from_ranks

#: embedding width and frames per video of the toy pixel methods
D, F = 8, 4


# -- methods over stored embeddings (the engine, top-k and prefilter tests feed them Encoded dicts) --------
class StoredEmbeddings(RetrievalMethod):
    """Stored ``{"text": (Q, D)}`` / ``{"video": (N, D)}`` vectors, default (inner-product) similarity."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        raise NotImplementedError("a stored-embedding toy: tests pass Encoded dicts directly")


class NegativeDistance(StoredEmbeddings):
    """Minus the Euclidean distance: ranks like a dot product on unit vectors but is not one."""

    def similarity(self, text: Encoded, video: Encoded) -> Tensor:
        return torch.cdist(text["text"], video["video"]).neg()  # (Q, N)


class StoredAttentionPool(StoredEmbeddings):
    """Text-conditioned softmax pooling over stored ``{"frames": (N, F, D)}`` (X-Pool-like, not an inner product);
    the softmax in float32 whatever the embeddings' dtype."""

    def similarity(self, text: Encoded, video: Encoded) -> Tensor:
        logits = torch.einsum("qd,nfd->qnf", text["text"], video["frames"])  # (Q, N, F)
        weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)  # (Q, N, F)
        pooled = torch.einsum("qnf,nfd->qnd", weights, video["frames"])  # (Q, N, D)
        return (pooled * text["text"][:, None]).sum(-1)  # (Q, N)


# -- methods that also encode pixels ------------------------------------------------------------------------
class ToyMeanPool(RetrievalMethod):
    """Video = masked mean of a linear map of the pixels; text = embedding of the first token."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(3 * 2 * 2, D, generator=gen))
        self.embed = nn.Parameter(torch.randn(50, D, generator=gen))
        self.seen_training: list[bool] = []

    def encode_text(self, tokens: Tensor) -> Encoded:
        return {"text": self.embed[tokens[:, 0]]}  # (Q, D)

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        self.seen_training.append(self.training)
        feats = frames.flatten(2) @ self.proj  # (N, F, D)
        weights = mask.float().unsqueeze(-1)  # (N, F, 1)
        return {"video": (feats * weights).sum(1) / weights.sum(1).clamp(min=1)}  # (N, D)


class ToyAttentionPool(ToyMeanPool):
    """Stores F frame vectors; similarity pools frames with text-conditioned softmax weights (X-Pool-like)."""

    def encode_video(self, frames: Tensor, mask: Tensor) -> Encoded:
        return {"frames": frames.flatten(2) @ self.proj, "mask": mask}  # (N, F, D), (N, F)

    def similarity(self, text: Encoded, video: Encoded) -> Tensor:
        logits = torch.einsum("qd,nfd->qnf", text["text"], video["frames"])  # (Q, N, F)
        logits = logits.masked_fill(~video["mask"][None], float("-inf"))
        weights = torch.softmax(logits, dim=-1)  # (Q, N, F)
        pooled = torch.einsum("qnf,nfd->qnd", weights, video["frames"])  # (Q, N, D)
        return torch.tanh((pooled * text["text"][:, None]).sum(-1))  # (Q, N)


#: Bound on |float32 score - exact score| of ToyAttentionPool on ``tests/test_engine.py``'s ``toy_data``, in
#: any summation order (unit roundoff u = 2^-24, entries of text and frames in [-1, 1]). The logits are
#: dyadic, hence exact; each softmax weight is within (F + 4) u relative (exp <= 2 ulp, the F-term sum, the division); a
#: pooled entry sum_f w_f x_fd is then within (2F + 4) u (its own F-term sum adds F u, as sum_f w_f = 1);
#: the D-term dot with the text adds D u * D and carries D * (2F + 4) u; tanh adds 2u and does not
#: amplify. 1% slack for the second-order terms. Blocked and unblocked scores may differ by twice this
#: (the block shape picks the BLAS kernel, and with it the summation order, per CPU); a blocking bug
#: moves scores by far more (they are O(0.1) apart).
ATTENTION_POOL_BOUND = (D * D + D * (2 * F + 4) + 2) * 2.0**-24 * 1.01


# -- fake finished runs (the report, table and run-record tests) ------------------------------------------
TEST_HASH = "aaaa1111bbbb2222"
NUM_T2V, NUM_V2T = 60, 40


def _ranks(rng: np.random.Generator, n: int, scale: float) -> QueryRanks:
    greater = np.floor(rng.exponential(scale, size=n)).astype(int)
    ties = (rng.random(n) < 0.1).astype(int)  # a few exact ties, as in real test sets
    return QueryRanks(greater, ties)


def make_run(
    root: Path,
    method: str,
    seed: int,
    scale: float,
    protocol_hash: str,
    test_hash: str = TEST_HASH,
    epochs: int = 2,
    sets: dict | None = None,
    order_accuracy: float | None = None,
) -> Path:
    """One finished run: config.json, environment.json, train_log.jsonl, ranks.json, metrics.json."""
    run_dir = root / f"20260101T00000{seed}_{protocol_hash[:4]}{test_hash[:2]}Z_synthetic_{method}_s{seed}"
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng([seed, int(scale * 10), len(method)])
    t2v, v2t = _ranks(rng, NUM_T2V, scale), _ranks(rng, NUM_V2T, scale)
    cfg = resolve(load_protocol("synthetic"), method, seed, {"train.epochs": epochs, **(sets or {})})
    hashes = {"protocol": protocol_hash, "test_data": test_hash, "train_data": "cccc3333dddd4444"}
    command = f"psbench run --method {method} --dataset synthetic --seed {seed} --set train.epochs={epochs}"
    atomic.write_json(run_dir / "config.json", {"config": cfg.to_dict(), "hashes": hashes, "command": command})
    env = {
        "python": "3.11.7",
        "torch": "2.14.1",
        "open_clip": "3.3.0",
        "device": "cpu",
        "device_name": "cpu",
        "git": {"sha": "0123456789abcdef", "dirty": False},
    }
    atomic.write_json(run_dir / "environment.json", env)
    with open(run_dir / "train_log.jsonl", "w") as log:
        for step in range(epochs * 5):
            loss = 5.0 / (1 + step) + rng.random()
            log.write(json.dumps({"loss": loss, "contrastive": loss, "epoch": step // 5, "step": step}) + "\n")
            if step % 5 == 4:
                log.write(
                    json.dumps({"epoch_summary": {"epoch": step // 5, "mean_loss": loss, "steps": step + 1}}) + "\n"
                )
    caption_video = list(range(NUM_V2T)) + list(range(NUM_T2V - NUM_V2T))
    atomic.write_json(
        run_dir / "ranks.json", {"t2v": t2v.to_dict(), "v2t": v2t.to_dict(), "caption_video": caption_video}
    )
    metrics = {
        "schema_version": 1,
        "protocol": "synthetic",
        "protocol_version": 1,
        "method": method,
        "seed": seed,
        "hashes": hashes,
        "train": {"epochs_run": epochs, "steps": epochs * 5},
        "t2v": metrics_from_ranks(t2v, "expected"),
        "v2t": metrics_from_ranks(v2t, "expected"),
        "tie_rule": "expected",
        "v2t_rule": "group_max",
        "dsl": False,
        "num_queries": NUM_T2V,
    }
    if order_accuracy is not None:
        metrics["order_accuracy"] = order_accuracy
    atomic.write_json(run_dir / "metrics.json", metrics)
    return run_dir
