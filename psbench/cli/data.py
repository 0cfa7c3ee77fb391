"""``psbench data synth|probe|pretrain-clip|verify|compress``: make the synthetic sets and the tiny CLIP, check
and compress real videos (thin wrappers over psbench.data.synthetic, psbench.data.relation_probe,
psbench.train.pretrain, psbench.data.prepare)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from psbench.cli import _common as policy

if TYPE_CHECKING:
    pass

console = policy.console
err_console = policy.err_console
log = logging.getLogger(__name__)

#: missing / corrupt videos printed by name (the manifest lists all of them)
SHOWN = 50
_fail = policy.fail


@policy.guarded
def data_synth(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("data/synthetic"),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Encoding processes.", min=1)] = 2,
) -> None:
    """Generate the synthetic data set (videos + MSR-VTT-format annotations) deterministically.

    Example: `psbench data synth --out data/synthetic --seed 0`
    """
    from psbench.data.synthetic import DEFAULT_PAIRS, generate_synthetic
    from psbench.progress import RichProgress

    policy.check_output_dir(out, "--out")
    policy.on_interrupt(lambda: f"the videos written so far are kept in {out}; rerun the same command to continue")
    total = 2 * sum(DEFAULT_PAIRS.values())
    with RichProgress(console=policy.err_console) as progress, progress.task("write synthetic videos", total) as task:
        meta = generate_synthetic(out, seed=seed, workers=workers, progress=policy.progress_callback(task))
    policy.print_line(f"synthetic set in {out}: {meta.get('counts', meta)}")


@policy.guarded
def data_probe(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("data/relation-probe"),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    workers: Annotated[int, typer.Option(help="Encoding processes.", min=1)] = 2,
) -> None:
    """Generate the relation probe (groups of four videos no mean of frame features can tell apart).

    Example: `psbench data probe --out data/relation-probe`
    """
    from psbench.data.relation_probe import DEFAULT_GROUPS, generate_relation_probe
    from psbench.progress import RichProgress

    policy.check_output_dir(out, "--out")
    policy.on_interrupt(lambda: f"the videos written so far are kept in {out}; rerun the same command to continue")
    total = 4 * sum(DEFAULT_GROUPS.values())
    with RichProgress(console=policy.err_console) as progress, progress.task("write probe videos", total) as task:
        meta = generate_relation_probe(out, seed=seed, workers=workers, progress=policy.progress_callback(task))
    policy.print_line(f"relation probe in {out}: {meta['counts']}")


@policy.guarded
def data_pretrain_clip(
    root: Annotated[Path, typer.Option(help="Synthetic data root (with frame_captions.json).")] = Path(
        "data/synthetic"
    ),
    out: Annotated[Path | None, typer.Option(help="Checkpoint path (default: ROOT/tiny_clip.pt).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[bool, typer.Option(help="Retrain even if a matching checkpoint exists.")] = False,
) -> None:
    """Pretrain the tiny CLIP on single synthetic frames and save an open_clip checkpoint (cached).

    Example: `psbench data pretrain-clip --root data/synthetic`
    """
    from psbench.files import jsonio
    from psbench.progress import RichProgress
    from psbench.train.pretrain import PretrainConfig, pretrain_tiny_clip

    if not (root / "frame_captions.json").is_file():
        policy.fail(f"{root / 'frame_captions.json'} not found; run `psbench data synth --out {root}` first")
    with RichProgress(console=policy.err_console) as progress:
        path = pretrain_tiny_clip(root, out, PretrainConfig(seed=seed), progress, force=force)
    meta = jsonio.read_json(path.with_suffix(".json"))
    top1 = meta["image_to_text_top1"]
    policy.print_line(f"tiny CLIP: {path} (frame->caption top-1 {top1:.1f}% on its training frames)")


def verify(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", "-d", help="Dataset name: msrvtt, msvd, lsmdc, activitynet, didemo, synthetic, relation-probe."
        ),
    ],
    root: Annotated[Path, typer.Option(help="Dataset root (annotation files + the protocol's video folder).")],
    protocol: Annotated[
        str | None, typer.Option(help="Protocol name or .toml path whose splits are checked (default: the dataset's).")
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option(help="Check only these splits (default: the protocol's train, val and test).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            "--out",
            help="Write the JSON manifest here (default: ROOT/manifest.json; give a path for a read-only root).",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Decoding processes.", min=1)] = max(1, min(8, os.cpu_count() or 1)),
) -> None:
    """Check that every video a protocol needs exists and decodes; write a manifest with checksums.

    Each video is decoded once to count its real frames, and hashed (sha256). Missing and corrupt
    videos are listed by name; the exit code is 1 if there are any. Where the manifest goes is checked
    before any video is decoded (a read-only root needs --manifest PATH), and the results are printed
    even if writing it fails.

    Example: `psbench data verify --dataset msrvtt --root data/msrvtt --protocol msrvtt-1ka --split test`
    """
    from psbench.data.datasets import load_split
    from psbench.data.prepare.verify import verify_dataset
    from psbench.files import atomic
    from psbench.progress import RichProgress
    from psbench.protocol import protocol_for, resolve

    where = policy.check_new_file(out or root / "manifest.json", "--manifest")
    try:
        cfg = resolve(protocol_for(dataset, protocol), method="").data  # the protocol's own [data] table
        names = split or [s for s in (cfg.train_split, cfg.val_split, cfg.test_split) if s]
        splits = [load_split(cfg, root, name) for name in dict.fromkeys(names)]
        try:  # before any video is decoded: a read-only root must not cost a full decode
            atomic.check_writable_dir(where.parent)
        except OSError as exc:
            raise policy.UserError(
                f"cannot write the manifest {where}: {exc}; pass --manifest PATH to write it elsewhere"
            ) from None
        total = len({v for s in splits for v in s.video_ids})
        with RichProgress(console=err_console) as progress, progress.task("verify videos", total) as task:
            manifest = verify_dataset(splits, workers, None, policy.progress_callback(task))
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        _fail(str(exc))
    counts = manifest.counts()
    table = Table(title=f"{dataset} videos under {root}")
    for key in ("videos", "ok", "missing", "corrupt"):
        table.add_column(key, justify="right")
    table.add_row(*(str(counts[k]) for k in ("videos", "ok", "missing", "corrupt")))
    console.print(table)
    for label, style, items in (("missing", "yellow", manifest.missing), ("corrupt", "red", manifest.corrupt)):
        for vid, detail in list(items.items())[:SHOWN]:
            console.print(Text.assemble((label, style), f" {vid}: {detail}"), soft_wrap=True)
        if len(items) > SHOWN:
            console.print(Text.assemble((label, style), f" ... and {len(items) - SHOWN} more (all listed in {where})"))
    try:
        manifest.write(where)
    except OSError as exc:  # the results are on screen already
        _fail(f"the results above were not saved: cannot write the manifest {where}: {exc}; pass --manifest PATH")
    policy.print_line(f"manifest: {where}")
    if not manifest.ok:
        raise typer.Exit(1)


def compress(
    src: Annotated[Path, typer.Option(help="Folder of original videos (searched recursively).")],
    dst: Annotated[Path, typer.Option(help="Output folder (same relative paths, .mp4).")],
    fps: Annotated[float, typer.Option(help="Output frame rate (frames chosen by timestamp).")] = 3.0,
    size: Annotated[int, typer.Option(help="Shorter side in pixels (even).")] = 224,
    crf: Annotated[int, typer.Option(help="libx264 constant rate factor (lower = better quality).")] = 23,
    tune: Annotated[
        str,
        typer.Option(
            help="libx264 --tune; 'fastdecode' (no CABAC, no deblocking) decodes ~1.8x faster for a ~7% larger "
            "file (reports/cpu_2cores/video_input.md); recorded in the recipe and in every run's record."
        ),
    ] = "",
    workers: Annotated[int, typer.Option(help="Encoding processes.")] = max(1, min(8, os.cpu_count() or 1)),
) -> None:
    """Resize videos (shorter side --size) and reduce their frame rate (--fps) into H.264 mp4.

    Resumable: outputs that exist and decode are skipped; each output is written to a temporary file
    and renamed. The recipe is written to DST/compress_recipe.json and recorded by later runs.

    Example: `psbench data compress --src raw/MSRVTT/videos/all --dst data/msrvtt/videos --fps 3 --size 224 --workers 8`
    """
    from psbench.data.prepare.compress import CompressSettings, compress_videos, find_sources
    from psbench.progress import RichProgress

    policy.on_interrupt(lambda: f"the outputs written so far are kept in {dst}; rerun the same command to continue")
    try:
        settings = CompressSettings(fps=fps, size=size, crf=crf, tune=tune)
        total = len(find_sources(src, exclude=dst))
        with RichProgress(console=err_console) as progress, progress.task("compress videos", total) as task:
            report = compress_videos(src, dst, settings, workers, policy.progress_callback(task))
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(str(exc))
    console.print(
        f"{len(report.written)} written, {len(report.skipped)} already done, {len(report.failed)} failed; "
        f"recipe: {report.recipe_path}"
    )
    for source, reason in report.failed.items():
        console.print(Text.assemble(("failed", "red"), f" {source}: {reason}"), soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def register(data_app: typer.Typer) -> None:
    """Add ``synth``, ``probe``, ``pretrain-clip``, ``verify`` and ``compress`` to the ``psbench data`` sub-app."""
    data_app.command("synth")(data_synth)
    data_app.command("probe")(data_probe)
    data_app.command("pretrain-clip")(data_pretrain_clip)
    data_app.command("verify")(policy.guarded(verify))
    data_app.command("compress")(policy.guarded(compress))
