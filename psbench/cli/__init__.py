"""The psbench command line: parse, build a config, call a library function, show the result.

This module only builds the root app and mounts the command groups, one file each (lm-eval's ``_cli``
shape): ``run`` (run, eval), ``bench``, ``results`` (table, report), ``ls`` (ls, methods, protocols),
``efficiency``, ``index`` and ``data``; they share one console / logging / failure policy
(:mod:`psbench.cli._common`) and import nothing from this module.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

import typer

from psbench.cli import _common as policy
from psbench.cli import bench, data, efficiency, index, ls, results, run

app = typer.Typer(
    help="psbench: train, evaluate and compare CLIP-based text-video retrieval methods under fixed protocols.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    cls=policy.PolicyGroup,
)


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


data_app = typer.Typer(
    help="Prepare data: the synthetic set, the tiny CLIP, verification and compression of real videos.",
    no_args_is_help=True,
)
for group in (run, bench, results, efficiency, index, ls):  # help panels: Run, Results, Cost, Inspect
    group.register(app)
data.register(data_app)
app.add_typer(data_app, name="data", rich_help_panel="Data")


def main() -> None:
    app()
