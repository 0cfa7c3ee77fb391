"""Render a :class:`Document` to a multi-page A4 PDF with matplotlib only (``PdfPages``).

Layout is done in points on a page-sized axes: prose in DejaVu Sans, tables and commands in DejaVu
Sans Mono (a fixed advance of 0.602 em, so widths are exact). Tables shrink their font down to
``MIN_TABLE_FONT`` and then wrap their widest columns until they fit the page width; long tables
continue on the next page with the header repeated. Nothing is cut: over-long words are broken.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from psbench.report.document import Block, Bullets, Code, Document, Figure, Heading, Paragraph, Table  # noqa: E402

PAGE_W, PAGE_H = 595.0, 842.0  # A4 in points
MARGIN = 36.0
BODY_W = PAGE_W - 2 * MARGIN
TOP, BOTTOM = PAGE_H - MARGIN, MARGIN + 14.0  # room for the page number
MONO_ADVANCE = 0.602  # DejaVu Sans Mono advance width in em
SANS_ADVANCE = 0.60  # conservative average for DejaVu Sans prose
TABLE_FONT, PREFERRED_MIN_FONT, MIN_TABLE_FONT = 7.5, 6.5, 5.5
WRAP_MIN_CHARS, MIN_COL_CHARS = 14, 6
TITLE_H = 30.0  # a table title and the gap below it
PAD_X, PAD_Y = 3.0, 2.0
LEADING = 1.25
HEADING_SIZES = {1: 16.0, 2: 13.0, 3: 11.0}


def wrap(text: str, width: int) -> list[str]:
    """Wrap every line of ``text`` to ``width`` characters; words longer than the width are broken."""
    out: list[str] = []
    for line in text.split("\n"):
        out.extend(textwrap.wrap(line, width, break_long_words=True, break_on_hyphens=False) or [""])
    return out


@dataclass
class TableLayout:
    font: float
    widths: list[int]  # characters per column

    @property
    def char_w(self) -> float:
        return self.font * MONO_ADVANCE

    def column_points(self) -> list[float]:
        return [w * self.char_w + 2 * PAD_X for w in self.widths]

    def total(self) -> float:
        return sum(self.column_points())


def layout_table(table: Table, avail: float = BODY_W) -> TableLayout:
    """Fit a table to the page width: shrink the font to PREFERRED_MIN_FONT, then wrap the widest
    columns down to WRAP_MIN_CHARS, then shrink to MIN_TABLE_FONT, then wrap down to MIN_COL_CHARS."""
    cells = [table.columns] + [r.cells for r in table.rows if r.style != "section"]
    natural = [
        max((len(line) for row in cells for line in row[i].split("\n")), default=1) for i in range(len(table.columns))
    ]
    layout = TableLayout(TABLE_FONT, list(natural))
    for min_font, min_chars in ((PREFERRED_MIN_FONT, WRAP_MIN_CHARS), (MIN_TABLE_FONT, MIN_COL_CHARS)):
        while layout.font > min_font and layout.total() > avail:
            layout.font = round(layout.font - 0.25, 2)
        while layout.total() > avail:
            widest = max(range(len(layout.widths)), key=lambda i: layout.widths[i])
            if layout.widths[widest] <= min_chars:
                break
            layout.widths[widest] -= 1
    return layout


@dataclass
class TableGeometry:
    """Column positions, wrapped cells and row heights of a table laid out for the page."""

    layout: TableLayout
    xs: list[float]
    header: list[list[str]]
    header_h: float
    lines: list[list[list[str]]]
    heights: list[float]

    @classmethod
    def of(cls, table: Table) -> TableGeometry:
        layout = layout_table(table)
        line_h = layout.font * LEADING
        xs = [MARGIN]
        for w in layout.column_points():
            xs.append(xs[-1] + w)
        span_chars = int((xs[-1] - xs[0] - 2 * PAD_X) / layout.char_w)
        header = [wrap(c, w) for c, w in zip(table.columns, layout.widths, strict=True)]
        lines = [
            [wrap(r.cells[0], span_chars)]
            if r.style == "section"
            else [wrap(c, w) for c, w in zip(r.cells, layout.widths, strict=True)]
            for r in table.rows
        ]
        heights = [max(map(len, cell)) * line_h + 2 * PAD_Y for cell in lines]
        return cls(layout, xs, header, max(map(len, header)) * line_h + 2 * PAD_Y, lines, heights)

    def start_height(self) -> float:
        """Room needed to start the table: all of it when it fits on half a page, else title + header + a row."""
        whole = TITLE_H + self.header_h + sum(self.heights)
        return whole if whole <= 0.5 * (TOP - BOTTOM) else TITLE_H + self.header_h + (self.heights or [0.0])[0]


def figure_size(block: Figure) -> tuple[float, float]:
    """Width and height in points: the PNG at its natural size (200 dpi), at most the body width/height."""
    h_px, w_px = plt.imread(block.path).shape[:2]
    width = min(BODY_W, w_px / 200 * 72)
    height = width * h_px / w_px
    max_h = TOP - BOTTOM - 40
    return (width * max_h / height, max_h) if height > max_h else (width, height)


class PdfRenderer:
    """Flows blocks down A4 pages; call :meth:`render` once."""

    def __init__(self, path: Path, title: str) -> None:
        self.path = Path(path)
        self.title = title
        self.pdf: PdfPages | None = None
        self.fig: plt.Figure | None = None
        self.ax: plt.Axes | None = None
        self.y = TOP
        self.pages = 0

    # -- pages ---------------------------------------------------------------------------------------
    def new_page(self) -> None:
        self.close_page()
        self.fig = plt.figure(figsize=(PAGE_W / 72, PAGE_H / 72))
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, PAGE_W)
        self.ax.set_ylim(0, PAGE_H)
        self.ax.axis("off")
        self.y = TOP
        self.pages += 1

    def close_page(self) -> None:
        if self.fig is None or self.pdf is None:
            return
        assert self.ax is not None
        self.ax.text(
            PAGE_W / 2,
            MARGIN / 2,
            f"{self.title} · page {self.pages}",
            ha="center",
            va="center",
            fontsize=7,
            color="0.4",
        )
        self.pdf.savefig(self.fig)
        plt.close(self.fig)
        self.fig = self.ax = None

    def ensure(self, height: float) -> None:
        """Start a new page unless ``height`` points fit below the cursor (a fresh page always fits)."""
        if self.fig is None or (self.y - height < BOTTOM and self.y < TOP):
            self.new_page()

    def text(self, x: float, s: str, size: float, **kw: object) -> None:
        assert self.ax is not None
        self.ax.text(x, self.y, s, fontsize=size, va="top", ha=kw.pop("ha", "left"), **kw)  # type: ignore[arg-type]

    # -- blocks --------------------------------------------------------------------------------------
    def prose(self, text: str, size: float = 9.0, indent: float = 0.0, **kw: object) -> None:
        width = int((BODY_W - indent) / (size * SANS_ADVANCE))
        for line in wrap(text, width):
            self.ensure(size * LEADING)
            self.text(MARGIN + indent, line, size, **kw)
            self.y -= size * LEADING

    def heading(self, block: Heading, following: list[Block]) -> None:
        size = HEADING_SIZES.get(block.level, 10.0)
        self.ensure(start_height(block, following))  # never leave a heading alone at the bottom of a page
        self.y -= size * 0.6
        self.prose(block.text, size, weight="bold")
        self.y -= size * 0.3

    def code(self, block: Code, size: float = 6.5) -> None:
        width = int(BODY_W / (size * MONO_ADVANCE)) - 2
        for line in block.lines:
            wrapped = wrap(line, width)
            for i, part in enumerate(wrapped):
                self.ensure(size * LEADING)
                color = "0.35" if line.startswith("#") else "black"
                self.text(
                    MARGIN + (size * MONO_ADVANCE * 2 if i else 0), part, size, family="DejaVu Sans Mono", color=color
                )
                self.y -= size * LEADING
        self.y -= 6

    def figure(self, block: Figure) -> None:
        image = plt.imread(block.path)
        width, height = figure_size(block)
        room = self.y - BOTTOM - 30
        if self.fig is not None and height > room >= 0.85 * height:  # shrink a little rather than leave a gap
            width, height = width * room / height, room
        self.ensure(height + 30)
        assert self.fig is not None
        x = MARGIN + (BODY_W - width) / 2
        ax = self.fig.add_axes((x / PAGE_W, (self.y - height) / PAGE_H, width / PAGE_W, height / PAGE_H))
        ax.imshow(image, interpolation="antialiased")
        ax.axis("off")
        self.y -= height + 4
        self.prose(block.caption, 7.5, style="italic", color="0.25")
        self.y -= 8

    def table(self, block: Table) -> None:
        geo = TableGeometry.of(block)
        size, xs, header, header_h = geo.layout.font, geo.xs, geo.header, geo.header_h

        def draw_header(continued: bool) -> None:
            title = block.title + (" (continued)" if continued else "")
            self.prose(title, 9.5, weight="bold")
            self.y -= 2
            self.hline(xs[0], xs[-1], 0.9)
            self.cells(header, xs, block.alignment(), size, weight="bold")
            self.y -= header_h
            self.hline(xs[0], xs[-1], 0.7)

        all_lines, heights = geo.lines, geo.heights
        self.ensure(geo.start_height())
        draw_header(False)
        for i, (row, lines, height) in enumerate(zip(block.rows, all_lines, heights, strict=True)):
            needed = height + (heights[i + 1] if row.style == "section" and i + 1 < len(heights) else 0.0)
            if self.y - needed < BOTTOM:  # a section label never stays alone at the bottom of a page
                self.new_page()
                draw_header(True)
            assert self.ax is not None
            if row.style == "section":
                self.hline(xs[0], xs[-1], 0.9)
                self.cells(lines, [xs[0], xs[-1]], ["l"], size, weight="bold")
            else:
                if row.style == "published":
                    shade = Rectangle((xs[0], self.y - height), xs[-1] - xs[0], height, color="0.92", zorder=0)
                    self.ax.add_patch(shade)
                self.cells(lines, xs, block.alignment(), size, style="italic" if row.style else "normal")
            self.y -= height
            self.hline(xs[0], xs[-1], 0.2, "0.75")
        self.hline(xs[0], xs[-1], 0.9)
        self.y -= 4
        for note in block.notes:
            self.prose(note, 7.0, color="0.2")
        self.y -= 8

    def cells(self, lines: list[list[str]], xs: list[float], align: list[str], size: float, **kw: object) -> None:
        for i, cell in enumerate(lines):
            right = align[i] == "r"
            x = xs[i + 1] - PAD_X if right else xs[i] + PAD_X
            for j, line in enumerate(cell):
                assert self.ax is not None
                self.ax.text(
                    x,
                    self.y - PAD_Y - j * size * LEADING,
                    line,
                    fontsize=size,
                    va="top",
                    ha="right" if right else "left",
                    family="DejaVu Sans Mono",
                    **kw,
                )  # type: ignore[arg-type]

    def hline(self, x0: float, x1: float, width: float, color: str = "black") -> None:
        assert self.ax is not None
        self.ax.plot([x0, x1], [self.y, self.y], linewidth=width, color=color)

    # -- document ------------------------------------------------------------------------------------
    def render(self, doc: Document) -> int:
        """Write the PDF; return the number of pages."""
        with PdfPages(self.path, metadata={"Title": doc.title, "Creator": "psbench report"}) as pdf:
            self.pdf = pdf
            self.new_page()
            self.prose(doc.title, HEADING_SIZES[1], weight="bold")
            self.y -= 8
            for i, block in enumerate(doc.blocks):
                if isinstance(block, Heading):
                    self.heading(block, doc.blocks[i + 1 :])
                elif isinstance(block, Paragraph):
                    self.prose(block.text)
                    self.y -= 5
                elif isinstance(block, Bullets):
                    for item in block.items:
                        self.ensure(9 * LEADING)
                        self.text(MARGIN + 4, "•", 9.0)
                        self.prose(item, indent=14)
                    self.y -= 5
                elif isinstance(block, Code):
                    self.code(block)
                elif isinstance(block, Table):
                    self.table(block)
                elif isinstance(block, Figure):
                    self.figure(block)
            self.close_page()
        return self.pages


def start_height(block: Block, following: list[Block]) -> float:
    """Room a block needs on the current page before it starts (a heading: itself plus the next block's)."""
    if isinstance(block, Heading):
        own = HEADING_SIZES.get(block.level, 10.0) * 2.2
        return own + (start_height(following[0], following[1:]) if following else 0.0)
    if isinstance(block, Table):
        return TableGeometry.of(block).start_height()
    if isinstance(block, Figure):
        return figure_size(block)[1] * 0.85 + 30
    return 3 * 9.0 * LEADING


def render_pdf(doc: Document, path: Path) -> int:
    """Render ``doc`` to ``path`` (A4, multi-page); return the page count."""
    return PdfRenderer(path, doc.title).render(doc)
