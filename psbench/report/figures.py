"""Report figures (PNG, matplotlib Agg): training curves and R@1 with confidence intervals."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from psbench.report.collect import DIRECTIONS, Group  # noqa: E402
from psbench.report.quality import GroupQuality  # noqa: E402

DPI = 200
#: one colour per method in every figure of a report
METHOD_COLORS = {
    "meanpool": "C0",
    "promptswitch": "C1",
    "tokenshift": "C2",
    "videoproxy": "C4",
    "xpool": "C3",
    "xpool-folded": "C5",
}


def wrap_label(label: str, width: int = 34) -> str:
    """A plot label wrapped onto lines of at most ``width`` characters (breaking after commas)."""
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False)) or label


def method_color(method: str, index: int) -> str:
    """The method's fixed colour; variants (``promptswitch-noswitch``) and unknown methods get C5.. by index."""
    return METHOD_COLORS.get(method, f"C{5 + index % 5}")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start, so the curve starts at step 0)."""
    if window <= 1 or values.size == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, values.size + 1)
    start = np.maximum(0, idx - window)
    return (cumsum[idx] - cumsum[start]) / (idx - start)


def seed_mean_curve(group: Group, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and the mean over seeds of ``key`` per step, over the steps every seed logged."""
    per_seed = []
    for run in group.runs:
        steps, _ = run.train_log()
        curve = {int(s["step"]): float(s[key]) for s in steps if key in s and "step" in s}
        if curve:
            per_seed.append(curve)
    if not per_seed:
        return None
    common = sorted(set.intersection(*(set(c) for c in per_seed)))
    if not common:
        return None
    return np.array(common), np.array([np.mean([c[s] for c in per_seed]) for s in common])


def seed_mean_validation(group: Group) -> tuple[np.ndarray, np.ndarray] | None:
    """Epochs and the mean over seeds of the validation R@1 logged by model selection, if any."""
    per_seed = []
    for run in group.runs:
        _, epochs = run.train_log()
        curve = {int(e["epoch"]): float(e["selection_R1"]) for e in epochs if "selection_R1" in e}
        if curve:
            per_seed.append(curve)
    if not per_seed:
        return None
    common = sorted(set.intersection(*(set(c) for c in per_seed)))
    return (np.array(common), np.array([np.mean([c[e] for c in per_seed]) for e in common])) if common else None


def training_curves(protocol: str, groups: list[Group], out: Path) -> Path | None:
    """Contrastive loss (comparable across methods), total loss where it differs (e.g. + caption loss) and
    validation R@1 per epoch; one line per trained row, mean over seeds, loss smoothed by a moving average."""
    trained = sorted((g for g in groups if not g.zero_shot), key=lambda g: g.label)
    contrastive = {g.label: seed_mean_curve(g, "contrastive") or seed_mean_curve(g, "loss") for g in trained}
    contrastive = {k: v for k, v in contrastive.items() if v is not None}
    if not contrastive:
        return None
    total = {g.label: seed_mean_curve(g, "loss") for g in trained}
    total = {k: v for k, v in total.items() if v is not None}
    differs = any(k in contrastive and not np.allclose(v[1], contrastive[k][1]) for k, v in total.items())
    validation = {g.label: seed_mean_validation(g) for g in trained}
    validation = {k: v for k, v in validation.items() if v is not None}
    panels: list[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]], str]] = [
        ("contrastive loss (nats)", contrastive, "step")
    ]
    if differs:
        panels.append(("total loss (nats), incl. auxiliary terms", total, "step"))
    if validation:
        panels.append(("validation t2v R@1 (%)", validation, "epoch"))
    colors = {g.label: method_color(g.method, i) for i, g in enumerate(trained)}
    styles = {g.label: "-" if not g.variant_parts else "--" for g in trained}
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2, 2.9), squeeze=False)
    longest = max(v[0].size for v in contrastive.values())
    window = max(1, longest // 20)
    for ax, (ylabel, curves, x_kind) in zip(axes[0], panels, strict=True):
        for label, (x, values) in curves.items():
            color, style = colors[label], styles[label]
            if x_kind == "step":
                ax.plot(x, values, color=color, alpha=0.15, linewidth=0.6)
                ax.plot(x, smooth(values, window), style, color=color, label=label, linewidth=1.4)
            else:
                ax.plot(x + 1, values, style, marker="o", color=color, label=label, markersize=3)
        ax.set_xlabel("training step (optimizer updates)" if x_kind == "step" else "epoch", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for h in axes[0, 0].get_legend_handles_labels()[0]}
    legend = fig.legend(
        list(handles.values()),
        [wrap_label(k, 60) for k in handles],
        fontsize=6.5,
        loc="lower center",
        ncol=2 if len(handles) > 1 else 1,
        frameon=False,
    )
    fig.suptitle(
        f"{protocol}: training curves (mean over seeds; loss: moving average of {window} steps, raw faint)",
        fontsize=9,
    )
    fig.canvas.draw()
    legend_h = legend.get_window_extent().height / fig.dpi
    fig.set_size_inches(7.2, 2.9 + legend_h)
    fig.tight_layout(rect=(0, (legend_h + 0.05) / (2.9 + legend_h), 1, 1))
    path = out / f"training_{protocol}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def recall_ci_plot(
    protocol: str, qualities: list[GroupQuality], references: list[dict[str, Any]], out: Path
) -> Path | None:
    """R@1 per row with its bootstrap CI (ours, filled) and the published R@1 (hollow diamonds)."""
    if not qualities:
        return None
    labels = [wrap_label(f"{q.group.label} ({q.group.kind})") for q in qualities]
    slots = np.array([max(1.0, 0.45 * (label.count("\n") + 1) + 0.3) for label in labels])  # taller for long labels
    y = np.cumsum(slots) - slots / 2  # row centres
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 1.4 + 0.3 * slots.sum()), sharey=True)
    for ax, direction in zip(axes, DIRECTIONS, strict=True):
        cells = [q.cells[(direction, "R1")] for q in qualities]
        points = np.array([c.ci.point for c in cells])
        low = points - np.array([c.ci.low for c in cells])
        high = np.array([c.ci.high for c in cells]) - points
        ax.errorbar(points, y, xerr=[low, high], fmt="o", color="C0", capsize=3, label="ours (95% CI over queries)")
        labelled = False
        for i, q in enumerate(qualities):
            for ref in references:
                if q.group.zero_shot or ref.get("method") != q.group.method or ref.get("direction") != direction:
                    continue
                if ref.get("R1") is None:
                    continue
                ax.plot(float(ref["R1"]), y[i], "D", mfc="none", color="black", label=None if labelled else "published")
                labelled = True
        ax.set_xlabel(f"{direction} R@1 (%)")
        ax.set_title(direction, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=6.5)
    axes[0].set_ylim(float(slots.sum()), 0.0)  # first row on top
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc="lower center", ncol=2, frameon=False)
    fig.suptitle(f"{protocol}: R@1 with 95% bootstrap CI", fontsize=10)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    path = out / f"recall_{protocol}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
