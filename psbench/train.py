"""The training loop: AdamW with CLIP / new parameter groups, warmup + cosine, clipping, checkpoints.

Model selection follows the protocol: ``last`` (default) keeps the final epoch; ``val`` keeps the
epoch with the best validation text-to-video R@1; ``test_official`` does the same on the TEST split,
as every official code base does (spec section 9) — allowed only when a protocol names it, and
labelled in the run record.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from psbench.method import Batch, RetrievalMethod
from psbench.protocol import TrainConfig
from psbench.runs import append_jsonl, atomic_torch_save

log = logging.getLogger(__name__)

SELECTION_RULES = ("last", "val", "test_official")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message names the step, the batch and the checkpoint."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts (tensors, lists, ints)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), None))


def build_optimizer(method: RetrievalMethod, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two learning-rate groups (CLIP, new); optionally no decay on biases and norms."""
    groups: list[dict[str, Any]] = []
    for group_name, named in method.parameter_groups().items():
        lr = cfg.lr_clip if group_name == "clip" else cfg.lr_new
        decay = [p for n, p in named if not (cfg.no_decay_bias_norm and _is_bias_or_norm(n, p))]
        no_decay = [p for n, p in named if cfg.no_decay_bias_norm and _is_bias_or_norm(n, p)]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": cfg.weight_decay, "name": group_name})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{group_name}_nodecay"})
    return torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps)


def _is_bias_or_norm(name: str, param: Tensor) -> bool:
    return param.ndim < 2 or name.endswith(".bias") or "ln_" in name or "norm" in name


def warmup_cosine(total_steps: int, warmup: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup over ``warmup * total`` steps, then cosine decay to 0."""
    warm = max(1, int(round(warmup * total_steps))) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class TrainResult:
    epochs_run: int
    steps: int
    selected_epoch: int
    selection: str
    history: list[dict[str, Any]]


def train(
    method: RetrievalMethod,
    loader: torch.utils.data.DataLoader,
    cfg: TrainConfig,
    run_dir: Path,
    device: torch.device,
    validate: Callable[[], float] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train ``method`` for ``cfg.epochs``; checkpoint every epoch; return what was selected.

    ``validate`` returns the selection score (t2v R@1) of the current weights on the split the
    protocol's selection rule names; it is called once per epoch when the rule is not ``last``.
    """
    if cfg.selection not in SELECTION_RULES:
        raise ValueError(f"train.selection={cfg.selection!r}; valid: {', '.join(SELECTION_RULES)}")
    if cfg.selection != "last" and validate is None:
        raise ValueError(f"train.selection={cfg.selection!r} needs a validation split")
    steps_per_epoch = len(loader)
    if cfg.epochs > 0 and steps_per_epoch == 0:
        raise ValueError("the training loader yields no batch (dataset smaller than the batch size?)")
    total = cfg.epochs * steps_per_epoch
    optimizer = build_optimizer(method, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, cfg.warmup))
    use_amp = device.type == "cuda"
    log_path = run_dir / "train_log.jsonl"
    ckpt_path = run_dir / "checkpoint_last.pt"
    best_score, best_epoch, best_state = -math.inf, cfg.epochs - 1, None
    history: list[dict[str, Any]] = []
    step = 0
    method.to(device)
    for epoch in range(cfg.epochs):
        method.train()
        sampler = loader.batch_sampler if hasattr(loader.batch_sampler, "set_epoch") else loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        epoch_losses: list[float] = []
        for batch in loader:
            batch = batch.to(device) if isinstance(batch, Batch) else batch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = method.training_loss(batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                last = str(ckpt_path) if ckpt_path.exists() else "none (no epoch finished yet)"
                raise NonFiniteLossError(
                    f"non-finite loss {loss.item()} at step {step} (epoch {epoch}); batch video ids "
                    f"{batch.video_ids[:8]}{'...' if len(batch.video_ids) > 8 else ''}; last good checkpoint: {last}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            method.clamp_logit_scale()
            record = {k: float(v.detach()) for k, v in losses.items()}
            record.update(
                step=step, epoch=epoch, lr=[g["lr"] for g in optimizer.param_groups], grad_norm=float(grad_norm)
            )
            append_jsonl(log_path, record)
            epoch_losses.append(record["loss"])
            step += 1
            if on_step is not None:
                on_step(step, total, record["loss"])
        summary: dict[str, Any] = {"epoch": epoch, "mean_loss": float(np.mean(epoch_losses)), "steps": step}
        if validate is not None and cfg.selection != "last":
            score = validate()
            summary["selection_R1"] = score
            if score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in method.state_dict().items()}
        history.append(summary)
        append_jsonl(log_path, {"epoch_summary": summary})
        atomic_torch_save(
            {
                "epoch": epoch,
                "step": step,
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
            },
            ckpt_path,
        )
        log.info("epoch %d: mean loss %.4f", epoch, summary["mean_loss"])
    if best_state is not None:
        method.load_state_dict(best_state)
    selected = best_epoch if cfg.selection != "last" else cfg.epochs - 1
    return TrainResult(cfg.epochs, step, selected, cfg.selection, history)
