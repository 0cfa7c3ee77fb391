"""``psbench ls methods|protocols|datasets``: what can be run (``methods`` and ``protocols`` stay as aliases)."""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Annotated

import typer
from rich.table import Table

from psbench.cli import _common as policy

KINDS = ("methods", "protocols", "datasets")


@policy.guarded
def ls(
    what: Annotated[str, typer.Argument(help="methods, protocols or datasets.")],
    pattern: Annotated[str, typer.Argument(help="Only names matching this shell pattern, e.g. 'promptswitch*'.")] = "*",
) -> None:
    """List the registered methods, the protocols or the datasets.

    Example: `psbench ls methods 'promptswitch*'`, `psbench ls protocols`, `psbench ls datasets`
    """
    if what not in KINDS:
        raise policy.UserError(f"psbench ls {what}: choose one of {', '.join(KINDS)}")
    {"methods": print_methods, "protocols": print_protocols, "datasets": print_datasets}[what](pattern)


def print_methods(pattern: str = "*") -> None:
    """The catalogue: name, role, video representation and the first docstring line."""
    from psbench.catalog import METHOD_TABLE, method_class

    table = Table(title="methods")
    for col in ("name", "role", "video representation", "description"):
        table.add_column(col)
    for name, entry in METHOD_TABLE.items():
        if not fnmatch(name, pattern):
            continue
        cls = method_class(name)
        kind = "one vector (offline)" if cls.is_inner_product() else "per-frame (text-conditioned online)"
        table.add_row(name, entry.role, kind, entry.description or (cls.__doc__ or "").strip().splitlines()[0])
    policy.console.print(table)


def print_protocols(pattern: str = "*") -> None:
    """Every protocol file: name, version, dataset, seeds, description."""
    from psbench.protocol import list_protocols, load_protocol

    table = Table(title="protocols")
    for col in ("name", "version", "dataset", "seeds", "description"):
        table.add_column(col)
    for name in list_protocols():
        if not fnmatch(name, pattern):
            continue
        p = load_protocol(name)
        table.add_row(
            name, str(p["version"]), p.get("data", {}).get("dataset", ""), str(p["seeds"]), p.get("description", "")
        )
    policy.console.print(table)


def print_datasets(pattern: str = "*") -> None:
    """The registered dataset loaders and the protocols that use each."""
    from psbench.data.datasets import DATASETS
    from psbench.protocol import list_protocols, load_protocol

    uses: dict[str, list[str]] = {}
    for name in list_protocols():
        uses.setdefault(str(load_protocol(name).get("data", {}).get("dataset", "")), []).append(name)
    table = Table(title="datasets")
    for col in ("name", "protocols", "description"):
        table.add_column(col)
    for name in DATASETS.names():
        if fnmatch(name, pattern):
            doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()
            table.add_row(name, ", ".join(uses.get(name, [])) or "-", doc[0] if doc else "")
    policy.console.print(table)


@policy.guarded
def methods() -> None:
    """List the registered methods (alias of `psbench ls methods`).

    Example: `psbench methods`
    """
    print_methods()


@policy.guarded
def protocols() -> None:
    """List the protocols and their main settings (alias of `psbench ls protocols`).

    Example: `psbench protocols`
    """
    print_protocols()


def register(app: typer.Typer) -> None:
    """Add ``ls`` and its two aliases to the main app."""
    app.command("ls", rich_help_panel="Inspect")(ls)
    app.command("methods", rich_help_panel="Inspect")(methods)
    app.command("protocols", rich_help_panel="Inspect")(protocols)
