"""A tiny document model shared by the Markdown and the PDF renderer.

Blocks hold plain text (no markup); a table cell may contain ``\\n`` line breaks. Renderers decide
how to show each block, so the content is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Code:
    """Monospaced lines (commands); long lines are wrapped by the PDF renderer, never cut."""

    lines: list[str]


@dataclass
class Row:
    """A table row; ``style`` is "" (ours), "published" (reference numbers) or "section" (a label row)."""

    cells: list[str]
    style: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    align: list[str] = field(default_factory=list)  # "l" or "r" per column; default: first left, rest right

    def alignment(self) -> list[str]:
        return self.align or ["l"] + ["r"] * (len(self.columns) - 1)


@dataclass
class Figure:
    path: Path  # a PNG written into the report directory
    caption: str


Block = Heading | Paragraph | Bullets | Code | Table | Figure


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)
