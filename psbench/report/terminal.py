"""Render :class:`Document` blocks on a terminal with rich: the report's own tables, as ``psbench table``
and ``psbench efficiency`` print them (the third renderer beside Markdown and PDF).

Every piece of content goes in as :class:`rich.text.Text`, so brackets in it are never read as markup,
whatever the console's markup setting."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from psbench.report.document import Block, Bullets, Code, Figure, Heading, Paragraph, Row, Table

_ROW_STYLES = {"published": "dim italic", "section": "bold"}


def rich_table(table: Table) -> RichTable:
    """The grid of one report table: published rows dimmed, section rows bold (title and notes apart)."""
    out = RichTable(show_lines=True)
    for name, align in zip(table.columns, table.alignment(), strict=True):
        out.add_column(Text(name), justify="left" if align == "l" else "right")
    for row in table.rows:
        out.add_row(*_cells(row, len(table.columns)), style=_ROW_STYLES.get(row.style))
    return out


def _cells(row: Row, width: int) -> list[Text]:
    if row.style == "section":
        return [Text(row.cells[0])] + [Text("")] * (width - 1)
    return [Text(cell) for cell in row.cells]


def render_terminal(blocks: Iterable[Block], console: Console) -> None:
    """Print each block: headings as rules, tables as rich tables, figures as their file paths."""
    for block in blocks:
        if isinstance(block, Heading):
            console.rule(Text(block.text, style="bold" if block.level <= 2 else ""), align="left")
        elif isinstance(block, Paragraph):
            console.print(Text(block.text))
        elif isinstance(block, Bullets):
            for item in block.items:
                console.print(Text(f"- {item}"))
        elif isinstance(block, Code):
            for line in block.lines:
                console.print(Text(line), soft_wrap=True)
        elif isinstance(block, Table):  # title and notes span the console, not the table's width
            console.print(Text(block.title, style="bold"))
            console.print(rich_table(block))
            for note in block.notes:
                console.print(Text(note, style="dim"))
        elif isinstance(block, Figure):
            console.print(Text(f"figure: {block.path} ({block.caption})"))
