"""CLI commands ``psbench efficiency`` and ``psbench index build|search``; mounted with :func:`register`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from psbench import cli_policy as policy

_TRUST_HELP = (
    "Allow CLIP weights or a run checkpoint that is a general pickle or TorchScript archive (as for `psbench run`). "
    "Unpickling such a file can execute arbitrary code: use only for files from a source you trust."
)


def _cli() -> Any:
    """The main CLI module (imported late: it imports this module to mount the commands)."""
    from psbench import cli

    return cli


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
    console = _cli().console
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
    from psbench.efficiency import EfficiencyConfig, run_efficiency
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


index_app = typer.Typer(help="Build and search a saved index of precomputed video embeddings.", no_args_is_help=True)


@index_app.command("build")
@policy.guarded
def index_build(
    run: Annotated[Path, typer.Option(help="A run directory written by `psbench run`.")],
    videos: Annotated[str, typer.Option(help="A directory of video files, or a split name of the run's dataset.")],
    out: Annotated[
        Path,
        typer.Option(help="Index to write: a .pt file (one file in memory) or a directory (sharded, on disk)."),
    ] = Path("index.pt"),
    storage: Annotated[
        str, typer.Option(help="Sharded index: fp32, fp16 or bf16 storage of the embeddings (scored in float32).")
    ] = "fp32",
    shard_size: Annotated[int, typer.Option(help="Sharded index: videos per shard (memory bound of a build).")] = (
        100_000
    ),
    data_root: Annotated[Path | None, typer.Option(help="Dataset root for a split (default: the run's).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=_TRUST_HELP)] = False,
) -> None:
    """Encode a gallery once with a trained run's model (offline stage) and save the index.

    With `--out DIR` (no .pt suffix) the index is sharded: safetensors shards + manifest.json with ids,
    model fingerprint and each shard's sha256; memory is bounded by one shard, and a rerun after a crash
    keeps the finished shards (checked by hash) and continues.

    Example: `psbench index build --run runs/20261129T190000_000000Z_synthetic_meanpool_s0 --videos test --out index.pt`

    Example (sharded): `psbench index build --run RUN --videos test --out index_dir --storage fp16 --shard-size 500000`
    """
    from psbench.index import build_index, build_sharded_index, save_index
    from psbench.progress import RichProgress
    from psbench.sharded_index import STORAGE_DTYPES

    if out.suffix == ".pt":
        if storage != "fp32" or shard_size != 100_000:
            raise policy.UserError("--storage and --shard-size apply to a sharded index: give --out a directory")
        policy.check_new_file(out, "--out")
        policy.on_interrupt(lambda: f"nothing was written; {out} is unchanged")
        with RichProgress(console=policy.err_console) as progress:
            index = build_index(run, videos, data_root, device, progress, trust_checkpoint)
        save_index(index, out)
        policy.print_line(f"index of {len(index)} videos ({index.method}) written to {out}")
        return
    if storage not in STORAGE_DTYPES:
        raise policy.UserError(f"--storage {storage}: choose one of {', '.join(STORAGE_DTYPES)}")
    if shard_size < 1:
        raise policy.UserError(f"--shard-size {shard_size}: must be >= 1")
    policy.check_output_dir(out, "--out")
    policy.on_interrupt(lambda: f"the finished shards are kept in {out}; rerun the same command to continue")
    with RichProgress(console=policy.err_console) as progress:
        sharded = build_sharded_index(
            run, videos, out, storage, shard_size, data_root, device, progress, trust_checkpoint
        )
    policy.print_line(
        f"sharded index of {len(sharded)} videos ({sharded.method}, {storage}, {len(sharded.shards)} shards) "
        f"written to {out}"
    )


@index_app.command("search")
@policy.guarded
def index_search(
    index: Annotated[
        Path, typer.Option("--index", help="Index file or sharded index directory written by `psbench index build`.")
    ],
    query: Annotated[list[str], typer.Option("--query", "-q", help="Query text (repeatable).")],
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 10,
    run: Annotated[Path | None, typer.Option(help="Run directory of the model (default: the one in the index).")] = (
        None
    ),
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=_TRUST_HELP)] = False,
) -> None:
    """Search an index with text queries: exact top-k through the engine.

    A sharded index is streamed shard by shard (bounded memory, every shard checked by sha256); under
    `torchrun --nproc-per-node N -m psbench.cli index search ...` the shards are split across the
    processes (gloo on CPU) and the per-process top-k merged exactly.

    Example: `psbench index search --index index.pt --query "a red ball moves left" -k 10`
    """
    cli = _cli()
    from psbench import distributed
    from psbench.index import check_compatible, load_index, load_run_method, search, search_sharded
    from psbench.progress import RichProgress
    from psbench.sharded_index import is_sharded_index, open_sharded_index

    if k < 1:
        raise policy.UserError(f"-k {k}: must be >= 1")
    sharded = is_sharded_index(index)
    idx = open_sharded_index(index) if sharded else load_index(index)
    if k > len(idx):
        policy.print_note("note", f"-k {k} is more than the {len(idx)} videos in {index}: showing all {len(idx)}")
        k = len(idx)
    run_dir = run or Path(idx.meta.get("run_dir", ""))
    method, cfg, _ = load_run_method(run_dir, trust_checkpoint)
    check_compatible(idx, method, cfg.method)
    method.to(device)
    if sharded:
        distributed.init_from_env("cpu")
        try:
            with RichProgress(console=policy.err_console) as progress:
                result = search_sharded(idx, method, query, k, device, progress=progress)
            main = distributed.is_main()
        finally:
            distributed.destroy()
        if not main:
            return
    else:
        result = search(idx, method, query, k, device)
    for text, ids, scores in zip(query, result.ids, result.scores.tolist(), strict=True):
        table = Table(title=f"{text!r}: top {len(ids)} of {len(idx)} ({idx.method})")
        table.add_column("rank", justify="right")
        table.add_column("video")
        table.add_column("score", justify="right")
        for rank, (vid, score) in enumerate(zip(ids, scores, strict=True), start=1):
            table.add_row(str(rank), vid, f"{score:.4f}")
        cli.console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``efficiency`` and the ``index`` sub-app to the main app."""
    app.command("efficiency")(policy.guarded(efficiency))
    app.add_typer(index_app, name="index")
