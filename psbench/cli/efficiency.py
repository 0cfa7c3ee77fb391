"""``psbench efficiency``: FLOPs, latency and memory of the offline, text and online stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from psbench.cli import _common as policy


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _flops(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP"


def _print_efficiency(result: dict[str, Any]) -> None:
    console = policy.console
    q = result["config"]["queries"]
    table = Table(title=f"online stage per query (similarity + top-k), Q = {q}; * = extrapolated")
    for col in (
        "method",
        "N",
        "status",
        "queries timed",
        "latency/query",
        f"all {q} queries",
        "GFLOP/s",
        "sim FLOPs/query",
        "peak mem",
    ):
        table.add_column(col, justify="left" if col in ("method", "status") else "right")
    for name, res in result["methods"].items():
        for p in res["points"]:
            lat = p["latency_per_query_s"]
            star = "*" if p["status"] != "measured" else ""
            table.add_row(
                name,
                str(p["gallery"]),
                p["status"] + (f" ({p['reason']})" if p["reason"] else ""),
                str(p["queries_timed"]),
                _seconds(lat["median"] if lat else None) + star,
                _seconds(p["latency_query_set_s"]) + ("*" if p["query_set_extrapolated"] else ""),
                f"{p['gflops_per_s']:.1f}" if p["gflops_per_s"] else "-",
                _flops(p["extra"].get("similarity_flops_per_query_closed_form")),
                f"{p['peak_memory_bytes'] / 2**20:.1f} MiB" if p["peak_memory_bytes"] is not None else "-",
            )
    console.print(table)
    for name, res in result["methods"].items():
        console.print(f"top-k path of {name}: {res['online'].get('topk_path', '-')}")
    costs = Table(title="FLOPs (2 x MAC): fvcore vs closed form; offline per video, text per query, online per pair")
    for col in (
        "method",
        "offline fvcore",
        "offline closed",
        "offline latency",
        "bytes/video",
        "text fvcore",
        "text closed",
        "text latency",
        "pair fvcore",
        "pair closed",
    ):
        costs.add_column(col, justify="left" if col == "method" else "right")
    for name, res in result["methods"].items():
        off, txt, onl = res["offline"], res["text"], res["online"]
        costs.add_row(
            name,
            _flops(off["flops_fvcore"]),
            _flops(off["flops_closed_form"]),
            _seconds(off["latency_s"]["median"]),
            str(off["bytes_per_video"]),
            _flops(txt["flops_per_query_fvcore"]),
            _flops(txt["flops_per_query_closed_form"]),
            _seconds(txt["latency_per_query_s"]),
            _flops(onl["flops_per_pair_fvcore"]),
            _flops(onl["flops_per_pair_closed_form"]),
        )
    console.print(costs)
    for key, form in (("xpool_folded_vs_promptswitch", "xpool-folded"), ("xpool_vs_promptswitch", "xpool")):
        rows = result.get(key) or []
        if not rows:
            continue
        label = "cheapest exact form, the fair headline" if form != "xpool" else "reference form, as the official code"
        ratio = Table(title=f"{form} ({label}) online cost per query relative to Prompt Switch")
        for col in ("N", form, "promptswitch", "ratio", "repeat min-max", "status"):
            ratio.add_column(col, justify="right")
        for row in rows:
            spread = row.get("ratio_spread")
            ratio.add_row(
                str(row["gallery"]),
                _seconds(row[f"{form}_s_per_query"]),
                _seconds(row["promptswitch_s_per_query"]),
                f"{row['ratio']:.1f}x" if row["ratio"] else "-",
                f"{spread['min']:.1f}-{spread['max']:.1f}x" if spread else "-",
                row["status"],
            )
        console.print(ratio)
    if result.get("xpool_forms"):
        policy.print_line(result["xpool_forms"])


def efficiency(
    methods: Annotated[str, typer.Option(help="'all' (every method but ablations) or a comma list.")] = "all",
    gallery: Annotated[int, typer.Option(help="Largest gallery size N (videos).")] = 100_000,
    queries: Annotated[int, typer.Option(help="Queries Q per online measurement.")] = 1000,
    frames: Annotated[int, typer.Option(help="Frames F per video.")] = 12,
    sweep: Annotated[bool, typer.Option(help="Log-spaced galleries from --min-gallery to --gallery.")] = False,
    min_gallery: Annotated[int, typer.Option(help="Smallest gallery of a sweep.")] = 1000,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="fp32, fp16 or bf16 (modules and embeddings).")] = "fp32",
    arch: Annotated[str, typer.Option(help="open_clip architecture (random init; cost only).")] = (
        "ViT-B-32-quickgelu"
    ),
    budget_s: Annotated[float, typer.Option("--budget-s", help="Seconds per (method, N) point.")] = 60.0,
    max_gallery_gib: Annotated[
        float | None, typer.Option(help="Largest synthetic gallery kept in memory (default min(8, available/2)).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Top-k kept per query.")] = 10,
    repeats: Annotated[int, typer.Option(help="Timed repeats per point (after warm-up).")] = 3,
    text_queries: Annotated[int, typer.Option(help="Queries run through the real text tower.")] = 64,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    prefilter: Annotated[
        str,
        typer.Option(
            help="Top-k path for inner-product methods: 'auto' (bfloat16 prefilter + float32 rescoring on CPUs "
            "with native bfloat16; exact), 'bf16' (always), 'off' (float32 for every pair)."
        ),
    ] = "auto",
    out: Annotated[Path | None, typer.Option(help="Write efficiency.json + scaling plot (PNG, PDF) here.")] = None,
) -> None:
    """FLOPs, latency and memory of the online similarity stage (and of the offline and text stages).

    Embeddings are random with the exact structure each method stores; points over the time budget
    or the memory cap are extrapolated from a linear fit and marked.

    Example: `psbench efficiency --gallery 100000 --queries 1000 --out reports/efficiency`

    Example (sweep to 1M videos on a GPU):
    `psbench efficiency --sweep --gallery 1000000 --device cuda --dtype fp16 --out reports/eff_gpu`
    """
    from psbench.efficiency.measure import EfficiencyConfig, run_efficiency
    from psbench.progress import RichProgress

    if out is not None:
        policy.check_output_dir(out, "--out")
    policy.on_interrupt(lambda: "nothing was written" + (f" to {out}" if out is not None else ""))
    cfg = EfficiencyConfig(
        methods=None if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()],
        arch=arch,
        frames=frames,
        queries=queries,
        gallery=gallery,
        sweep=sweep,
        min_gallery=min_gallery,
        budget_s=budget_s,
        max_gallery_bytes=None if max_gallery_gib is None else int(max_gallery_gib * 2**30),
        device=device,
        dtype=dtype,
        k=k,
        repeats=repeats,
        text_queries=text_queries,
        threads=threads,
        prefilter=prefilter,
    )
    with RichProgress(console=policy.err_console) as progress:
        result = run_efficiency(cfg, out, progress)
    _print_efficiency(result)
    if out is not None:
        policy.print_line(f"written {out / 'efficiency.json'} and {out / 'efficiency_scaling.png'} (.pdf)")


def register(app: typer.Typer) -> None:
    """Add ``efficiency`` to the main app."""
    app.command("efficiency", rich_help_panel="Cost")(policy.guarded(efficiency))
