"""Learning-rate schedules and optimisers of the official training recipes (protocol ``train.schedule`` /
``train.optimizer``; spec §2.4, §5.5, §6.8, §10.20).

A schedule is ``make(total_steps, warmup) -> factor(step)``, the multiplier of the base learning rate
used by optimiser step ``step`` (0-based; ``torch.optim.lr_scheduler.LambdaLR`` applies ``factor(0)``
to the first step):

* ``psbench_cosine``: psbench's original rule: ``warm = round(warmup * total)`` (at least 1),
  ``(step + 1) / warm`` during warm-up, then a half cosine over the remaining steps.
* ``hf_cosine``: Hugging Face ``get_cosine_schedule_with_warmup`` as X-Pool and Prompt Switch call it:
  ``warm = int(warmup * total)``; ``step / max(1, warm)`` during warm-up (0 at step 0), then
  ``max(0, 0.5 * (1 + cos(pi * num_cycles * 2 * progress)))`` with ``num_cycles = 0.5`` and
  ``progress = (step - warm) / max(1, total - warm)``.
* ``bert_warmup_cosine``: BertAdam's ``warmup_cosine`` (CLIP4Clip, TS2-Net) on overall progress
  ``x = step / total``: ``x / warmup`` while ``x < warmup``, else ``0.5 * (1 + cos(pi * x))``; the
  factor jumps from 1 to ``0.5 * (1 + cos(pi * warmup))`` at the end of warm-up.

Optimisers: ``adamw`` (torch AdamW) and ``bert_adam`` (:class:`BertAdam`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

Schedule = Callable[[int], float]


def psbench_cosine(total_steps: int, warmup: float) -> Schedule:
    """psbench's original warm-up + cosine (see the module docstring)."""
    warm = max(1, int(round(warmup * total_steps))) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def hf_cosine(total_steps: int, warmup: float, num_cycles: float = 0.5) -> Schedule:
    """Hugging Face cosine with linear warm-up over ``int(warmup * total_steps)`` steps."""
    warm = int(warmup * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return float(step) / float(max(1, warm))
        progress = float(step - warm) / float(max(1, total_steps - warm))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    return factor


def bert_warmup_cosine(total_steps: int, warmup: float) -> Schedule:
    """BertAdam ``warmup_cosine`` on overall progress ``step / total_steps``."""

    def factor(step: int) -> float:
        x = step / max(1, total_steps)
        if x < warmup:
            return x / warmup
        return 0.5 * (1.0 + math.cos(math.pi * x))

    return factor


SCHEDULES: dict[str, Callable[[int, float], Schedule]] = {
    "psbench_cosine": psbench_cosine,
    "hf_cosine": hf_cosine,
    "bert_warmup_cosine": bert_warmup_cosine,
}

OPTIMIZERS = ("adamw", "bert_adam")


def make_schedule(name: str, total_steps: int, warmup: float) -> Schedule:
    """The named schedule's factor function; unknown names fail listing the valid ones."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](total_steps, warmup)


class BertAdam(torch.optim.Optimizer):
    """CLIP4Clip's BertAdam update without its built-in schedule (use a ``bert_warmup_cosine`` LambdaLR).

    Per parameter tensor, in this order: clip the tensor's own gradient norm to ``max_grad_norm``
    (when > 0, in place, after any global clip the caller applied); ``m = b1 m + (1 - b1) g``,
    ``v = b2 v + (1 - b2) g^2``; ``update = m / (sqrt(v) + eps) + weight_decay * p`` with **no bias
    correction**; ``p -= lr * update``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_grad_norm: float = 1.0,
    ) -> None:
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"BertAdam: invalid lr={lr}, eps={eps} or betas={betas}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
                m, v = state["next_m"], state["next_v"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update = update + group["weight_decay"] * p
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss
