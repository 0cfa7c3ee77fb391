"""``psbench run`` and ``psbench eval``: one method under one protocol, and re-evaluation of a finished run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from psbench.cli import _common as policy
from psbench.retrieval.metrics import DIRECTIONS, METRIC_KEYS

if TYPE_CHECKING:
    from psbench.protocol import RunConfig


@policy.guarded
def run(
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="Method name (see `psbench methods`); not with --resume.")
    ] = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset; selects its default protocol.")] = (
        "synthetic"
    ),
    protocol: Annotated[str | None, typer.Option(help="Protocol name or .toml path (default: the dataset's).")] = None,
    seed: Annotated[list[int] | None, typer.Option(help="Seed(s); default: the protocol's first seed.")] = None,
    all_seeds: Annotated[bool, typer.Option("--all-seeds", help="Run every seed the protocol lists.")] = False,
    data_root: Annotated[Path | None, typer.Option(help="Dataset root (default: the protocol's).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Local CLIP checkpoint (state dict or safetensors).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run directories are created.")] = Path("runs"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: train.epochs=0, options.num_prompts=3.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue this interrupted run directory from its last checkpoint (same settings)."),
    ] = None,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="Deterministic algorithms (cuDNN, cuBLAS); recorded in the run.")
    ] = False,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=policy.TRUST_HELP)] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the resolved config of every seed and its protocol hash; run nothing."),
    ] = False,
) -> None:
    """Train and evaluate one method under a protocol; write a run directory.

    Example: `psbench run --method meanpool --dataset synthetic --set train.epochs=0` (zero-shot row).
    See what would run: `psbench run -m promptswitch --protocol msrvtt-1ka --dry-run`.
    Resume an interrupted run: `psbench run --resume runs/<run dir>`. Several GPUs:
    `torchrun --nproc_per_node 8 -m psbench.cli run ...` (see docs/distributed.md).
    """
    if dry_run:
        if resume is not None:
            raise policy.UserError("--dry-run shows a new run's config; a resumed run's is in its config.json")
        for cfg in run_configs(method, dataset, protocol, seed, all_seeds, set_ or []):
            print_config(cfg)
        return
    from psbench import distributed
    from psbench.progress import RichProgress
    from psbench.runs.runner import resume as resume_run
    from psbench.runs.runner import run as run_one

    started: list[Path] = []
    policy.on_interrupt(lambda: policy.interrupted_runs_message(started))
    try:
        if resume is not None:
            if method is not None or set_ or seed or all_seeds or protocol is not None:
                policy.fail(
                    "--resume continues a run with its recorded settings; do not combine it with "
                    "--method, --protocol, --seed or --set (--data-root and --weights may point at moved "
                    "files with the recorded hashes)"
                )
            started.append(resume)
            with RichProgress(console=policy.err_console) as progress:
                run_dir = resume_run(
                    resume, device, progress, data_root, trust_checkpoint, policy.command_line(), weights=weights
                )
            if distributed.is_main():
                _print_run(run_dir)
            return
        configs = run_configs(method, dataset, protocol, seed, all_seeds, set_ or [])  # every check before work
        for cfg in configs:
            with RichProgress(console=policy.err_console) as progress:
                run_dir = run_one(
                    cfg,
                    runs_dir,
                    data_root,
                    weights,
                    device,
                    progress,
                    command=policy.command_line(),
                    deterministic=deterministic,
                    trust_checkpoint=trust_checkpoint,
                    on_run_dir=started.append,
                )
            if distributed.is_main():
                _print_run(run_dir)
    finally:
        distributed.destroy()


def run_configs(
    method: str | None, dataset: str, protocol: str | None, seeds: list[int] | None, all_seeds: bool, sets: list[str]
) -> list[RunConfig]:
    """The resolved config of every requested seed; every argument is checked here, before any work."""
    from psbench.catalog import method_class
    from psbench.protocol import parse_set, protocol_for, resolve

    if method is None:
        raise policy.UserError("--method is required (or --resume RUN_DIR)")
    if all_seeds and seeds:
        raise policy.UserError(
            f"--seed {' --seed '.join(map(str, seeds))} and --all-seeds contradict each other; give one of them"
        )
    method_class(method)
    proto = protocol_for(dataset, protocol, check_dataset=protocol is None)
    chosen = list(proto["seeds"]) if all_seeds else (seeds or [int(proto["seeds"][0])])
    overrides = parse_set(sets)
    return [resolve(proto, method, s, overrides) for s in chosen]


def print_config(cfg: RunConfig) -> None:
    """The resolved config as JSON (what ``config.json`` will record) and its protocol hash."""
    policy.console.print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True), soft_wrap=True)
    policy.print_line(
        f"{cfg.method} on {cfg.protocol} v{cfg.version}, seed {cfg.seed}: protocol hash {cfg.protocol_hash()}"
    )


def _print_run(run_dir: Path) -> None:
    from psbench.files import jsonio

    m = jsonio.read_json(run_dir / "metrics.json")
    table = Table(title=f"{m['method']} on {m['protocol']} (seed {m['seed']})")
    table.add_column("direction")
    for key in METRIC_KEYS:
        table.add_column(key, justify="right")
    for direction in DIRECTIONS:
        table.add_row(direction, *(f"{m[direction][k]:.1f}" for k in METRIC_KEYS))
    policy.console.print(table)
    counts = m.get("test_videos") or {}
    if counts.get("missing"):
        policy.print_line(
            f"test videos: {counts['evaluated']} of {counts['listed']} evaluated ({counts['missing']} missing, "
            "data.skip_missing=true): not comparable to published numbers",
            style="yellow",
        )
    if m.get("order_accuracy") is not None:
        policy.console.print(f"order accuracy: {m['order_accuracy']:.1f}%  (own video scored above its twin)")
    print_relation(m)
    policy.print_line(f"run directory: {run_dir}")  # on its own line, never wrapped


def print_relation(m: dict) -> None:
    """The relation probe's v2t diagnostic, when the test set has relation groups."""
    rel = m.get("relation")
    if rel:
        policy.console.print(
            f"relation probe (v2t): group score {rel['group_score']:.1f}% (chance 6.25%, additive pooling 0), "
            f"video accuracy {rel['video_accuracy']:.1f}% (chance 50%) over {rel['groups']} groups"
        )


@policy.guarded
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `psbench run`.")],
    data_root: Annotated[Path | None, typer.Option(help="Dataset root (default: the one the run used).")] = None,
    weights: Annotated[
        Path | None, typer.Option(help="CLIP weights (default: the run's); must have the sha256 the run recorded.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    shuffle_frames: Annotated[bool, typer.Option("--shuffle-frames", help="Shuffle each video's frames.")] = False,
    reverse_frames: Annotated[bool, typer.Option("--reverse-frames", help="Reverse each video's frames.")] = False,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=policy.TRUST_HELP)] = False,
) -> None:
    """Re-evaluate a finished run from its checkpoint; writes eval_TIME.json in the run directory.

    With `--shuffle-frames` or `--reverse-frames` the frame order of every gallery video is destroyed:
    the drop of each metric measures how much the method relies on temporal order.

    Example: `psbench eval runs/20261129T190000_000000Z_synthetic_meanpool_s0 --reverse-frames`
    """
    if shuffle_frames and reverse_frames:
        policy.fail("choose one of --shuffle-frames and --reverse-frames")
    frame_order = "shuffle" if shuffle_frames else "reverse" if reverse_frames else "keep"
    from psbench.progress import RichProgress
    from psbench.runs.reevaluate import reevaluate

    policy.on_interrupt(lambda: f"nothing was written; {run_dir} is unchanged")
    with RichProgress(console=policy.err_console) as progress:
        out = reevaluate(
            run_dir,
            data_root,
            device,
            progress,
            frame_order=frame_order,
            trust_checkpoint=trust_checkpoint,
            weights=weights,
        )
    from psbench import distributed
    from psbench.files import jsonio

    if not distributed.is_main():  # under torchrun rank 0 reports
        distributed.destroy()
        return
    distributed.destroy()
    m = jsonio.read_json(out)
    for direction in DIRECTIONS:
        policy.console.print(direction, {k: round(v, 2) for k, v in m[direction].items()})
    if m.get("order_accuracy") is not None:
        policy.console.print(f"order accuracy: {m['order_accuracy']:.1f}%")
    print_relation(m)
    policy.print_line(f"written {out}")


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``eval`` to the main app."""
    app.command("run", rich_help_panel="Run")(run)
    app.command("eval", rich_help_panel="Run")(eval_)
