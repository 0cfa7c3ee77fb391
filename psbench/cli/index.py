"""``psbench index build|search``: a saved index of precomputed video embeddings, and text search over it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from psbench.cli import _common as policy

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
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=policy.TRUST_HELP)] = False,
) -> None:
    """Encode a gallery once with a trained run's model (offline stage) and save the index.

    With `--out DIR` (no .pt suffix) the index is sharded: safetensors shards + manifest.json with ids,
    model fingerprint and each shard's sha256; memory is bounded by one shard, and a rerun after a crash
    keeps the finished shards (checked by hash) and continues.

    Example: `psbench index build --run runs/20261129T190000_000000Z_synthetic_meanpool_s0 --videos test --out index.pt`

    Example (sharded): `psbench index build --run RUN --videos test --out index_dir --storage fp16 --shard-size 500000`
    """
    from psbench.progress import RichProgress
    from psbench.retrieval.index import save_index
    from psbench.retrieval.sharded_index import STORAGE_DTYPES
    from psbench.runs.indexing import build_index, build_sharded_index

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
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=policy.TRUST_HELP)] = False,
) -> None:
    """Search an index with text queries: exact top-k through the engine.

    A sharded index is streamed shard by shard (bounded memory, every shard checked by sha256); under
    `torchrun --nproc-per-node N -m psbench.cli index search ...` the shards are split across the
    processes (gloo on CPU) and the per-process top-k merged exactly.

    Example: `psbench index search --index index.pt --query "a red ball moves left" -k 10`
    """
    from psbench import distributed
    from psbench.progress import RichProgress
    from psbench.retrieval.index import check_compatible, load_index, search, search_sharded
    from psbench.retrieval.sharded_index import is_sharded_index, open_sharded_index
    from psbench.runs.indexing import load_run_method

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
        policy.console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``index`` sub-app to the main app."""
    app.add_typer(index_app, name="index", rich_help_panel="Cost")
