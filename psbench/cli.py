"""The psbench command line: parse, build a config, call a library function, show the result."""

from __future__ import annotations

import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from psbench import cli_policy as policy
from psbench.cli_bench import register as _register_bench
from psbench.cli_data import register as _register_data_commands
from psbench.cli_efficiency import register as _register_efficiency
from psbench.cli_report import register as _register_report
from psbench.registry import UnknownKeyError

app = typer.Typer(
    help="psbench: train, evaluate and compare CLIP-based text-video retrieval methods under fixed protocols.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    cls=policy.PolicyGroup,
)
data_app = typer.Typer(
    help="Prepare data: the synthetic set, the tiny CLIP, verification and compression of real videos.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
_register_data_commands(data_app)
# one console / logging / failure policy for every command (psbench.cli_policy); markup is off
console = policy.console
err_console = policy.err_console
_fail = policy.fail


def _version(value: bool) -> None:
    if value:
        try:
            version = metadata.version("psbench")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        policy.print_line(f"psbench {version}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """psbench: train, evaluate and compare CLIP-based text-video retrieval methods under fixed protocols."""


def _command_line() -> str:
    return "psbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def default_protocol_for(dataset: str) -> str:
    """The protocol named like the dataset, else the shortest-named protocol for that dataset."""
    from psbench.protocol import list_protocols, load_protocol

    names = list_protocols()
    if dataset in names:
        return dataset
    matches = sorted((n for n in names if load_protocol(n).get("data", {}).get("dataset") == dataset), key=len)
    if not matches:
        from psbench.data.datasets import DATASETS

        raise UnknownKeyError("dataset", dataset, DATASETS.names())
    return matches[0]


TRUST_HELP = (
    "Allow CLIP weights (e.g. OpenAI's original ViT-B-32.pt) or a run checkpoint that is a general pickle or a "
    "TorchScript archive. "
    "Unpickling such a file can execute arbitrary code: use only for files from a source you trust; plain "
    "state dicts and .safetensors never need it."
)


@app.command()
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
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=TRUST_HELP)] = False,
) -> None:
    """Train and evaluate one method under a protocol; write a run directory.

    Example: `psbench run --method meanpool --dataset synthetic --set train.epochs=0` (zero-shot row).
    Resume an interrupted run: `psbench run --resume runs/<run dir>`. Several GPUs:
    `torchrun --nproc_per_node 8 -m psbench.cli run ...` (see docs/distributed.md).
    """
    from psbench import distributed
    from psbench.progress import RichProgress
    from psbench.runner import resume as resume_run
    from psbench.runner import run as run_one

    started: list[Path] = []
    policy.on_interrupt(lambda: interrupted_runs_message(started))
    try:
        if resume is not None:
            if method is not None or set_ or seed or all_seeds or protocol is not None:
                _fail(
                    "--resume continues a run with its recorded settings; do not combine it with "
                    "--method, --protocol, --seed or --set (--data-root and --weights may point at moved "
                    "files with the recorded hashes)"
                )
            started.append(resume)
            with RichProgress(console=err_console) as progress:
                run_dir = resume_run(
                    resume, device, progress, data_root, trust_checkpoint, _command_line(), weights=weights
                )
            if distributed.is_main():
                _print_run(run_dir)
            return
        configs = run_configs(method, dataset, protocol, seed, all_seeds, set_ or [])  # every check before work
        for cfg in configs:
            with RichProgress(console=err_console) as progress:
                run_dir = run_one(
                    cfg,
                    runs_dir,
                    data_root,
                    weights,
                    device,
                    progress,
                    command=_command_line(),
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
) -> list:
    """The resolved config of every requested seed; every argument is checked here, before any work."""
    from psbench.method import METHODS
    from psbench.protocol import load_protocol, parse_set, resolve
    from psbench.runner import baselines  # noqa: F401 - registers methods

    if method is None:
        raise policy.UserError("--method is required (or --resume RUN_DIR)")
    if all_seeds and seeds:
        raise policy.UserError(
            f"--seed {' --seed '.join(map(str, seeds))} and --all-seeds contradict each other; give one of them"
        )
    METHODS.get(method)
    proto = load_protocol(protocol or default_protocol_for(dataset))
    if proto.get("data", {}).get("dataset") != dataset and protocol is None:
        raise policy.UserError(f"protocol {proto['name']} is not for dataset {dataset}")
    chosen = list(proto["seeds"]) if all_seeds else (seeds or [int(proto["seeds"][0])])
    overrides = parse_set(sets)
    return [resolve(proto, method, s, overrides) for s in chosen]


def interrupted_runs_message(run_dirs: list[Path], rerun: str = "") -> str:
    """What Ctrl-C kept of the runs started so far, and the exact commands that continue them."""
    unfinished = [d for d in run_dirs if not (d / "metrics.json").is_file()]
    finished = len(run_dirs) - len(unfinished)
    parts = [f"{finished} finished run(s) kept"] if finished else []
    for run_dir in unfinished:
        parts.append(
            f"unfinished run {run_dir} kept ({_checkpoint_state(run_dir)}); resume it with: "
            f"psbench run --resume {shlex.quote(str(run_dir))}"
        )
    if rerun:
        parts.append(f"then rerun `{rerun}` (finished runs are not redone)")
    return "; ".join(parts) if parts else "no run directory was created yet; nothing was kept"


def _checkpoint_state(run_dir: Path) -> str:
    import json

    try:
        if json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["config"]["train"]["epochs"] == 0:
            return "zero-shot: resume runs the evaluation again"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    epoch = None
    log_path = run_dir / "train_log.jsonl"
    if (run_dir / "checkpoint_last.pt").is_file() and log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "epoch_summary" in record:
                epoch = record["epoch_summary"].get("epoch")
    if epoch is None:
        return "no finished epoch yet: resume restarts training from epoch 0"
    return f"last checkpoint after epoch {epoch}: resume continues from epoch {epoch + 1}"


def _print_run(run_dir: Path) -> None:
    from psbench.runs import read_json

    m = read_json(run_dir / "metrics.json")
    table = Table(title=f"{m['method']} on {m['protocol']} (seed {m['seed']})")
    table.add_column("direction")
    for key in ("R1", "R5", "R10", "MdR", "MnR"):
        table.add_column(key, justify="right")
    for direction in ("t2v", "v2t"):
        table.add_row(direction, *(f"{m[direction][k]:.1f}" for k in ("R1", "R5", "R10", "MdR", "MnR")))
    console.print(table)
    counts = m.get("test_videos") or {}
    if counts.get("missing"):
        policy.print_line(
            f"test videos: {counts['evaluated']} of {counts['listed']} evaluated ({counts['missing']} missing, "
            "data.skip_missing=true): not comparable to published numbers",
            style="yellow",
        )
    if m.get("order_accuracy") is not None:
        console.print(f"order accuracy: {m['order_accuracy']:.1f}%  (own video scored above its reversed twin)")
    policy.print_line(f"run directory: {run_dir}")  # on its own line, never wrapped


@app.command("eval")
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
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=TRUST_HELP)] = False,
) -> None:
    """Re-evaluate a finished run from its checkpoint; writes eval_TIME.json in the run directory.

    With `--shuffle-frames` or `--reverse-frames` the frame order of every gallery video is destroyed:
    the drop of each metric measures how much the method relies on temporal order.

    Example: `psbench eval runs/20261129T190000_000000Z_synthetic_meanpool_s0 --reverse-frames`
    """
    if shuffle_frames and reverse_frames:
        _fail("choose one of --shuffle-frames and --reverse-frames")
    frame_order = "shuffle" if shuffle_frames else "reverse" if reverse_frames else "keep"
    from psbench.progress import RichProgress
    from psbench.reevaluate import reevaluate

    policy.on_interrupt(lambda: f"nothing was written; {run_dir} is unchanged")
    with RichProgress(console=err_console) as progress:
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
    from psbench.runs import read_json

    if not distributed.is_main():  # under torchrun rank 0 reports
        distributed.destroy()
        return
    distributed.destroy()
    m = read_json(out)
    for direction in ("t2v", "v2t"):
        console.print(direction, {k: round(v, 2) for k, v in m[direction].items()})
    if m.get("order_accuracy") is not None:
        console.print(f"order accuracy: {m['order_accuracy']:.1f}%")
    policy.print_line(f"written {out}")


@app.command()
@policy.guarded
def methods() -> None:
    """List the registered methods.

    Example: `psbench methods`
    """
    from psbench.method import METHODS
    from psbench.runner import baselines  # noqa: F401 - registers methods

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("video representation")
    table.add_column("description")
    for name in METHODS.names():
        cls = METHODS.get(name)
        kind = "one vector (offline)" if cls.offline_embedding else "per-frame (text-conditioned online)"
        table.add_row(name, kind, (cls.__doc__ or "").strip().splitlines()[0])
    console.print(table)


@app.command()
@policy.guarded
def protocols() -> None:
    """List the protocols and their main settings.

    Example: `psbench protocols`
    """
    from psbench.protocol import list_protocols, load_protocol

    table = Table(title="protocols")
    for col in ("name", "version", "dataset", "seeds", "description"):
        table.add_column(col)
    for name in list_protocols():
        p = load_protocol(name)
        table.add_row(
            name, str(p["version"]), p.get("data", {}).get("dataset", ""), str(p["seeds"]), p.get("description", "")
        )
    console.print(table)


@app.command()
@policy.guarded
def table(
    runs: Annotated[list[Path] | None, typer.Argument(help="Run directories or folders of runs.")] = None,
) -> None:
    """Print the results of finished runs: mean ± std over distinct seeds per protocol, method and inputs.

    Runs with a different protocol hash, test data or CLIP weights (sha256) are separate rows; a seed repeated
    within a row is an error naming the run directories. Example: `psbench table runs/`
    """
    print_results(runs or [Path("runs")])


def print_results(runs: list[Path]) -> None:
    """The results table of ``psbench table`` (also printed at the end of ``psbench bench``)."""
    from psbench.summary import format_cell, load_runs, summarize

    df = summarize(load_runs(runs))
    if df.empty:
        _fail("no finished runs found")
    for (protocol, phash), group in df.groupby(["protocol", "protocol_hash"], sort=False):
        t = Table(title=f"{protocol} (protocol hash {phash})")
        t.add_column("method")
        t.add_column("test data")
        t.add_column("weights")
        t.add_column("epochs", justify="right")
        t.add_column("seeds", justify="right")
        for d in ("t2v", "v2t"):
            for k in ("R1", "R5", "R10", "MdR", "MnR"):
                t.add_column(f"{d} {k}", justify="right")
        t.add_column("order acc.", justify="right")
        for _, row in group.iterrows():
            hashes = [str(row["test_data_hash"])[:8], str(row["weights_hash"])[:8]]
            cells = [row["method"], *hashes, str(row["epochs"]), str(row["seeds"])]
            for d in ("t2v", "v2t"):
                for k in ("R1", "R5", "R10", "MdR", "MnR"):
                    cells.append(format_cell(row[f"{d}_{k}"], row[f"{d}_{k}_std"], row["seeds"]))
            cells.append(format_cell(row["order_accuracy"], row["order_accuracy_std"], row["seeds"]))
            t.add_row(*cells)
        console.print(t)


@data_app.command("synth")
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
    with RichProgress(console=err_console) as progress, progress.task("write synthetic videos", total) as task:
        state = {"done": 0}

        def report(done: int, total: int) -> None:
            task.advance(done - state["done"])
            state["done"] = done

        meta = generate_synthetic(out, seed=seed, workers=workers, progress=report)
    policy.print_line(f"synthetic set in {out}: {meta.get('counts', meta)}")


@data_app.command("pretrain-clip")
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
    from psbench.pretrain import PretrainConfig, pretrain_tiny_clip
    from psbench.progress import RichProgress
    from psbench.runs import read_json

    if not (root / "frame_captions.json").is_file():
        _fail(f"{root / 'frame_captions.json'} not found; run `psbench data synth --out {root}` first")
    with RichProgress(console=err_console) as progress:
        path = pretrain_tiny_clip(root, out, PretrainConfig(seed=seed), progress, force=force)
    meta = read_json(path.with_suffix(".json"))
    top1 = meta["image_to_text_top1"]
    policy.print_line(f"tiny CLIP: {path} (frame->caption top-1 {top1:.1f}% on its training frames)")


_register_efficiency(app)
_register_bench(app)
_register_report(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
