"""Pretrain the tiny CLIP on single synthetic frames (a stand-in for CLIP's image-text pretraining).

Reads ``frame_captions.json`` written by the synthetic generator (frames of TRAIN videos with a
caption of what is visible), trains an open_clip model contrastively, and saves an ordinary
open_clip checkpoint that the synthetic protocol then loads through the same local-weights path a
real user's CLIP checkpoint takes. Deterministic for a seed; cached by a key of data and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from psbench.backbone import clip as backbone
from psbench.data.transforms import TRANSFORMS
from psbench.data.video import decode_frames
from psbench.files import atomic, jsonio
from psbench.progress import Progress, SilentProgress
from psbench.train.loop import seed_everything, warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    arch: str = "psbench-tiny"
    resolution: int = 32
    max_words: int = 32
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    seed: int = 0


def load_frame_pairs(data_root: Path, cfg: PretrainConfig) -> tuple[Tensor, list[str]]:
    """Decode every captioned frame once per video. -> pixels (N, 3, S, S), captions (N,)."""
    entries = json.loads((data_root / "frame_captions.json").read_text())
    by_video: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for e in entries:
        by_video[e["video_id"]].append((int(e["frame"]), e["caption"]))
    transform = TRANSFORMS.get("resize_center_crop")(cfg.resolution)
    pixels, captions = [], []
    for video_id in sorted(by_video):
        items = by_video[video_id]
        frames = decode_frames(data_root / "videos" / f"{video_id}.mp4", [f for f, _ in items])  # (k, H, W, 3)
        pixels.append(transform(frames, None))  # (k, 3, S, S)
        captions.extend(c for _, c in items)
    return torch.cat(pixels), captions


def multi_positive_infonce(logits: Tensor, same: Tensor) -> Tensor:
    """Symmetric InfoNCE where every pair with an identical caption counts as a positive.

    logits (B, B) image-to-text; same (B, B) bool. Targets are uniform over the positives.
    """
    targets = same.float() / same.float().sum(1, keepdim=True)  # (B, B)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t()))


def cache_key(data_root: Path, cfg: PretrainConfig) -> str:
    meta = (data_root / "frame_captions.json").read_bytes()
    return hashlib.sha256(meta + json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def pretrain_tiny_clip(
    data_root: Path,
    out: Path | None = None,
    cfg: PretrainConfig | None = None,
    progress: Progress | None = None,
    force: bool = False,
) -> Path:
    """Train (or reuse the cached) tiny CLIP; return the checkpoint path."""
    cfg = cfg or PretrainConfig()
    progress = progress or SilentProgress()
    data_root = Path(data_root)
    out = Path(out) if out else data_root / "tiny_clip.pt"
    meta_path = out.with_suffix(".json")
    key = cache_key(data_root, cfg)
    if not force and out.is_file() and meta_path.is_file() and jsonio.read_json(meta_path).get("key") == key:
        log.info("tiny CLIP already pretrained: %s", out)
        return out
    seed_everything(cfg.seed)
    pixels, captions = load_frame_pairs(data_root, cfg)
    model = backbone.create_clip(cfg.arch)
    tokenizer = backbone.tokenizer_for(model, cfg.max_words)
    tokens = tokenizer(captions)  # (N, L)
    caption_ids = torch.tensor(np.unique(np.array(captions), return_inverse=True)[1])  # (N,)
    n = len(captions)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, cfg.warmup))
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses: list[float] = []
    with progress.task("pretrain tiny CLIP", total) as task:
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=generator)
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                image = F.normalize(model.encode_image(pixels[idx]), dim=-1)  # (B, D)
                text = F.normalize(model.encode_text(tokens[idx]), dim=-1)  # (B, D)
                logits = model.logit_scale.exp() * image @ text.t()  # (B, B)
                same = caption_ids[idx, None] == caption_ids[None, idx]  # (B, B)
                loss = multi_positive_infonce(logits, same)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, np.log(100.0))
                losses.append(loss.item())
                task.advance(1, loss=losses[-1])
    model.eval()
    accuracy = _retrieval_accuracy(model, pixels, tokens, caption_ids)
    backbone.save_clip(model, out)
    atomic.write_json(
        meta_path,
        {"key": key, "config": asdict(cfg), "pairs": n, "final_loss": float(np.mean(losses[-steps_per_epoch:]))}
        | {"image_to_text_top1": accuracy},
    )
    log.info("pretrained tiny CLIP on %d frames: image->text top-1 %.1f%%, saved %s", n, accuracy, out)
    return out


@torch.inference_mode()
def _retrieval_accuracy(model: torch.nn.Module, pixels: Tensor, tokens: Tensor, caption_ids: Tensor) -> float:
    """Share of frames whose best-scoring distinct caption is their own (a sanity figure)."""
    unique_ids, first = np.unique(caption_ids.numpy(), return_index=True)
    text = F.normalize(model.encode_text(tokens[first]), dim=-1)  # (U, D)
    image = F.normalize(model.encode_image(pixels), dim=-1)  # (N, D)
    best = (image @ text.t()).argmax(1)  # (N,)
    return float((torch.as_tensor(unique_ids)[best] == caption_ids).float().mean() * 100)
