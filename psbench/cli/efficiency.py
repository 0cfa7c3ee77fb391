"""``psbench efficiency``: FLOPs, latency and memory of the offline, text and online stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from psbench.cli import _common as policy


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
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override any setting of the measurement (queries=500, block_videos=8192) or a method's option "
            "(options.xpool.num_heads=4); applied after the options above.",
        ),
    ] = None,
) -> None:
    """FLOPs, latency and memory of the online similarity stage (and of the offline and text stages).

    Embeddings are random with the exact structure each method stores; points over the time budget
    or the memory cap are extrapolated from a linear fit and marked.

    Example: `psbench efficiency --gallery 100000 --queries 1000 --out reports/efficiency`

    Example (sweep to 1M videos on a GPU):
    `psbench efficiency --sweep --gallery 1000000 --device cuda --dtype fp16 --out reports/eff_gpu`
    """
    from psbench.efficiency.config import EfficiencyConfig, apply_sets
    from psbench.efficiency.measure import run_efficiency
    from psbench.progress import RichProgress
    from psbench.protocol import parse_set
    from psbench.report.efficiency import efficiency_tables
    from psbench.report.terminal import render_terminal

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
    cfg = apply_sets(cfg, parse_set(set_ or []))
    with RichProgress(console=policy.err_console) as progress:
        result = run_efficiency(cfg, out, progress)
    render_terminal(efficiency_tables(result), policy.console)
    if out is not None:
        policy.print_line(f"written {out / 'efficiency.json'} and {out / 'efficiency_scaling.png'} (.pdf)")


def register(app: typer.Typer) -> None:
    """Add ``efficiency`` to the main app."""
    app.command("efficiency", rich_help_panel="Cost")(policy.guarded(efficiency))
