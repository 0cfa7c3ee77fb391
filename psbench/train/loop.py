"""The training loop: AdamW with CLIP / new parameter groups, warmup + cosine, clipping, checkpoints.

Model selection follows the protocol: ``last`` (default) keeps the final epoch; ``val`` keeps the
epoch with the best validation text-to-video R@1; ``test_official`` does the same on the TEST split,
as every official code base does (spec section 9) — allowed only when a protocol names it, and
labelled in the run record.

Resuming: ``checkpoint_last.pt`` (written atomically after every epoch) holds the model, optimiser,
scheduler, RNG states, epoch, step, history, skipped videos and the best weights so far; batches are
seeded per (seed, epoch), so the epoch after the checkpoint is the one an uninterrupted run would
have seen, and a resumed CPU run ends with the same weights bit for bit. bf16 autocast needs no
gradient scaler, so there is no scaler state.

Distributed (``psbench.distributed``): the method is wrapped in DDP; each step's log values are
averaged over ranks (which makes a non-finite loss stop every rank at the same step); only rank 0
writes the log and the checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from psbench import distributed
from psbench.data.video import VideoError
from psbench.files import atomic, jsonio
from psbench.method import Batch, RetrievalMethod
from psbench.protocol import TrainConfig
from psbench.train.optim import OPTIMIZERS, BertAdam, make_schedule, psbench_cosine

log = logging.getLogger(__name__)

SELECTION_RULES = ("last", "val", "test_official")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message names the step, the batch and the checkpoint."""


class TrainingDataError(RuntimeError):
    """A training video could not be read; the message names the file, the epoch and the step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[dict[str, Any]]:
    """With ``enabled``: deterministic algorithms, deterministic cuDNN without autotuning, and a fixed
    cuBLAS workspace (set before the first cuBLAS call). Yields the settings in effect (for the run
    record); restores the previous ones on exit."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield {
            "deterministic": enabled,
            "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        }
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[1], previous[2]
        if previous[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = previous[3]


def rng_state() -> dict[str, Any]:
    """RNG states in a form ``torch.load(weights_only=True)`` accepts (tensors, lists, ints)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
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
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), None))


def build_optimizer(method: RetrievalMethod, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (AdamW or BertAdam) with two learning-rate groups (CLIP, new); optionally no
    decay on biases and norms. BertAdam clips each tensor's gradient to ``cfg.per_tensor_clip``."""
    groups: list[dict[str, Any]] = []
    for group_name, named in method.parameter_groups().items():
        lr = cfg.lr_clip if group_name == "clip" else cfg.lr_new
        decay = [p for n, p in named if not (cfg.no_decay_bias_norm and _is_bias_or_norm(n, p))]
        no_decay = [p for n, p in named if cfg.no_decay_bias_norm and _is_bias_or_norm(n, p)]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": cfg.weight_decay, "name": group_name})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{group_name}_nodecay"})
    if cfg.optimizer == "bert_adam":
        return BertAdam(groups, betas=tuple(cfg.betas), eps=cfg.eps, max_grad_norm=cfg.per_tensor_clip)
    if cfg.optimizer != "adamw":
        raise ValueError(f"train.optimizer={cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    return torch.optim.AdamW(groups, betas=tuple(cfg.betas), eps=cfg.eps)


def recipe_facts(cfg: TrainConfig) -> dict[str, Any]:
    """The training-recipe choices in effect, for the run record's ``method_facts``."""
    return {
        "unique_videos": cfg.unique_videos,
        "drop_last": cfg.drop_last,
        "schedule": cfg.schedule,
        "optimizer": cfg.optimizer,
        "per_tensor_clip": cfg.per_tensor_clip,
        "global_grad_clip": cfg.grad_clip,
        "infonce_reduction": cfg.infonce_reduction,
        "adam_eps": cfg.eps,
        "bias_correction": cfg.optimizer == "adamw",
        "deviations": recipe_deviations(cfg),
    }


def recipe_deviations(cfg: TrainConfig) -> list[str]:
    """Where the recipe in effect still departs from the official code (protocols/README.md)."""
    notes: list[str] = []
    if cfg.optimizer == "adamw":
        notes.append(
            "torch AdamW: eps added after bias-correcting v, decay applied before the step (the HF-style AdamW "
            "of X-Pool, Prompt Switch and CLIP-ViP adds eps to sqrt(v) before correction and decays after)"
        )
    if cfg.optimizer == "bert_adam" and cfg.no_decay_bias_norm:
        notes.append("no decay on biases and norm parameters (BertAdam's filter spares only names with 'bias')")
    if cfg.schedule == "psbench_cosine":
        notes.append("psbench warm-up rule (step + 1) / round(warmup * total), not an official schedule")
    if cfg.unique_videos:
        notes.append("repeated videos dropped within each process's share of the batch (official: one process)")
    return notes


def _is_bias_or_norm(name: str, param: Tensor) -> bool:
    return param.ndim < 2 or name.endswith(".bias") or "ln_" in name or "norm" in name


#: psbench's original schedule (``train.schedule = "psbench_cosine"``; also used by ``psbench.train.pretrain``)
warmup_cosine = psbench_cosine


@dataclass
class TrainResult:
    epochs_run: int
    steps: int
    selected_epoch: int
    selection: str
    history: list[dict[str, Any]]
    skipped_videos: dict[str, str] = field(default_factory=dict)  # video id -> first error (skip_corrupt)
    resumed_from_epoch: int | None = None


class _TrainingLoss(nn.Module):
    """``method.training_loss`` as a forward pass, so DDP can wrap it."""

    def __init__(self, method: RetrievalMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.method.training_loss(batch)


def _loss_module(method: RetrievalMethod, device: torch.device) -> nn.Module:
    wrapper = _TrainingLoss(method)
    if not distributed.is_distributed():
        return wrapper
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(wrapper, device_ids=ids, find_unused_parameters=True)


def _batches(loader: torch.utils.data.DataLoader, epoch: int, first_step: int) -> Iterator[Batch]:
    """The loader's batches; an unreadable video becomes a TrainingDataError naming epoch and step."""
    iterator = iter(loader)
    step = first_step
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except VideoError as exc:
            raise TrainingDataError(
                f"epoch {epoch}, step {step}: cannot read a training video: {exc}. Set train.skip_corrupt=true "
                "to skip corrupt videos (they are counted in the run record)"
            ) from exc
        yield batch
        step += 1


def _gather_skipped(skipped: list[str]) -> list[str]:
    if not distributed.is_distributed():
        return skipped
    parts: list[list[str]] = [[] for _ in range(distributed.world_size())]
    torch.distributed.all_gather_object(parts, skipped)
    return [s for part in parts for s in part]


def load_resume_state(path: Path, trust: bool = False) -> dict[str, Any]:
    """A checkpoint written by :func:`train` (weights_only unless ``trust``); error naming the file if not one."""
    from psbench.backbone.checkpoint import load_run_checkpoint

    ckpt = load_run_checkpoint(path, trust)
    missing = [k for k in ("epoch", "step", "model", "optimizer", "scheduler", "rng") if k not in ckpt]
    if missing:
        raise RuntimeError(f"{path} is not a training checkpoint (missing {', '.join(missing)})")
    return ckpt


def train(
    method: RetrievalMethod,
    loader: torch.utils.data.DataLoader,
    cfg: TrainConfig,
    run_dir: Path,
    device: torch.device,
    validate: Callable[[], float] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``method`` for ``cfg.epochs``; checkpoint every epoch; return what was selected.

    ``validate`` returns the selection score (t2v R@1) of the current weights on the split the
    protocol's selection rule names; it is called once per epoch when the rule is not ``last``.
    ``resume`` is a checkpoint from :func:`load_resume_state`: training continues after its epoch.
    """
    if cfg.selection not in SELECTION_RULES:
        raise ValueError(f"train.selection={cfg.selection!r}; valid: {', '.join(SELECTION_RULES)}")
    if cfg.selection != "last" and validate is None:
        raise ValueError(f"train.selection={cfg.selection!r} needs a validation split")
    steps_per_epoch = len(loader)
    if cfg.epochs > 0 and steps_per_epoch == 0:
        raise ValueError("the training loader yields no batch (dataset smaller than the batch size?)")
    total = cfg.epochs * steps_per_epoch
    method.to(device)
    optimizer = build_optimizer(method, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_schedule(cfg.schedule, total, cfg.warmup))
    use_amp = device.type == "cuda"
    main = distributed.is_main()
    log_path = run_dir / "train_log.jsonl"
    ckpt_path = run_dir / "checkpoint_last.pt"
    best_score, best_epoch, best_state = -math.inf, cfg.epochs - 1, None
    history: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    step, first_epoch = 0, 0
    if resume is not None:
        method.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        first_epoch, step = int(resume["epoch"]) + 1, int(resume["step"])
        history = list(resume.get("history", []))
        skipped = dict(resume.get("skipped_videos", {}))
        best_score, best_epoch = float(resume.get("best_score", -math.inf)), int(resume.get("best_epoch", best_epoch))
        best_state = resume.get("best_model")
        if main:
            jsonio.append_jsonl(log_path, {"resumed": {"from_checkpoint_epoch": first_epoch - 1, "step": step}})
        log.info("resuming after epoch %d (step %d) from %s", first_epoch - 1, step, ckpt_path)
    loss_module = _loss_module(method, device)
    for epoch in range(first_epoch, cfg.epochs):
        method.train()
        sampler = loader.batch_sampler if hasattr(loader.batch_sampler, "set_epoch") else loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        epoch_losses: list[float] = []
        for batch in _batches(loader, epoch, step):
            batch = batch.to(device) if isinstance(batch, Batch) else batch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = loss_module(batch)
            values = {k: float(v.detach()) for k, v in losses.items()}
            values["skipped"] = float(len(batch.skipped))
            values = distributed.all_reduce_mean(values, device)  # same numbers on every rank
            if not math.isfinite(values["loss"]):
                last = str(ckpt_path) if ckpt_path.exists() else "none (no epoch finished yet)"
                raise NonFiniteLossError(
                    f"non-finite loss {values['loss']} at step {step} (epoch {epoch}); batch video ids "
                    f"{batch.video_ids[:8]}{'...' if len(batch.video_ids) > 8 else ''}; last good checkpoint: {last}"
                )
            if values.pop("skipped") > 0:
                for entry in _gather_skipped(batch.skipped):
                    video_id, _, reason = entry.partition(": ")
                    skipped.setdefault(video_id, reason)
                    if main:
                        jsonio.append_jsonl(log_path, {"skipped_video": video_id, "reason": reason, "step": step})
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            method.clamp_logit_scale()
            record: dict[str, Any] = dict(values)
            record.update(
                step=step, epoch=epoch, lr=[g["lr"] for g in optimizer.param_groups], grad_norm=float(grad_norm)
            )
            if main:
                jsonio.append_jsonl(log_path, record)
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
        if main:
            jsonio.append_jsonl(log_path, {"epoch_summary": summary})
            state: dict[str, Any] = {
                "epoch": epoch,
                "step": step,
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "history": history,
                "skipped_videos": skipped,
                "best_score": best_score,
                "best_epoch": best_epoch,
            }
            if best_state is not None:
                state["best_model"] = best_state
            atomic.torch_save(state, ckpt_path)
        distributed.barrier()  # no rank runs ahead of the checkpoint
        log.info("epoch %d: mean loss %.4f", epoch, summary["mean_loss"])
    if best_state is not None:
        method.load_state_dict(best_state)
    selected = best_epoch if cfg.selection != "last" else cfg.epochs - 1
    resumed = None if resume is None else int(resume["epoch"])
    return TrainResult(cfg.epochs, step, selected, cfg.selection, history, skipped, resumed)
