"""`psbench bench`: the whole benchmark of a protocol (all methods, ablations, seeds), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from psbench.cli import _common as policy


def _seed_list(seeds: str) -> list[int] | None:
    if seeds == "all":
        return None
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise policy.UserError(f"--seeds {seeds!r}: expected 'all' or a comma list of integers") from None


def register(app: typer.Typer) -> None:
    @app.command(rich_help_panel="Run")
    @policy.guarded
    def bench(
        protocol: Annotated[str, typer.Option(help="Protocol name.")] = "synthetic",
        methods: Annotated[str, typer.Option(help="'all' or a comma list of methods.")] = "all",
        seeds: Annotated[str, typer.Option(help="'all' (the protocol's) or a comma list.")] = "all",
        zero_shot: Annotated[bool, typer.Option(help="Include the zero-shot mean-pool row.")] = True,
        data_root: Annotated[Path | None, typer.Option(help="Dataset root (default: the protocol's).")] = None,
        weights: Annotated[Path | None, typer.Option(help="Local CLIP checkpoint.")] = None,
        runs_dir: Annotated[Path, typer.Option(help="Run directories go here.")] = Path("runs/synthetic"),
        device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    ) -> None:
        """Train and evaluate every method (and Prompt Switch ablation) for every seed; finished runs are kept.

        Example: `psbench bench --protocol synthetic --runs-dir runs/synthetic`
        """
        from psbench.catalog import bench_methods, method_entry
        from psbench.cli.results import print_results
        from psbench.progress import RichProgress
        from psbench.protocol import load_protocol, resolve
        from psbench.runs.benchmark import plan, run_benchmark
        from psbench.runs.record import weights_identity
        from psbench.runs.runner import resolve_paths
        from psbench.runs.runner import run as run_one

        named = tuple(m.strip() for m in methods.split(",") if m.strip())
        chosen = tuple(bench_methods()) if methods == "all" else named
        if not chosen:
            raise policy.UserError(f"--methods {methods!r}: no method named")
        for name in chosen:  # every argument is checked before the first run starts
            method_entry(name)
        planned = plan(protocol, chosen, _seed_list(seeds), zero_shot)
        proto = load_protocol(protocol)
        for item in planned:
            resolve(proto, item.method, item.seed, dict(item.sets))
        policy.check_output_dir(runs_dir, "--runs-dir")
        policy.print_line(f"benchmark {protocol}: {len(planned)} runs into {runs_dir}")
        started: list[Path] = []
        policy.on_interrupt(lambda: policy.interrupted_runs_message(started, policy.command_line()))

        def one(cfg):  # noqa: ANN001, ANN202 - a RunConfig -> Path callback
            with RichProgress(console=policy.err_console) as progress:
                return run_one(
                    cfg,
                    runs_dir,
                    data_root,
                    weights,
                    device,
                    progress,
                    command=policy.command_line(),
                    on_run_dir=started.append,
                )

        def weights_of(cfg):  # noqa: ANN001, ANN202 - the sha256 a run of cfg would record
            path = resolve_paths(cfg, data_root, weights).weights
            return "missing" if path is not None and not path.is_file() else weights_identity(path)

        run_benchmark(
            protocol,
            runs_dir,
            one,
            planned,
            on_skip=lambda item, path: policy.print_line(f"done already: {item.label} ({path.name})", style="dim"),
            weights_of=weights_of,
        )
        print_results([runs_dir])
