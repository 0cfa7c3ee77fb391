"""The efficiency section: tables and a re-plotted latency-vs-gallery figure from ``efficiency.json``.

Measured and extrapolated points are kept apart everywhere: extrapolated latencies (a least-squares
fit ``latency = a N`` over the measured points, see ``psbench.efficiency.measure``) are marked in the tables
and drawn hollow with dashed lines in the plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from psbench.files import jsonio  # noqa: E402
from psbench.report.document import Block, Figure, Heading, Paragraph, Row, Table  # noqa: E402
from psbench.report.figures import method_color  # noqa: E402

DASH = "–"


def load_efficiency(path: Path) -> tuple[dict[str, Any], Path]:
    """An efficiency.json, or the directory holding one; refuses other JSON files by name."""
    path = Path(path)
    file = path / "efficiency.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no efficiency.json (write one with `psbench efficiency --out DIR`)")
    data = jsonio.read_json(file)
    if data.get("kind") != "psbench-efficiency":
        raise ValueError(f"{file} is not a psbench efficiency result (kind={data.get('kind')!r})")
    return data, file


def seconds(value: float | None) -> str:
    """A duration with an SI prefix: 1.21 µs, 3.4 ms, 2.00 s."""
    if value is None:
        return DASH
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def count(value: float | None, unit: str) -> str:
    """A large count with an SI prefix: 1.02 kFLOP, 5.96 GFLOP."""
    if value is None:
        return DASH
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def size_bytes(value: float | None) -> str:
    """Bytes with a binary prefix: 1 KiB = 1024 B (as the efficiency CLI prints them)."""
    if value is None:
        return DASH
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def setting(data: dict[str, Any]) -> str:
    cfg, env = data["config"], data.get("environment", {})
    return (
        f"{cfg['arch']}, {env.get('device_name') or cfg['device']} ({cfg['device']}, {cfg['dtype']}), "
        f"F={cfg['frames']} frames, Q={cfg['queries']} queries, top-k={cfg['k']}"
    )


def topk_path_label(path: str | None) -> str:
    """Short name of the engine's top-k path (older results did not record it)."""
    if not path:
        return DASH
    if path.startswith("device path"):
        return "device path, native dtype"
    return "bf16 prefilter + fp32 rescore" if path.startswith("bfloat16 prefilter") else "fp32 every pair"


def stage_table(data: dict[str, Any]) -> Table:
    rows = []
    for name, res in data["methods"].items():
        off, text, online = res["offline"], res["text"], res["online"]
        rows.append(
            Row(
                [
                    name,
                    seconds(off["latency_s"]["median"]),
                    count(off.get("flops_closed_form"), "FLOP"),
                    size_bytes(off.get("bytes_per_video")),
                    seconds(text.get("latency_per_query_s")),
                    count(text.get("flops_per_query_closed_form"), "FLOP"),
                    count(online.get("flops_per_pair_closed_form"), "FLOP"),
                    topk_path_label(online.get("topk_path")),
                ]
            )
        )
    columns = [
        "method",
        "video encoding\nper video",
        "video encoding\nFLOPs / video",
        "index size\nper video",
        "text encoding\nper query",
        "text encoding\nFLOPs / query",
        "similarity\nFLOPs / pair",
        "top-k path",
    ]
    notes = [
        "Latencies are medians of repeated timings. FLOPs: closed form, 2 x multiply-adds. "
        + data.get("synthetic_embeddings", "")
    ]
    return Table(f"Cost per stage: {setting(data)}", columns, rows, notes)


def flops_table(data: dict[str, Any]) -> Table:
    """fvcore's count beside the closed form, per stage: where they differ, the note in efficiency.json says why."""
    rows = []
    for name, res in data["methods"].items():
        off, text, online = res["offline"], res["text"], res["online"]
        pairs = (
            (off.get("flops_fvcore"), off.get("flops_closed_form")),
            (text.get("flops_per_query_fvcore"), text.get("flops_per_query_closed_form")),
            (online.get("flops_per_pair_fvcore"), online.get("flops_per_pair_closed_form")),
        )
        rows.append(Row([name, *(f"{count(a, 'FLOP')}\n{count(b, 'FLOP')}" for a, b in pairs)]))
    columns = ["method", "video encoding\nper video", "text encoding\nper query", "similarity\nper pair"]
    notes = [
        "Each cell: fvcore's count (first line) and the closed form (second line). " + data.get("flop_convention", "")
    ]
    return Table(f"FLOPs, fvcore vs closed form: {setting(data)}", columns, rows, notes)


def latency_table(data: dict[str, Any]) -> Table:
    sizes = sorted({p["gallery"] for res in data["methods"].values() for p in res["points"]})
    rows = []
    for name, res in data["methods"].items():
        points = {p["gallery"]: p for p in res["points"]}
        cells = []
        for n in sizes:
            p = points.get(n)
            if p is None or p.get("latency_per_query_s") is None:
                cells.append(DASH)
                continue
            latency = seconds(p["latency_per_query_s"]["median"])
            if p["status"] == "measured":
                memory = size_bytes(p.get("peak_memory_bytes"))
                cells.append(f"{latency}\npeak {memory}")
            else:
                cells.append(f"{latency} *\nextrapolated")
        rows.append(Row([name, *cells]))
    columns = ["method", *(f"N = {n:,}" for n in sizes)]
    notes = [
        "Online latency per query (similarity over the whole gallery + exact top-k, text encoding excluded), "
        "median of repeats, and the peak extra memory during the measurement. "
        "* extrapolated from a linear fit over the measured points (not measured).",
    ]
    return Table(f"Online latency per query vs gallery size N: {setting(data)}", columns, rows, notes)


def ratio_table(data: dict[str, Any]) -> Table | None:
    """X-Pool / Prompt Switch online latency per query, for each X-Pool form the result measured
    (the folded form is the fair headline; results from before it existed have the reference only)."""
    by_form = {
        form: {r["gallery"]: r for r in data.get(key, [])}
        for form, key in (("xpool-folded", "xpool_folded_vs_promptswitch"), ("xpool", "xpool_vs_promptswitch"))
    }
    forms = [form for form, rows in by_form.items() if rows]
    if not forms:
        return None
    sizes = sorted(set().union(*(by_form[f] for f in forms)))
    rows = []
    for n in sizes:
        first = next(by_form[f][n] for f in forms if n in by_form[f])
        cells = [f"{n:,}", seconds(first.get("promptswitch_s_per_query"))]
        for form in forms:
            r = by_form[form].get(n, {})
            cells += [seconds(r.get(f"{form}_s_per_query")), _ratio_cell(r)]
        cells.append(first["status"])
        rows.append(Row(cells))
    columns = ["gallery N", "promptswitch / query"]
    for form in forms:
        columns += [f"{form} / query", f"{form} ratio"]
    columns.append("status")
    notes = (
        [data["xpool_forms"]]
        if data.get("xpool_forms")
        else ["X-Pool in its reference form only (this result predates the folded form)."]
    )
    return Table(f"X-Pool vs Prompt Switch online latency: {setting(data)}", columns, rows, notes)


def _ratio_cell(row: dict[str, Any]) -> str:
    """The ratio of medians, and the spread of the per-repeat ratios where it was recorded."""
    if row.get("ratio") is None:
        return DASH
    spread = row.get("ratio_spread")
    head = f"{row['ratio']:.0f}x"
    return f"{head}\nrepeats {spread['min']:.1f}-{spread['max']:.1f}x" if spread else head


def scaling_plot(data: dict[str, Any], path: Path) -> Path:
    """Log-log latency per query vs N: measured filled + solid, extrapolated hollow + dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, res) in enumerate(data["methods"].items()):
        color = method_color(name, i)
        pts = sorted((p for p in res["points"] if p.get("latency_per_query_s")), key=lambda p: p["gallery"])
        meas = [(p["gallery"], p["latency_per_query_s"]["median"]) for p in pts if p["status"] == "measured"]
        extr = [(p["gallery"], p["latency_per_query_s"]["median"]) for p in pts if p["status"] != "measured"]
        if meas:
            ax.plot(*zip(*meas, strict=True), "-o", color=color, label=f"{name}: measured", markersize=4)
        if extr:
            ax.plot(*zip(*(meas[-1:] + extr), strict=True), "--", color=color, linewidth=1)
            ax.plot(*zip(*extr, strict=True), "o", mfc="none", color=color, label=f"{name}: extrapolated")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size N (videos)")
    ax.set_ylabel("online latency per query (s)")
    ax.set_title(setting(data), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=200)
    plt.close(fig)
    return path


def efficiency_tables(data: dict[str, Any]) -> list[Block]:
    """The tables of one efficiency result (the report's, and what ``psbench efficiency`` prints)."""
    blocks: list[Block] = [
        Paragraph(data.get("online_stage", "")),
        stage_table(data),
        flops_table(data),
        latency_table(data),
    ]
    ratio = ratio_table(data)
    if ratio is not None:
        blocks.append(ratio)
    return blocks


def efficiency_blocks(sources: list[Path], out: Path) -> list[Block]:
    """Heading, tables and plot for each efficiency result, in the order given."""
    blocks: list[Block] = [Heading("Efficiency of the similarity stage", 2)]
    for i, source in enumerate(sources):
        data, file = load_efficiency(source)
        blocks.append(Heading(f"{data['config']['device']} {data['config']['dtype']} ({file})", 3))
        blocks.extend(efficiency_tables(data))
        plot = scaling_plot(data, out / f"efficiency_{i}.png")
        blocks.append(
            Figure(
                plot,
                f"Latency per query vs gallery size ({setting(data)}); filled markers and solid "
                "lines are measured, hollow markers and dashed lines extrapolated.",
            )
        )
    return blocks
