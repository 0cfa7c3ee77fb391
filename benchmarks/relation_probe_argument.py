"""Numerical check of the relation probe's argument: additive pooling + cosine readout cannot pass a group.

The probe's groups are four videos aa, bb (same colour in both halves) and ab, ba (different colours)
of T frame slots, half per colour. Here every frame feature is a free parameter f[colour, slot] (the
most general position-coded per-frame feature a frame encoder can produce for these frames), the two
captions are free vectors, and the scores are cosines. Gradient descent then maximises the probe's
video-to-text margins directly, over all groups of K colours, from many random starts:

* ``additive``: v(V) = mean_t f[V_t, t] (optionally each f L2-normalised first, as CLIP4Clip and Prompt
  Switch do). The theory says: the four margins of a group sum to 0, so the group score is 0 and at
  most 3 of 4 videos are right (video accuracy <= 75%).
* ``exchange``: the same, but every frame feature also sees the mean feature of the other half
  through one tanh layer before pooling (the least cross-frame exchange one can add). It can pass every group.

Prints, per model, the best group score and video accuracy over the restarts and the largest
|sum of a group's margins, each times its video's |v||: the cosine divides each video's margins by its
own norm |v|, which changes no sign; the sum of the un-normalised margins is the linear identity, 0 up to
rounding for additive pooling. Usage: ``python benchmarks/relation_probe_argument.py [--restarts 20]``.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor


def groups_of(colours: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(colours), 2))


def videos(a: int, b: int, slots: int) -> Tensor:
    """Colour index of every slot of aa, bb, ab, ba: (4, T)."""
    half = slots // 2
    rows = [(a, a), (b, b), (a, b), (b, a)]
    return torch.tensor([[c1] * half + [c2] * (slots - half) for c1, c2 in rows])


class FreeFeatures(torch.nn.Module):
    """f[colour, slot] and two caption vectors; ``exchange`` adds one cross-half interaction layer."""

    def __init__(self, colours: int, slots: int, dim: int, exchange: bool, unit_frames: bool) -> None:
        super().__init__()
        self.f = torch.nn.Parameter(torch.randn(colours, slots, dim))
        self.captions = torch.nn.Parameter(torch.randn(2, dim))  # (2, D): "same", "different"
        self.mix = torch.nn.Linear(2 * dim, dim) if exchange else None
        self.unit_frames = unit_frames

    def video(self, colour_of_slot: Tensor) -> Tensor:
        """(V, T) colour indices -> (V, D) pooled video vectors."""
        slots = torch.arange(colour_of_slot.shape[1])
        x = self.f[colour_of_slot, slots]  # (V, T, D)
        if self.mix is not None:
            half = x.shape[1] // 2
            other = torch.cat(
                [
                    x[:, half:].mean(1, keepdim=True).expand(-1, half, -1),
                    x[:, :half].mean(1, keepdim=True).expand(-1, x.shape[1] - half, -1),
                ],
                dim=1,
            )  # (V, T, D) the other half's mean feature, per slot
            x = x + torch.tanh(self.mix(torch.cat([x, other], dim=-1)))  # (V, T, D)
        if self.unit_frames:
            x = torch.nn.functional.normalize(x, dim=-1)
        return x.mean(1)  # (V, D)

    def margins(self, colour_of_slot: Tensor, normalise: bool = True) -> Tensor:
        """(G*4, T) -> (G, 4) own caption's cosine minus the other's (times |v| if not ``normalise``)."""
        v = self.video(colour_of_slot)  # (G*4, D)
        v = torch.nn.functional.normalize(v, dim=-1) if normalise else v
        g = torch.nn.functional.normalize(self.captions, dim=-1)  # (2, D)
        s = v @ g.T  # (G*4, 2)
        m = (s[:, 0] - s[:, 1]).view(-1, 4)  # (G, 4) same minus different
        return m * torch.tensor([1.0, 1.0, -1.0, -1.0])


def fit(model: FreeFeatures, data: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.softplus(-20.0 * model.margins(data)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model.margins(data).double(), model.margins(data, normalise=False).double()


def best_over_restarts(
    colours: int, slots: int, dim: int, restarts: int, steps: int, exchange: bool, unit_frames: bool
) -> dict[str, float]:
    """Best group score and video accuracy (%) over restarts, and the largest |linear identity residual|."""
    data = torch.cat([videos(a, b, slots) for a, b in groups_of(colours)])  # (G*4, T)
    best_group, best_video, worst_sum = 0.0, 0.0, 0.0
    for restart in range(restarts):
        torch.manual_seed(restart)
        m, linear = fit(FreeFeatures(colours, slots, dim, exchange, unit_frames), data, steps)
        best_group = max(best_group, 100.0 * float((m > 1e-6).all(dim=1).double().mean()))
        best_video = max(best_video, 100.0 * float((m > 1e-6).double().mean()))
        worst_sum = max(worst_sum, float(linear.sum(dim=1).abs().max()))
    return {"group_score": best_group, "video_accuracy": best_video, "identity_residual": worst_sum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--colours", type=int, default=4)
    parser.add_argument("--slots", type=int, default=12)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = Table(
        title=f"{len(groups_of(args.colours))} groups of 4 videos, {args.slots} frame slots, "
        f"best of {args.restarts} restarts"
    )
    for column in ("model", "best group score", "best video accuracy", "max |sum of |v| x margin|"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for exchange, unit in ((False, False), (False, True), (True, False), (True, True)):
        r = best_over_restarts(args.colours, args.slots, args.dim, args.restarts, args.steps, exchange, unit)
        name = ("exchange" if exchange else "additive") + (", unit frames" if unit else "")
        table.add_row(name, f"{r['group_score']:.1f}%", f"{r['video_accuracy']:.1f}%", f"{r['identity_residual']:.2e}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
