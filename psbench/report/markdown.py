"""Render a :class:`Document` as GitHub-flavoured Markdown (figures as relative links)."""

from __future__ import annotations

from pathlib import Path

from psbench.report.document import Bullets, Code, Document, Figure, Heading, Paragraph, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def table_markdown(table: Table) -> list[str]:
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(_cell(c) for c in table.columns) + " |")
    lines.append("|" + "|".join(":---" if a == "l" else "---:" for a in table.alignment()) + "|")
    width = len(table.columns)
    for row in table.rows:
        if row.style == "section":
            cells = [f"**{_cell(row.cells[0])}**"] + [""] * (width - 1)
        elif row.style == "published":
            cells = [f"*{_cell(c)}*" if c.strip() else c for c in row.cells]
        else:
            cells = [_cell(c) for c in row.cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"> {note}" for note in table.notes)
    if table.notes:
        lines.append("")
    return lines


def render_markdown(doc: Document, out_dir: Path) -> str:
    """The whole report; figure links are relative to ``out_dir`` (where report.md is written)."""
    lines = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            lines += ["#" * max(2, block.level) + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Code):
            lines += ["```bash", *block.lines, "```", ""]
        elif isinstance(block, Table):
            lines += table_markdown(block)
        elif isinstance(block, Figure):
            rel = Path(block.path).resolve().relative_to(Path(out_dir).resolve())
            lines += [f"![{block.caption}]({rel.as_posix()})", "", f"*{block.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"
