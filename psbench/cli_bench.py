"""`psbench bench`: the whole benchmark of a protocol (all methods, ablations, seeds), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
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
        from psbench import cli
        from psbench.benchmark import BENCHMARK_METHODS, plan, run_benchmark
        from psbench.progress import RichProgress
        from psbench.run_record import weights_identity
        from psbench.runner import resolve_paths
        from psbench.runner import run as run_one

        cli._setup_logging(False)
        chosen = BENCHMARK_METHODS if methods == "all" else tuple(m.strip() for m in methods.split(","))
        seed_list = None if seeds == "all" else [int(s) for s in seeds.split(",")]
        planned = plan(protocol, chosen, seed_list, zero_shot)
        cli.console.print(f"benchmark {protocol}: {len(planned)} runs into {runs_dir}")

        def one(cfg):  # noqa: ANN001, ANN202 - a RunConfig -> Path callback
            with RichProgress(console=cli.err_console) as progress:
                return run_one(cfg, runs_dir, data_root, weights, device, progress, command=cli._command_line())

        def weights_of(cfg):  # noqa: ANN001, ANN202 - the sha256 a run of cfg would record
            path = resolve_paths(cfg, data_root, weights).weights
            return "missing" if path is not None and not path.is_file() else weights_identity(path)

        try:
            run_benchmark(
                protocol,
                runs_dir,
                one,
                planned,
                on_skip=lambda item, path: cli.console.print(f"[dim]done already: {item.label} ({path.name})[/]"),
                weights_of=weights_of,
            )
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            cli._fail(str(exc))
        cli.table([runs_dir])
